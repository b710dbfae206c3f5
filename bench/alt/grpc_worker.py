"""The usual alternative to the sidecar: a Python worker serving gRPC itself.

It serves `cy.sidecar.v1.Sidecar/Generate` with grpcio's asyncio server
(`grpc.aio`) and produces exactly the simulator's token workload: the same
words from the same seeded stream (`cy_worker.sim.text`), the same
per-request directives (`[[sim tokens=... itl_ms=...]]`), the same fixed
schedule (first token after `ttft`, then one every `itl`), and with
`--stamp` the same `time.monotonic_ns()` stamp as each chunk's text. The
benchmark streams one workload through the sidecar and the simulator, and
through this worker (alone, or behind nginx), and compares.

With `--api engine` the tokens come from the simulator's batching engine
(`cy_worker.sim.engine`, one decode step for every running generation), as
they do with `python -m cy_worker.sim --api engine`. grpcio has no way to
write to many streams from one step, so each RPC's handler takes its tokens
from a queue the step fills, and the step holds a generation back once 32
of its tokens wait there (the sidecar's default credit).

    python bench/alt/grpc_worker.py --listen 127.0.0.1:0 [--stamp] [--api engine]

Prints `grpc_worker listening on HOST:PORT` on stderr once it serves.
Needs `python/` on PYTHONPATH and grpcio, grpcio-tools (the project's test
virtualenv has both). Stubs are generated from `proto/` at start-up into a
temporary directory; nothing generated is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
from types import ModuleType
from typing import Tuple

import grpc
from grpc_tools import protoc

from cy_worker import Request, Sampling
from cy_worker.sim.directive import Plan
from cy_worker.sim.engine import SimEngine
from cy_worker.sim.text import VOCABULARY, count_prompt_tokens, token_stream

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto", "cy", "sidecar", "v1")

# grpcio's default is 100 streams per connection; the benchmark keeps up to
# 1,024 generations in flight on one connection, as it does to the sidecar
# (`server.max_concurrent_streams`).
MAX_CONCURRENT_STREAMS = 1024

# With `--api engine`: tokens queued for one RPC before the step holds that
# generation back (the sidecar's default `worker.stream_credit_chunks`).
QUEUED_TOKENS = 32


def generate_stubs(out: str) -> Tuple[ModuleType, ModuleType]:
    """Compile sidecar.proto into `out`; return (messages, services) modules."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(PROTO_DIR, "sidecar.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on sidecar.proto")
    sys.path.insert(0, out)
    try:
        return importlib.import_module("sidecar_pb2"), importlib.import_module("sidecar_pb2_grpc")
    finally:
        sys.path.remove(out)


def request_text(request) -> str:
    """The text a request carries: its prompt, or its messages' contents."""
    if request.prompt:
        return request.prompt
    return "\n".join(m.content for m in request.messages)


def make_servicer(pb: ModuleType, pb_grpc: ModuleType, options: argparse.Namespace):
    """The Sidecar service, with the simulator's workload."""
    defaults = Plan(tokens=options.tokens, ttft_ms=options.ttft_ms, itl_ms=options.itl_ms)
    stamp = options.stamp

    class Servicer(pb_grpc.SidecarServicer):
        async def Generate(self, request, context):
            try:
                plan, text = defaults.for_prompt(request_text(request))
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sim directive: {exc}")
            prompt_tokens = count_prompt_tokens(text)
            length, finish_reason = plan.length(request.sampling.max_tokens)
            seed = request.sampling.seed if request.sampling.HasField("seed") else 0
            stream = token_stream(text, seed)
            rid = request.request_id

            loop = asyncio.get_running_loop()
            # The simulator's schedule: tokens due at fixed times.
            first_due, interval = plan.clock(loop.time())
            for i in range(length):
                delay = first_due + i * interval - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
                token = next(stream)
                text_out = f"{time.monotonic_ns()} " if stamp else VOCABULARY[token]
                yield pb.GenerateEvent(
                    request_id=rid, chunk=pb.TokenChunk(text=text_out, token_ids=[token])
                )
            yield pb.GenerateEvent(
                request_id=rid,
                done=pb.Done(
                    finish_reason=finish_reason,
                    usage=pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=length),
                    model_id=options.model_id,
                ),
            )

    if options.api == "engine":
        return make_engine_servicer(pb, pb_grpc, options)
    return Servicer()


