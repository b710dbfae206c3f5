#!/usr/bin/env bash
# The main job, end to end: starts the simulated worker and the sidecar on
# its embedded default configuration (gRPC on :50051, metrics on :9090,
# worker socket /tmp/cy_worker.sock), streams one generation through it to a
# gRPC client that prints tokens as they arrive, then stops both.
#   scripts/demo.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BOOTSTRAP_PYTHON=0 . scripts/bootstrap.sh

prompt=${1:-"Tell me a short story about a lighthouse keeper."}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "demo: starting the simulated worker on /tmp/cy_worker.sock" >&2
PYTHONPATH=python python3 -m cy_worker.sim --socket /tmp/cy_worker.sock --ttft-ms 150 --itl-ms 40 &
pids+=($!)

mapfile -t flags < <("$DENO" run --allow-read tools/sidecar_flags.ts)
echo "demo: starting cy-sidecar with: deno run ${flags[*]} main.ts" >&2
"$DENO" run "${flags[@]}" main.ts &
pids+=($!)

fetch() { python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1"; }
for _ in $(seq 1 100); do
  fetch http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

echo "demo: streaming a generation through the sidecar" >&2
"$DENO" run --allow-net=127.0.0.1:50051 --allow-env tools/generate.ts \
  --addr 127.0.0.1:50051 --prompt "$prompt" --max-tokens 60
echo >&2
echo "demo: metrics at http://127.0.0.1:9090/metrics say:" >&2
fetch http://127.0.0.1:9090/metrics | grep -E '^sidecar_(tokens_processed_total|requests_total|worker_connection_status)' >&2 || true
