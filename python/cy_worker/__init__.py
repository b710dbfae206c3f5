"""cy-worker: the worker side of cy-sidecar's worker protocol.

Write an async generator function that turns a `Request` into `Token`s and
hand it to a `Worker`, which listens on a Unix socket for the sidecar and
does everything else: handshake, framing, heartbeats, flow control,
cancellation, error reporting and status announcements.

    from cy_worker import Worker, Request, Token, WorkerError

    async def generate(req: Request):
        req.prompt_tokens = 12
        yield Token(text="Hel", token_ids=[101])
        yield "lo", [102]
        req.finish_reason = "length"

    Worker(generate, model_id="m").run()

A batching engine that produces every running sequence's token in one
step is served with `Worker(engine=...)` instead (see `cy_worker.engine`).

`python -m cy_worker.sim` runs a simulated model on the same code.
"""

# Defined before the imports below: worker.py reads it for its default name.
__version__ = "0.1.0"

from .engine import Stream  # noqa: E402
from .request import Request, Sampling, Token, WorkerError  # noqa: E402
from .worker import DEFAULT_SOCKET_PATH, Worker  # noqa: E402

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "Request",
    "Sampling",
    "Stream",
    "Token",
    "Worker",
    "WorkerError",
    "__version__",
]
