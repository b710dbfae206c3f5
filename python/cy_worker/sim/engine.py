"""The simulator as a batching engine: one decode step for every running sequence.

Served with `Worker(engine=...)` (`--api engine`): no task and no generator
per generation. Generations with the same `itl_ms` share one step grid, as
the sequences of a continuously batching engine do: a step every `itl_ms`
(back to back when it is 0) emits one token for each sequence that is due
and has credit. A sequence's first token comes at the first step boundary
after its `ttft_ms`. A sequence out of credit sits out the steps until the
sidecar grants more (`resume`); a step that runs late skips the boundaries
it missed, as an engine whose step took longer would.

The words, prompt counts, finish reasons, stamps and faults are those of
the generator API (`app.Simulator.generate`), except `slow_cancel`: an
engine's cancellation is immediate, so that fault is refused.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Dict, Iterator, List, Optional, Tuple

from ..engine import Stream
from ..request import WorkerError
from . import faults
from .directive import Plan
from .text import VOCABULARY, count_prompt_tokens, request_text, token_stream

# Faults an engine cannot show: cancellation ends a stream at once.
UNSUPPORTED_FAULTS = frozenset(("slow_cancel",))

# Where a sequence is on its grid.
WAITING, RUNNING, PAUSED, GONE = "waiting", "running", "paused", "gone"


class _Sequence:
    __slots__ = (
        "stream",
        "tokens",
        "length",
        "finish_reason",
        "fire_at",
        "plan",
        "sent",
        "grid",
        "state",
    )

    def __init__(
        self,
        stream: Stream,
        tokens: Iterator[int],
        length: int,
        finish_reason: str,
        fire_at: int,
        plan: Plan,
        grid: "_Grid",
    ) -> None:
        self.stream = stream
        self.tokens = tokens
        self.length = length
        self.finish_reason = finish_reason
        self.fire_at = fire_at
        self.plan = plan
        self.sent = 0
        self.grid = grid
        # WAITING for its first token, RUNNING, PAUSED for credit, or GONE.
        self.state = WAITING


class SimEngine:
    """The simulated model behind `Worker(engine=...)`."""

    def __init__(self, defaults: Plan, stamp: bool) -> None:
        self.defaults = defaults
        self.stamp = stamp
        self._grids: Dict[float, _Grid] = {}

    def submit(self, stream: Stream) -> None:
        req = stream.request
        try:
            plan, text = self.defaults.for_prompt(request_text(req))
        except ValueError as exc:
            raise WorkerError("invalid_argument", f"sim directive: {exc}") from None
        if plan.fault in UNSUPPORTED_FAULTS:
            raise WorkerError(
                "invalid_argument", f"sim: fault {plan.fault} needs the generator API (--api generator)"
            )
        req.prompt_tokens = count_prompt_tokens(text)
        if plan.fault == "lie_usage":
            faults.lie_about_usage(req)
        length, finish_reason = plan.length(req.sampling.max_tokens)
        fire_at = min(plan.after, length) if plan.fault in faults.POSITIONAL else -1
        grid = self._grids.get(plan.itl_ms)
        if grid is None:
            grid = self._grids[plan.itl_ms] = _Grid(plan.itl_ms / 1000, self.stamp)
        tokens = token_stream(text, req.sampling.seed or 0)
        sequence = _Sequence(stream, tokens, length, finish_reason, fire_at, plan, grid)
        stream.data = sequence
        grid.add(sequence, grid.loop.time() + plan.ttft_ms / 1000)

    def cancel(self, stream: Stream) -> None:
        sequence = stream.data
        if sequence is not None:
            sequence.grid.discard(sequence)

    def resume(self, stream: Stream) -> None:
        sequence = stream.data
        if sequence is not None:
            sequence.grid.wake(sequence)


class _Grid:
    """The decode steps of every sequence with one inter-token interval."""

    def __init__(self, interval_s: float, stamp: bool) -> None:
        self.interval = interval_s
        self.stamp = stamp
        self.loop = asyncio.get_running_loop()
        # Due and with credit, in arrival order (a dict as an ordered set).
        self.running: Dict[_Sequence, None] = {}
        # Waiting for their first token: (when, arrival, sequence).
        self.waiting: List[Tuple[float, int, _Sequence]] = []
        self._arrivals = itertools.count()
        self._handle: Optional[asyncio.TimerHandle] = None
        self._when = 0.0
        self._last: Optional[float] = None

    def add(self, sequence: _Sequence, first_due: float) -> None:
        if self.interval > 0:
            first_due = math.ceil(first_due / self.interval) * self.interval
        heapq.heappush(self.waiting, (first_due, next(self._arrivals), sequence))
        self._schedule()

    def discard(self, sequence: _Sequence) -> None:
        # A waiting one stays in the heap, and is dropped when it comes up.
        if sequence.state == RUNNING:
            del self.running[sequence]
        sequence.state = GONE

    def wake(self, sequence: _Sequence) -> None:
        if sequence.state == PAUSED:
            self._run(sequence)
            self._schedule()

    def _run(self, sequence: _Sequence) -> None:
        sequence.state = RUNNING
        self.running[sequence] = None

    def _next_step(self, now: float) -> Optional[float]:
        when = None
        if self.running:
            when = now
            if self.interval > 0:
                when = (self._last or 0.0) + self.interval
                if when < now:
                    when = math.ceil(now / self.interval) * self.interval
        if self.waiting and (when is None or self.waiting[0][0] < when):
            when = self.waiting[0][0]
        return when

    def _schedule(self) -> None:
        when = self._next_step(self.loop.time())
        if when is None:
            return
        if self._handle is not None:
            if self._when <= when:
                return
            self._handle.cancel()
        self._when = when
        self._handle = self.loop.call_at(when, self._step)

    def _step(self) -> None:
        self._handle = None
        boundary = max(self._when, self.loop.time())
        self._last = self._when
        waiting = self.waiting
        while waiting and waiting[0][0] <= boundary:
            sequence = heapq.heappop(waiting)[2]
            if sequence.state == WAITING:
                self._run(sequence)
        for sequence in list(self.running):
            if sequence.state == RUNNING:
                self._produce(sequence)
        self._schedule()

    def _produce(self, sequence: _Sequence) -> None:
        stream = sequence.stream
        if sequence.sent == sequence.fire_at:
            plan = sequence.plan
            sequence.fire_at = -1
            then = faults.inject(plan.fault, stream.request)
            if then == faults.HANG:
                self.discard(sequence)
                return
            if then == faults.FAIL:
                self.discard(sequence)
                stream.fail(plan.code, faults.error_message(stream.request))
                return
        if sequence.sent >= sequence.length:
            self.discard(sequence)
            stream.finish(sequence.finish_reason)
            return
        token = next(sequence.tokens)
        stream.push(f"{time.monotonic_ns()} " if self.stamp else VOCABULARY[token], (token,))
        sequence.sent += 1
        if sequence.sent == sequence.length and sequence.fire_at != sequence.length:
            self.discard(sequence)
            stream.finish(sequence.finish_reason)
        elif not stream.has_credit:
            del self.running[sequence]
            sequence.state = PAUSED
