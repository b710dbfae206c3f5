"""Fault injection for tests of the sidecar's failure handling.

Faults go through the package's real code paths where the protocol allows:
an exception for `error`, credit accounting for `no_credit`, cancellation for
`hang`. Only the framing-level faults write raw bytes to the transport,
bypassing the codec, because the codec cannot produce a broken frame.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid

from ..protocol import encode_frame, pack_length
from ..request import Request, WorkerError

logger = logging.getLogger("cy_worker.sim")

# Faults tied to a position in the stream; the others hold throughout.
POSITIONAL = frozenset(
    ("exit", "hang", "error", "malformed", "oversized", "no_credit", "unknown_id")
)

# Credit granted by `no_credit`: more chunks than any generation sends.
_UNLIMITED_CREDIT = 1 << 40

# The bias `lie_usage` adds to done.usage.completion_tokens.
USAGE_LIE = 5

# How long `slow_cancel` keeps a cancelled generation running.
SLOW_CANCEL_S = 1.0


# What a generation does after `inject`: go on, stop sending, or fail.
GO_ON = "go_on"
HANG = "hang"
FAIL = "fail"


async def fire(kind: str, req: Request, code: str) -> None:
    """Inject a positional fault into `req`'s generation (the generator API).

    Returns when the generation should go on; raises or never returns
    (until cancelled) when the fault ends it.
    """
    then = inject(kind, req)
    if then == HANG:
        await _forever()
    elif then == FAIL:
        raise WorkerError(code, error_message(req))


def inject(kind: str, req: Request) -> str:
    """Do what fault `kind` does to the connection; say how the generation goes on.

    Works for a generation of either API (`req._generation` is the package's
    driver of it): `exit` does not return, `error` is left to the caller
    (FAIL), `hang` and `oversized` stop the generation's output (HANG).
    """
    generation = req._generation
    transport = generation.conn.transport
    logger.warning("injecting fault=%s id=%s", kind, req.id)
    # What the generation wrote so far goes out before the fault: raw bytes
    # must follow it, and an exit must not swallow it.
    generation.conn.flush()

    if kind == "exit":
        sys.stderr.flush()
        os._exit(3)
    elif kind == "hang":
        return HANG
    elif kind == "error":
        return FAIL
    elif kind == "malformed":
        payload = b'{"type":"chunk","id":'
        transport.write(pack_length(len(payload)) + payload)
    elif kind == "oversized":
        transport.write(pack_length(generation.conn.peer_max_frame_bytes + 1))
        # Whatever followed would be read as that frame's body.
        return HANG
    elif kind == "no_credit":
        generation.credit += _UNLIMITED_CREDIT
    elif kind == "unknown_id":
        ghost = {
            "type": "chunk",
            "id": "sim-unknown-" + uuid.uuid4().hex,
            "text": " boo",
            "token_ids": [0],
        }
        transport.write(encode_frame(ghost))
    else:
        raise ValueError(f"not a positional fault: {kind!r}")
    return GO_ON


def error_message(req: Request) -> str:
    """The message of an injected `error`."""
    return f"sim fault: injected error for {req.id}"


def lie_about_usage(req: Request) -> None:
    """Make `done` over-report completion tokens (fault `lie_usage`)."""
    req._generation.usage_bias = USAGE_LIE


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()
