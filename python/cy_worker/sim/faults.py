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


async def fire(kind: str, req: Request, code: str) -> None:
    """Inject a positional fault into `req`'s generation.

    Returns when the generation should go on; raises or never returns
    (until cancelled) when the fault ends it.
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
        await _forever()
    elif kind == "error":
        raise WorkerError(code, f"sim fault: injected error for {req.id}")
    elif kind == "malformed":
        payload = b'{"type":"chunk","id":'
        transport.write(pack_length(len(payload)) + payload)
    elif kind == "oversized":
        transport.write(pack_length(generation.conn.peer_max_frame_bytes + 1))
        # Whatever followed would be read as that frame's body.
        await _forever()
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


def lie_about_usage(req: Request) -> None:
    """Make `done` over-report completion tokens (fault `lie_usage`)."""
    req._generation.usage_bias = USAGE_LIE


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()
