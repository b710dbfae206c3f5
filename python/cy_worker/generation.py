"""One generation: pull the user's async generator under flow control.

The driver pulls an item only while the generation has credit and writes it
at once as a chunk (the connection frames it). It ends every generation with
exactly one `done` or `error` frame (unless the connection is gone), and
never lets an exception from user code escape.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Tuple

from .protocol import CHUNK_FRAME_EXTRA, MAX_TOKEN_ID, encode_str
from .request import Request, WorkerError

if TYPE_CHECKING:
    from .connection import Connection

logger = logging.getLogger("cy_worker")

# Outcomes other than an error: the generator ended, or it was cancelled.
_FINISHED = ("", "")
_CANCELLED = ("cancelled", "")


class Generation:
    """The package's side of one `generate`: credit, usage, and its task."""

    __slots__ = (
        "conn",
        "req",
        "credit",
        "completion_tokens",
        "usage_bias",
        "task",
        "_running",
        "_credit_waiter",
    )

    def __init__(self, conn: "Connection", req: Request, credit: int) -> None:
        self.conn = conn
        self.req = req
        self.credit = credit
        # Token ids actually written, which is what `done` reports.
        self.completion_tokens = 0
        # Added to the reported count; only the simulator's `lie_usage` sets it.
        self.usage_bias = 0
        self.task: Optional[asyncio.Task] = None
        self._running = False
        self._credit_waiter: Optional[asyncio.Future] = None
        req._generation = self

    def start(self) -> None:
        """Run the generation in a task of its own."""
        self.task = asyncio.get_running_loop().create_task(self.run())

    def add_credit(self, chunks: int) -> None:
        """Allow `chunks` more chunk frames, waking the driver if it waits."""
        self.credit += chunks
        waiter = self._credit_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self, reason: str) -> None:
        """Stop the generation; it then ends with `done` (cancelled)."""
        if self.req.cancelled:
            return
        self.req._mark_cancelled(reason)
        # A task cancelled before its first step would never run its body,
        # and so never report its end; one not yet running sees the flag.
        if self.task is not None and self._running:
            self.task.cancel()

    async def run(self) -> None:
        """Drive the generation to its end and report that end."""
        req = self.req
        agen: Any = None
        outcome: Tuple[str, str] = _CANCELLED
        self._running = True
        try:
            try:
                if req.cancelled:
                    raise asyncio.CancelledError()
                agen = self.conn.worker.generate(req)
                if not hasattr(agen, "__anext__"):
                    raise TypeError("generate() must return an async iterator (an async generator)")
                await self._pump(agen)
                outcome = _FINISHED
            except asyncio.CancelledError:
                outcome = _CANCELLED
            except WorkerError as exc:
                outcome = (str(exc.code) or "internal", str(exc.message))
            except Exception as exc:
                logger.warning("generation failed id=%s", req.id, exc_info=True)
                outcome = ("internal", str(exc) or type(exc).__name__)

            # The generator must have stopped before its end is reported.
            if agen is not None and hasattr(agen, "aclose"):
                await _close_quietly(agen, req.id)
            self._report(outcome)
        finally:
            self.conn.generation_ended(self)

    async def _pump(self, agen: AsyncIterator[Any]) -> None:
        # TODO(#5): through this API the worker costs 0.13 to 0.16 of a
        # grpcio worker's CPU per token (target 0.1): resuming the user's
        # generator and its task's step per token, about 1 us together, and
        # the simulator's per-generation clock. Producing the tokens alone
        # is already 0.07 of grpcio's, and with the framing at its cheapest
        # (the engine's) 0.11. `Worker(engine=...)` (engine.py) skips the
        # per-generation cost and is at 0.06 to 0.07; this path keeps the
        # per-request streams that vLLM's and TensorRT-LLM's async front
        # ends offer.
        req = self.req
        conn = self.conn
        anext = agen.__anext__
        write_chunk = conn.write_chunk
        prefix = '{"id":' + encode_str(req.id) + ',"text":'
        first = True

        while True:
            if self.credit <= 0:
                await self._wait_for_credit()
            try:
                item = await anext()
            except StopAsyncIteration:
                return
            if req.cancelled:
                raise asyncio.CancelledError()

            try:
                text, ids = item
            except (TypeError, ValueError):
                raise TypeError(
                    f"generator yielded {type(item).__name__}; expected Token or (text, token_ids)"
                ) from None
            prompt = None
            if first:
                # The prompt's size is known once prefill is done; telling
                # the sidecar now lets it bill the prompt even if the
                # generation is cut short before `done`.
                prompt = req.prompt_tokens
            item, count = chunk_item(prefix, text, ids, prompt, conn.peer_max_frame_bytes)
            if item is None:
                continue
            first = False
            write_chunk(item)
            self.credit -= 1
            self.completion_tokens += count
            if conn.write_paused:
                await conn.wait_writable()

    async def _wait_for_credit(self) -> None:
        loop = asyncio.get_running_loop()
        while self.credit <= 0:
            self._credit_waiter = loop.create_future()
            try:
                await self._credit_waiter
            finally:
                self._credit_waiter = None

    def _report(self, outcome: Tuple[str, str]) -> None:
        req = self.req
        if req.cancelled or outcome is _CANCELLED:
            self.conn.send_done(req.id, "cancelled", self._usage())
        elif outcome is _FINISHED:
            reason = req.finish_reason
            if type(reason) is not str or not reason:
                reason = "stop"
            self.conn.send_done(req.id, reason, self._usage())
        else:
            self.conn.send_error(outcome[0], outcome[1], req.id)
        logger.debug("generation ended id=%s outcome=%s", req.id, outcome[0] or "done")

    def _usage(self) -> dict:
        return usage_of(self.req, self.completion_tokens + self.usage_bias)


