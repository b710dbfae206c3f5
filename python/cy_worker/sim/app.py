"""The simulator's generator, reload cycle and signal handling."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from typing import AsyncIterator, Optional

from .. import __version__
from ..request import Request, Token, WorkerError
from ..worker import Worker
from . import faults
from .directive import Plan
from .engine import SimEngine
from .text import VOCABULARY, count_prompt_tokens, request_text, token_stream

logger = logging.getLogger("cy_worker.sim")


def next_model_id(model_id: str) -> str:
    """The model a reload loads: sim-1 -> sim-2; other names gain -2."""
    match = re.match(r"^(.*?)(\d+)$", model_id)
    if match is None:
        return model_id + "-2"
    return match.group(1) + str(int(match.group(2)) + 1)


class Simulator:
    """A fake model behind a real `Worker`, configured by the command line."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.defaults = Plan(
            tokens=options.tokens,
            ttft_ms=options.ttft_ms,
            itl_ms=options.itl_ms,
            fault=None if options.fault == "none" else options.fault,
            after=options.fault_after_tokens,
            code=options.fault_code,
            schedule=options.schedule,
        )
        if options.api == "engine":
            entry = {"engine": SimEngine(self.defaults, options.stamp)}
        else:
            entry = {"generate": self.generate}
        self.worker = Worker(
            **entry,
            model_id=options.model_id,
            max_concurrency=options.max_concurrency,
            socket_path=options.socket,
            max_frame_bytes=options.max_frame_bytes,
            name=f"cy-worker-sim/{__version__}",
            check_frames=options.self_check,
            protocol_versions=options.protocol_versions,
        )
        self._reload_task: Optional[asyncio.Task] = None

    async def generate(self, req: Request) -> AsyncIterator[Token]:
        """Stream the simulated answer to `req`, faults included."""
        try:
            plan, text = self.defaults.for_prompt(request_text(req))
        except ValueError as exc:
            raise WorkerError("invalid_argument", f"sim directive: {exc}") from None
        req.prompt_tokens = count_prompt_tokens(text)
        if plan.fault == "lie_usage":
            faults.lie_about_usage(req)
        length, finish_reason = plan.length(req.sampling.max_tokens)
        fire_at = min(plan.after, length) if plan.fault in faults.POSITIONAL else -1

        stream = token_stream(text, req.sampling.seed or 0)
        stamp = self.options.stamp
        loop = asyncio.get_running_loop()
        # Tokens are due on a fixed schedule, as a model decoding steadily
        # would produce them, however long each send took.
        first_due, interval = plan.clock(loop.time())
        try:
            for i in range(length):
                if i == fire_at:
                    await faults.fire(plan.fault, req, plan.code)
                delay = first_due + i * interval - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
                token = next(stream)
                text_out = f"{time.monotonic_ns()} " if stamp else VOCABULARY[token]
                yield Token(text_out, (token,))
            if fire_at == length:
                await faults.fire(plan.fault, req, plan.code)
            req.finish_reason = finish_reason
        except (asyncio.CancelledError, GeneratorExit):
            if plan.fault == "slow_cancel":
                await asyncio.sleep(faults.SLOW_CANCEL_S)
            raise

    async def run(self) -> int:
        """Serve until drained (SIGTERM) or reloaded by exiting; return the exit status."""
        worker = self.worker
        await worker.start()
        worker.handle_signals(self.options.drain_timeout_secs)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._on_reload_signal)
        # Printed last: whoever waits for this line may signal us at once.
        print(
            f"cy_worker.sim listening on {worker.socket_path} model={worker.model_id} "
            f"max_concurrency={worker.max_concurrency}",
            file=sys.stderr,
            flush=True,
        )
        await worker.serve()
        return 0

    def _on_reload_signal(self) -> None:
        if self._reload_task is not None and not self._reload_task.done():
            logger.info("reload already in progress; SIGUSR1 ignored")
            return
        if self.worker.state != "ready":
            logger.info("worker is %s; SIGUSR1 ignored", self.worker.state)
            return
        self._reload_task = asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        options = self.options
        worker = self.worker
        target = next_model_id(worker.model_id)
        worker.announce_reloading(eta_s=options.reload_eta_secs, message=f"loading {target}")
        await worker.wait_idle()

        if options.reload_mode == "exit":
            logger.info("exiting for a restart with the next model (%s)", target)
            await worker.close()
            return
        seconds = (
            options.reload_secs if options.reload_secs is not None else options.reload_eta_secs
        )
        await asyncio.sleep(seconds)
        # A drain that began meanwhile wins: it is for good.
        if worker.state == "reloading":
            worker.announce_ready(model_id=target)
