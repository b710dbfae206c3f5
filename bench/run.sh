#!/usr/bin/env bash
# The benchmark suite, in one command:
#
#   bash bench/run.sh            # full run (about 25 minutes, 10 of them soak)
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

exec "$DENO" run -A bench/run.ts ${args[@]+"${args[@]}"}
