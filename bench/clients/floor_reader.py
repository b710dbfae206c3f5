"""A minimal Python client of the worker protocol, for the latency floor.

It reads stamped tokens straight off the worker's socket, with no sidecar
in between: hello, then `--streams` generations kept in flight back to
back, credit given back in halves of the window as the sidecar does, and
for every chunk `time.monotonic_ns()` minus the stamp the simulator wrote
into its text (`--stamp`). Standard library only; prints one JSON object
with the same keys as `cyload floor`.

    python bench/clients/floor_reader.py --socket /tmp/w.sock --streams 64 \
        --duration 10 --warmup 2 --prompt "x [[sim tokens=50 itl_ms=20]]"

Bounded in time (`--duration`) and in count (`--max-requests`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import struct
import sys
import time
from typing import Dict, List

CREDIT = 32  # the sidecar's default worker.stream_credit_chunks
GRANT = CREDIT // 2


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: List[int], q: float) -> float:
    """Nearest rank, in microseconds."""
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


async def run(options: argparse.Namespace) -> dict:
    reader, writer = await asyncio.open_unix_connection(options.socket)

    def send(message: dict) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        writer.write(struct.pack(">I", len(payload)) + payload)

    async def read() -> dict:
        header = await reader.readexactly(4)
        (length,) = struct.unpack(">I", header)
        payload = await reader.readexactly(length)
        frame = json.loads(payload)
        frame["_at"] = time.monotonic_ns()
        return frame

    send({"type": "hello", "versions": [1], "sidecar": "cy-bench-floor-py/1",
          "max_frame_bytes": 1 << 20, "heartbeat_interval_ms": 0})
    welcome = await asyncio.wait_for(read(), 10)
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"expected welcome, got {welcome}")

    start = time.monotonic_ns()
    window_start = start + int(options.warmup * 1e9)
    window_end = start + int(options.duration * 1e9)
    started = ok = tokens = chunks = 0
    failed: Dict[str, int] = {}
    owed: Dict[str, int] = {}
    latencies: List[int] = []

    def start_one() -> None:
        nonlocal started
        if started >= options.max_requests:
            return
        started += 1
        rid = f"{options.prefix}-{started}"
        owed[rid] = 0
        send({"type": "generate", "id": rid, "session_id": "bench", "model_id": "",
              "prompt": options.prompt, "sampling": {"max_tokens": 0}, "credit": CREDIT})

    for _ in range(options.streams):
        start_one()

    cpu_before = None
    while True:
        left = (window_end - time.monotonic_ns()) / 1e9
        if left <= 0:
            break
        try:
            frame = await asyncio.wait_for(read(), left)
        except asyncio.TimeoutError:
            break
        at = frame["_at"]
        if cpu_before is None and at >= window_start:
            cpu_before = cpu_seconds()
        in_window = window_start <= at < window_end
        kind = frame.get("type")
        if kind == "chunk":
            rid = frame["id"]
            if in_window:
                tokens += len(frame.get("token_ids", ()))
                chunks += 1
                text = frame.get("text", "")
                stamp = text.split(" ", 1)[0]
                if stamp.isdigit():
                    latencies.append(at - int(stamp))
            owed[rid] = owed.get(rid, 0) + 1
            if owed[rid] >= GRANT:
                send({"type": "credit", "id": rid, "chunks": owed[rid]})
                owed[rid] = 0
        elif kind in ("done", "error"):
            owed.pop(frame.get("id"), None)
            if kind == "done":
                ok += 1 if in_window else 0
            elif in_window:
                key = "worker_" + str(frame.get("code"))
                failed[key] = failed.get(key, 0) + 1
            start_one()
    cpu_s = cpu_seconds() - (cpu_before if cpu_before is not None else cpu_seconds())
    writer.close()

    window = (window_end - window_start) / 1e9
    latencies.sort()
    result = {
        "mode": "floor-python",
        "streams": options.streams,
        "window_s": window,
        "requests_started": started,
        "requests_ok": ok,
        "requests_failed": failed,
        "tokens": tokens,
        "chunks": chunks,
        "requests_per_s": ok / window,
        "tokens_per_s": tokens / window,
        "client_cpu_s": cpu_s,
        "client_cpu_pct": 100 * cpu_s / window,
    }
    if latencies:
        result["latency_us"] = {
            "count": len(latencies),
            "min_us": latencies[0] / 1000,
            "p50_us": percentile(latencies, 0.5),
            "p90_us": percentile(latencies, 0.9),
            "p99_us": percentile(latencies, 0.99),
            "p999_us": percentile(latencies, 0.999),
            "max_us": latencies[-1] / 1000,
            "mean_us": sum(latencies) / len(latencies) / 1000,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds, warm-up included")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted")
    parser.add_argument("--max-requests", type=int, default=10_000_000)
    parser.add_argument("--prompt", default="hello")
    parser.add_argument("--prefix", default="p")
    options = parser.parse_args()
    result = asyncio.run(run(options))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)  # do not wait for generations still in flight


if __name__ == "__main__":
    sys.exit(main())
