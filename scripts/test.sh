#!/usr/bin/env bash
# Every check and test of the project: formatting, lint, types, the
# Dockerfile and the Kubernetes manifests, the Deno unit and end-to-end
# suites, the Python worker package's suite, and a Python gRPC gateway
# (grpcio) against the real sidecar.
# Installs what it needs first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh

step() { printf '\n== %s\n' "$*" >&2; }

step "deno fmt --check"
"$DENO" fmt --check

step "deno lint"
"$DENO" lint

step "deno check"
"$DENO" check main.ts src tests tools scripts bench

# The image and the manifests cannot be built or applied here (no Docker
# engine, no cluster): lint the Dockerfile and validate every manifest
# against the Kubernetes schemas, strictly (unknown fields are errors), for
# the oldest version the manifests support (1.30: the preStop sleep
# handler) and the newest the validator knows. tests/deploy/ checks that
# both agree with the sidecar's configuration.
VENV_BIN=$(dirname "$PY")

step "hadolint Dockerfile.distroless"
"$VENV_BIN/hadolint" Dockerfile.distroless

step "kubernetes-validate --strict k8s/"
for k8s_version in 1.30.0 1.37.0; do
  "$VENV_BIN/kubernetes-validate" --strict --quiet -k "$k8s_version" k8s/*.yaml
done

step "deno test (unit and end-to-end)"
# Tests start real processes and servers of their own, hence -A for the
# test runner; the sidecar under test runs with its production permissions.
"$DENO" test -A --unstable-kv --parallel "$@"

step "pytest (python worker package)"
(cd python && "$PY" -m pytest -q -p no:cacheprovider tests)

step "pytest (grpcio gateway against the real sidecar)"
# A separate directory: it needs grpcio, the worker package does not.
(cd python && "$PY" -m pytest -q -p no:cacheprovider tests_gateway)

step "benchmark smoke pass (bash bench/run.sh --smoke)"
# Every benchmark scenario for a few seconds, on loopback only; no timing
# is judged. Fails only if a scenario cannot run. Results go to a
# temporary directory, not bench/results/.
# The load generator is built with the Go toolchain; a machine with only
# Node/npm and Python skips this step and says so.
if command -v go >/dev/null; then
  bench_out=$(mktemp -d)
  bash bench/run.sh --smoke --out "$bench_out"
  rm -rf "$bench_out"
else
  printf 'SKIPPED: the Go toolchain is not installed (bench/load needs it)\n' >&2
fi
