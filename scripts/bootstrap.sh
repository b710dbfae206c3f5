#!/usr/bin/env bash
# Installs the project's pinned toolchain into .tools/ (nothing global):
#   - Deno, from the npm registry (the deno package ships the real binary);
#   - a Python virtualenv with the test-only packages (pytest, grpcio) and
#     the packaging checks (hadolint, kubernetes-validate with its schemas),
#     pinned in python/requirements-dev.txt.
# Safe to run again: each step is skipped when already done.
# Source it to get $DENO and $PY:  . scripts/bootstrap.sh
set -euo pipefail

DENO_VERSION=2.8.3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
DENO="$TOOLS/node_modules/.bin/deno"
PY="$TOOLS/venv/bin/python"

mkdir -p "$TOOLS"

if ! "$DENO" --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
  echo "bootstrap: installing deno $DENO_VERSION from npm into .tools/" >&2
  [ -f "$TOOLS/package.json" ] || echo '{"private":true}' >"$TOOLS/package.json"
  (cd "$TOOLS" && npm install --no-audit --no-fund --loglevel=error "deno@$DENO_VERSION" >&2)
  "$DENO" --version | grep -q "^deno $DENO_VERSION " || {
    echo "bootstrap: deno $DENO_VERSION did not install" >&2
    exit 1
  }
fi

if [ "${BOOTSTRAP_PYTHON:-1}" = 1 ]; then
  reqs="$ROOT/python/requirements-dev.txt"
  stamp="$TOOLS/venv/.requirements"
  if [ ! -x "$PY" ] || ! cmp -s "$reqs" "$stamp"; then
    echo "bootstrap: preparing the Python test environment in .tools/venv" >&2
    python3 -m venv "$TOOLS/venv"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$reqs" >&2
    cp "$reqs" "$stamp"
  fi
fi

export DENO PY