class QueueStream:
    """What `SimEngine` pushes to, for one RPC: a queue its handler drains."""

    __slots__ = ("request", "data", "queue", "engine", "paused")

    def __init__(self, request: Request, engine: SimEngine) -> None:
        self.request = request
        self.data = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.engine = engine
        self.paused = False

    @property
    def has_credit(self) -> bool:
        return not self.paused

    def push(self, text: str, token_ids) -> bool:
        self.queue.put_nowait((text, token_ids))
        if self.queue.qsize() >= QUEUED_TOKENS:
            self.paused = True
        return True

    def finish(self, finish_reason: str) -> None:
        self.queue.put_nowait(finish_reason)

    def fail(self, code: str, message: str) -> None:
        self.queue.put_nowait(RuntimeError(f"{code}: {message}"))

    def taken(self) -> None:
        """The handler took a token: let a held-back generation step again."""
        if self.paused and self.queue.qsize() < QUEUED_TOKENS:
            self.paused = False
            self.engine.resume(self)


def make_engine_servicer(pb: ModuleType, pb_grpc: ModuleType, options: argparse.Namespace):
    """The Sidecar service, fed by the simulator's batching engine."""
    engine = SimEngine(
        Plan(tokens=options.tokens, ttft_ms=options.ttft_ms, itl_ms=options.itl_ms), options.stamp
    )

    class EngineServicer(pb_grpc.SidecarServicer):
        async def Generate(self, request, context):
            seed = request.sampling.seed if request.sampling.HasField("seed") else None
            req = Request(
                request.request_id,
                prompt=request.prompt or None,
                messages=[{"role": m.role, "content": m.content} for m in request.messages]
                or None,
                sampling=Sampling(max_tokens=request.sampling.max_tokens, seed=seed),
            )
            stream = QueueStream(req, engine)
            try:
                engine.submit(stream)
            except Exception as exc:  # a malformed directive
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            rid = request.request_id
            sent = 0
            try:
                while True:
                    item = await stream.queue.get()
                    stream.taken()
                    if type(item) is tuple:
                        sent += 1
                        yield pb.GenerateEvent(
                            request_id=rid,
                            chunk=pb.TokenChunk(text=item[0], token_ids=item[1]),
                        )
                    elif type(item) is str:
                        break
                    else:
                        await context.abort(grpc.StatusCode.INTERNAL, str(item))
            except asyncio.CancelledError:
                engine.cancel(stream)
                raise
            yield pb.GenerateEvent(
                request_id=rid,
                done=pb.Done(
                    finish_reason=item,
                    usage=pb.Usage(prompt_tokens=req.prompt_tokens, completion_tokens=sent),
                    model_id=options.model_id,
                ),
            )

    return EngineServicer()


async def serve(options: argparse.Namespace, pb: ModuleType, pb_grpc: ModuleType) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_SidecarServicer_to_server(make_servicer(pb, pb_grpc, options), server)
    port = server.add_insecure_port(options.listen)
    if port == 0:
        raise OSError(f"cannot listen on {options.listen}")
    await server.start()
    host = options.listen.rsplit(":", 1)[0]
    print(f"grpc_worker listening on {host}:{port}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (0: any free port)")
    parser.add_argument("--model-id", default="sim-1")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--stamp", action="store_true", help="chunk text = monotonic_ns stamp")
    parser.add_argument(
        "--api",
        choices=("generator", "engine"),
        default="generator",
        help="tokens from a generator per RPC, or from one engine step for every RPC",
    )
    options = parser.parse_args()

    out = tempfile.mkdtemp(prefix="cy-alt-pb-")
    try:
        pb, pb_grpc = generate_stubs(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    asyncio.run(serve(options, pb, pb_grpc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
