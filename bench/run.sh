#!/usr/bin/env bash
# The benchmark suite, in one command:
#
#   bash bench/run.sh            # full run (about 49 minutes, 10 of them soak)
#   bash bench/run.sh --smoke    # every scenario for seconds (CI)
#   bash bench/run.sh --help     # every option
#
# Prepares what the benchmark needs, then runs bench/run.ts:
#   - Deno and the Python virtualenv with grpcio (scripts/bootstrap.sh);
#   - the load generator, built from bench/load with the Go toolchain alone
#     (standard library only: no module is downloaded);
#   - nginx from Debian's package, for the side-by-side of scenario 5, on a
#     full run only and unless --no-install is given. Without nginx that
#     arm is skipped with a note; nothing else depends on it.
# Only loopback traffic; every process started is stopped by its PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh

smoke=0
install=1
args=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1; args+=("$arg") ;;
    --no-install) install=0 ;;
    *) args+=("$arg") ;;
  esac
done

note() { printf 'bench: %s\n' "$*" >&2; }

# The load generator.
command -v go >/dev/null || { note "the Go toolchain is needed to build bench/load"; exit 1; }
mkdir -p .tools/bench
(cd bench/load && GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod \
  go build -trimpath -o ../../.tools/bench/cyload .)
export CYLOAD="$PWD/.tools/bench/cyload"

# nginx, for the grpcio side-by-side.
find_nginx() { command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
NGINX=$(find_nginx)
if [ -z "$NGINX" ] && [ "$smoke" = 0 ] && [ "$install" = 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    note "installing Debian's nginx package (for scenario 5)"
    # Keep the package from starting its own server on port 80: the
    # benchmark starts nginx itself, on a loopback port, with its own config.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends nginx; } >&2 ||
      note "nginx could not be installed; scenario 5 runs without it"
    [ "$made_policy" = 1 ] && rm -f "$policy"
    NGINX=$(find_nginx)
  else
    note "nginx is not installed and cannot be installed here (needs root and apt-get)"
  fi
fi
export NGINX

# The gateway side's ceiling and the relay floor under Node.js (scenarios
# 2 and 1): the probe servers with the same @grpc/grpc-js and proto-loader
# versions as deno.json, from the npm registry. Without Node.js or npm,
# those arms are skipped with a note.
CEILING_NODE_DIR=""
if command -v node >/dev/null && command -v npm >/dev/null; then
  ceiling=.tools/bench/ceiling-node
  pin() { grep -o "npm:$1@[0-9][^\"]*" deno.json | head -n1 | sed 's/^npm://'; }
  pkgs="$(pin @grpc/grpc-js) $(pin @grpc/proto-loader)"
  mkdir -p "$ceiling"
  # Its own package.json, so that npm installs here and not into the
  # nearest parent that has one.
  [ -f "$ceiling/package.json" ] || printf '{ "private": true }\n' >"$ceiling/package.json"
  if [ "$(cat "$ceiling/.pins" 2>/dev/null)" != "$pkgs" ]; then
    rm -rf "$ceiling/node_modules"
    # shellcheck disable=SC2086 # two package specs
    if (cd "$ceiling" && npm install --silent --no-audit --no-fund --no-save $pkgs >&2); then
      printf '%s' "$pkgs" >"$ceiling/.pins"
    else
      note "npm could not install $pkgs; the Node.js ceiling is skipped"
    fi
  fi
  if [ -f "$ceiling/.pins" ]; then
    cp bench/probe/grpc_ceiling.mjs bench/probe/grpc_relay.mjs bench/probe/grpc_probe_server.mjs "$ceiling/"
    CEILING_NODE_DIR="$PWD/$ceiling"
  fi
fi
export CEILING_NODE_DIR

exec "$DENO" run -A bench/run.ts ${args[@]+"${args[@]}"}
