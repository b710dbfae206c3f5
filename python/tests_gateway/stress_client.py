"""A gateway process for the stress test to kill: it opens many endless
generations, says so on stdout once each has streamed its first chunk, then
waits to be killed.

    python stress_client.py --addr HOST:PORT --pb-dir DIR --streams N --channels C

`--pb-dir` is where the `pb` fixture generated the gRPC modules.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

ENDLESS = "[[sim tokens=1000000 itl_ms=5]]"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--pb-dir", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, args.pb_dir)
    import sidecar_pb2
    import sidecar_pb2_grpc

    # A local subchannel pool per channel: one HTTP/2 connection each.
    options = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.addr, options=options) for _ in range(args.channels)]
    calls = []
    for i in range(args.streams):
        stub = sidecar_pb2_grpc.SidecarStub(channels[i % len(channels)])
        calls.append(
            stub.Generate(
                sidecar_pb2.GenerateRequest(
                    request_id=f"killed-{i}",
                    session_id="stress-killed",
                    prompt=f"go on {ENDLESS}",
                    sampling=sidecar_pb2.SamplingParams(max_tokens=0),
                )
            )
        )
    for call in calls:
        await call.read()
    print(f"open {len(calls)}", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
