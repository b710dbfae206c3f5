"""Serving a batching engine step by step, without a task per generation.

With `Worker(generate)` every generation is an asyncio task pulling an async
generator: each token costs a task step and a generator resumption. A
continuously batching engine produces the tokens of every running sequence
in one decode step, and its own API says so (vLLM's `LLMEngine.step()`
returns the outputs of all running requests; TensorRT-LLM's
`Executor.await_responses()` the responses of many). `Worker(engine=...)`
serves such an engine directly:

- the package calls `engine.submit(stream)` for each accepted `generate`;
- the engine pushes each step's output with `stream.push(text, token_ids)`
  and ends a generation with `stream.finish()` or `stream.fail()`;
- the package calls `engine.cancel(stream)` when the sidecar cancels the
  generation or its connection closes, and `engine.resume(stream)` (when the
  engine has that method) when a stream out of credit may send again.

Flow control: a chunk pushed while the generation has no credit from the
sidecar waits in the stream's backlog and leaves, in order, as credit
arrives; `finish` and `fail` take effect after the backlog. An engine that
can pause a sequence checks `stream.has_credit` and waits for `resume`; one
that cannot keeps pushing, and the backlog holds the rest of that
generation's output (never more than the generation itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Optional, Tuple

from .generation import chunk_item, usage_of
from .protocol import encode_str
from .request import Request, WorkerError

if TYPE_CHECKING:
    from .connection import Connection

logger = logging.getLogger("cy_worker")


class Stream:
    """One generation served by an engine: the engine's handle on it.

    Its methods run on the worker's event loop (from another thread, use
    `Worker.push_step` or `Worker.call_soon_threadsafe`). `data` is free for
    the engine's own per-generation state.
    """

    __slots__ = (
        "conn",
        "req",
        "engine",
        "credit",
        "completion_tokens",
        "usage_bias",
        "task",
        "data",
        "_prefix",
        "_first",
        "_backlog",
        "_ending",
        "_ended",
    )

    def __init__(self, conn: "Connection", req: Request, credit: int, engine: Any) -> None:
        self.conn = conn
        self.req = req
        self.engine = engine
        self.credit = credit
        # Token ids actually written, which is what `done` reports.
        self.completion_tokens = 0
        # Added to the reported count; only the simulator's `lie_usage` sets it.
        self.usage_bias = 0
        # No task drives a stream; `Worker.close` looks for one.
        self.task: Optional[asyncio.Task] = None
        self.data: Any = None
        self._prefix = '{"id":' + encode_str(req.id) + ',"text":'
        self._first = True
        # Encoded chunks waiting for credit, with their token counts.
        self._backlog: Deque[Tuple[bytes, int]] = deque()
        # How the engine ended the generation, once it has: ("done", reason)
        # or ("error", code, message); reported after the backlog.
        self._ending: Optional[Tuple[str, ...]] = None
        self._ended = False
        req._generation = self

    # The engine's side

    @property
    def request(self) -> Request:
        """What the sidecar asked for (set `prompt_tokens` before the first push)."""
        return self.req

    @property
    def has_credit(self) -> bool:
        """True while a push would be written at once rather than held back."""
        return self.credit > 0 and not self._backlog and not self._ended

    @property
    def backlog(self) -> int:
        """Chunks pushed and not yet sent for lack of credit."""
        return len(self._backlog)

    @property
    def open(self) -> bool:
        """True until the engine ends the generation or it is cancelled."""
        return self._ending is None and not self._ended

    def push(self, text: str, token_ids: Any = ()) -> bool:
        """Add one chunk: `text` and its token ids (a list or tuple of ints).

        Returns False, and sends nothing, once the generation is no longer
        open. A chunk with neither text nor ids is skipped. A bad chunk
        (text not a str, an id out of range, too large for the sidecar's
        frame limit) fails the generation with `internal`, cancels it in the
        engine, and returns False: one broken output does not stop a step.
        """
        if self._ending is not None or self._ended:
            return False
        prompt = self.req.prompt_tokens if self._first else None
        try:
            item, count = chunk_item(
                self._prefix, text, token_ids, prompt, self.conn.peer_max_frame_bytes
            )
        except (TypeError, ValueError, WorkerError) as exc:
            self._reject(exc)
            return False
        if item is None:
            return True
        self._first = False
        # No wait for the socket here (an engine's step cannot wait): what a
        # generation has in the transport's buffer is bounded by its credit.
        if self.credit > 0 and not self._backlog:
            self.conn.write_chunk(item)
            self.credit -= 1
            self.completion_tokens += count
        else:
            self._backlog.append((item, count))
        return True

    def finish(self, finish_reason: Optional[str] = None) -> None:
        """End the generation with `done` once its backlog has left.

        `finish_reason` defaults to `request.finish_reason` ("stop").
        """
        if self._ending is not None or self._ended:
            return
        reason = finish_reason if finish_reason is not None else self.req.finish_reason
        if type(reason) is not str or not reason:
            reason = "stop"
        self._ending = ("done", reason)
        if not self._backlog:
            self._report()

    def fail(self, code: str, message: str) -> None:
        """End the generation with `error` (code as in `WorkerError`) after its backlog."""
        if self._ending is not None or self._ended:
            return
        self._ending = ("error", str(code) or "internal", str(message))
        if not self._backlog:
            self._report()

    # The package's side

    def start(self) -> None:
        """Hand the generation to the engine; a refusal ends it with `error`."""
        try:
            self.engine.submit(self)
        except WorkerError as exc:
            self.fail(exc.code, exc.message)
        except Exception as exc:
            logger.warning("engine.submit failed id=%s", self.req.id, exc_info=True)
            self.fail("internal", str(exc) or type(exc).__name__)

    def add_credit(self, chunks: int) -> None:
        """Allow `chunks` more chunks: the backlog first, then the engine."""
        if self._ended:
            return
        blocked = not self.has_credit
        self.credit += chunks
        backlog = self._backlog
        if backlog:
            write_chunk = self.conn.write_chunk
            while backlog and self.credit > 0:
                item, count = backlog.popleft()
                write_chunk(item)
                self.credit -= 1
                self.completion_tokens += count
            if backlog:
                return
            if self._ending is not None:
                self._report()
                return
        if blocked and self.credit > 0 and self._ending is None:
            resume = getattr(self.engine, "resume", None)
            if resume is not None:
                try:
                    resume(self)
                except Exception:
                    logger.warning("engine.resume failed id=%s", self.req.id, exc_info=True)

    def cancel(self, reason: str) -> None:
        """Stop the generation at once: tell the engine, then report `done` (cancelled).

        What is still in the backlog is dropped (and not billed). The engine
        is told only about a generation it has not ended itself.
        """
        if self._ended:
            return
        self.req._mark_cancelled(reason)
        self._backlog.clear()
        still_running = self._ending is None
        # Set first: what the engine does while told is ignored.
        self._ending = ("done", "cancelled")
        if still_running:
            self._cancel_in_engine()
        self._report()

    def _reject(self, exc: Exception) -> None:
        logger.warning("engine pushed a bad chunk id=%s: %s", self.req.id, exc)
        if isinstance(exc, WorkerError):
            self.fail(exc.code, exc.message)
        else:
            self.fail("internal", f"bad chunk: {exc}")
        # The engine still runs the sequence; it is told once it can listen.
        asyncio.get_running_loop().call_soon(self._cancel_in_engine)

    def _cancel_in_engine(self) -> None:
        try:
            self.engine.cancel(self)
        except Exception:
            logger.warning("engine.cancel failed id=%s", self.req.id, exc_info=True)

    def _report(self) -> None:
        if self._ended:
            return
        self._ended = True
        ending = self._ending
        assert ending is not None
        if ending[0] == "done":
            usage = usage_of(self.req, self.completion_tokens + self.usage_bias)
            self.conn.send_done(self.req.id, ending[1], usage)
        else:
            self.conn.send_error(ending[1], ending[2], self.req.id)
        logger.debug("generation ended id=%s outcome=%s", self.req.id, ending[0])
        self.conn.generation_ended(self)