def usage_of(req: Request, completion_tokens: int) -> dict:
    """`done.usage`: the prompt as the worker reported it, the tokens sent."""
    prompt = req.prompt_tokens
    if type(prompt) is not int or prompt < 0:
        prompt = 0
    return {"prompt_tokens": prompt, "completion_tokens": max(0, completion_tokens)}


def chunk_item(
    prefix: str, text: Any, ids: Any, prompt_tokens: Any, peer_max_frame_bytes: int
) -> Tuple[Optional[bytes], int]:
    """One chunk as its JSON object without `type`, and its token count.

    `prefix` is `{"id":<id>,"text":`. `prompt_tokens` is given with a
    generation's first chunk only (None otherwise; a value that is not a
    count is left out). Returns (None, 0) for a chunk with neither text nor
    token ids, which is not sent. Raises TypeError or ValueError for a bad
    item, WorkerError for one too large for the sidecar's frame limit.
    """
    if type(text) is not str:
        raise TypeError(f"chunk text must be str, not {type(text).__name__}")
    # One token per chunk is the usual case: encode it inline.
    if (
        (type(ids) is tuple or type(ids) is list)
        and len(ids) == 1
        and type(ids[0]) is int
        and 0 <= ids[0] <= MAX_TOKEN_ID
    ):
        ids_json = "[" + str(ids[0]) + "]"
        count = 1
    else:
        ids_json, count = _token_ids_json(ids)
        if count == 0 and not text:
            return None, 0
    tail = "}"
    if prompt_tokens is not None and type(prompt_tokens) is int and prompt_tokens >= 0:
        tail = ',"prompt_tokens":' + str(prompt_tokens) + "}"
    item = (prefix + encode_str(text) + ',"token_ids":' + ids_json + tail).encode()
    if len(item) > peer_max_frame_bytes - CHUNK_FRAME_EXTRA:
        raise WorkerError(
            "internal",
            f"chunk of {len(item) + CHUNK_FRAME_EXTRA} bytes exceeds the sidecar's "
            f"max_frame_bytes {peer_max_frame_bytes}",
        )
    return item, count


def _token_ids_json(ids: Any) -> Tuple[str, int]:
    """Encode token ids as a JSON array, checking the protocol's range."""
    if type(ids) is list or type(ids) is tuple:
        for t in ids:
            if type(t) is not int or t < 0 or t > MAX_TOKEN_ID:
                break
        else:
            return "[" + ",".join(map(str, ids)) + "]", len(ids)
    return _coerced_ids_json(ids)


def _coerced_ids_json(ids: Any) -> Tuple[str, int]:
    # Slow path: integer-like values (numpy scalars, for instance) are fine,
    # booleans, floats and out-of-range values are not.
    try:
        values = [operator.index(t) for t in ids if not isinstance(t, bool)]
        if len(values) != len(ids):
            raise TypeError
    except TypeError:
        raise TypeError(f"token_ids must be a sequence of integers, got {ids!r:.80}") from None
    for t in values:
        if not 0 <= t <= MAX_TOKEN_ID:
            raise ValueError(f"token id {t} is outside 0..{MAX_TOKEN_ID}")
    return "[" + ",".join(map(str, values)) + "]", len(values)


async def _close_quietly(agen: Any, request_id: str) -> None:
    try:
        await agen.aclose()
    except Exception:
        logger.warning("generator failed while closing id=%s", request_id, exc_info=True)
