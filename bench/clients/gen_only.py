"""The simulator's token workload with no transport at all.

Runs the same generation loop as the simulator and the grpcio worker (the
same directive, words, schedule and stamps: `cy_worker.sim`), keeping
`--streams` generations in flight back to back, and throws every token
away. Its CPU per token is what producing the workload costs a Python
process before any protocol: subtracted from a worker's CPU per token, it
leaves what that worker's protocol costs. With `--api engine` the tokens
come from the simulator's batching engine (`cy_worker.sim.engine`) instead
of a generator per generation.

    python bench/clients/gen_only.py --streams 64 --duration 5 --warmup 1 \\
        --prompt "bench [[sim tokens=500 ttft_ms=0 itl_ms=0]]" [--stamp] [--api engine]

Prints one JSON object on stdout: tokens and process CPU seconds counted
after the warm-up, and the window's length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from cy_worker import Request
from cy_worker.sim.directive import Plan
from cy_worker.sim.engine import SimEngine
from cy_worker.sim.text import VOCABULARY, count_prompt_tokens, token_stream


async def generation(plan: Plan, text: str, stamp: bool, sink: list) -> None:
    count_prompt_tokens(text)
    length, _ = plan.length(0)
    stream = token_stream(text, 0)
    loop = asyncio.get_running_loop()
    first_due, interval = plan.clock(loop.time())
    for i in range(length):
        delay = first_due + i * interval - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        token = next(stream)
        text_out = f"{time.monotonic_ns()} " if stamp else VOCABULARY[token]
        sink[0] = (text_out, (token,))
        sink[1] += 1


class NullStream:
    """What the engine pushes to: every token thrown away, credit without end."""

    __slots__ = ("request", "data", "sink", "lane")
    has_credit = True

    def __init__(self, request: Request, sink: list, lane: asyncio.Future) -> None:
        self.request = request
        self.data = None
        self.sink = sink
        self.lane = lane

    def push(self, text: str, token_ids) -> bool:
        self.sink[0] = (text, token_ids)
        self.sink[1] += 1
        return True

    def finish(self, finish_reason: str) -> None:
        self.lane.set_result(None)

    def fail(self, code: str, message: str) -> None:
        self.lane.set_exception(RuntimeError(f"{code}: {message}"))


async def run(options: argparse.Namespace) -> dict:
    defaults = Plan(tokens=32, ttft_ms=0, itl_ms=0)
    plan, text = defaults.for_prompt(options.prompt)
    engine = SimEngine(defaults, options.stamp)
    sink: list = [None, 0]
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + options.duration
    marks: dict = {}

    async def lane() -> None:
        while loop.time() < end:
            if options.api == "engine":
                done = loop.create_future()
                engine.submit(NullStream(Request("r", prompt=options.prompt), sink, done))
                await done
            else:
                await generation(plan, text, options.stamp, sink)

    async def clock() -> None:
        await asyncio.sleep(options.warmup)
        marks["t0"] = (time.monotonic(), time.process_time(), sink[1])
        await asyncio.sleep(max(0.0, end - loop.time()))
        marks["t1"] = (time.monotonic(), time.process_time(), sink[1])

    await asyncio.gather(clock(), *(lane() for _ in range(options.streams)))
    (w0, c0, n0), (w1, c1, n1) = marks["t0"], marks["t1"]
    return {"tokens": n1 - n0, "cpu_s": c1 - c0, "window_s": w1 - w0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds, warm-up included")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted")
    parser.add_argument("--prompt", required=True, help="a prompt with a [[sim ...]] directive")
    parser.add_argument("--stamp", action="store_true", help="token text = monotonic_ns stamp")
    parser.add_argument("--api", choices=("generator", "engine"), default="generator")
    options = parser.parse_args()
    if options.warmup >= options.duration:
        parser.error("--warmup must be shorter than --duration")
    print(json.dumps(asyncio.run(run(options))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
