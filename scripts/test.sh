#!/usr/bin/env bash
# Every check and test of the project: formatting, lint, types, the Deno
# unit and end-to-end suites, the Python worker package's suite, and a
# Python gRPC gateway (grpcio) against the real sidecar.
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
"$DENO" check main.ts src tests tools scripts

step "deno test (unit and end-to-end)"
# Tests start real processes and servers of their own, hence -A for the
# test runner; the sidecar under test runs with its production permissions.
"$DENO" test -A --unstable-kv --parallel "$@"

step "pytest (python worker package)"
(cd python && "$PY" -m pytest -q -p no:cacheprovider tests)

step "pytest (grpcio gateway against the real sidecar)"
# A separate directory: it needs grpcio, the worker package does not.
(cd python && "$PY" -m pytest -q -p no:cacheprovider tests_gateway)
