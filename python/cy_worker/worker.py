"""`Worker`: serve an async generator function to cy-sidecar.

Listens on a Unix socket, serves every sidecar connection independently,
and keeps the state that all connections share: the announced status and
the number of generations in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, AsyncIterator, Callable, Iterable, Optional, Sequence, Set, Tuple

from . import __version__
from .connection import Connection
from .engine import Stream
from .protocol import DEFAULT_MAX_FRAME_BYTES, MIN_MAX_FRAME_BYTES, SUPPORTED_VERSIONS
from .request import Request
from .socket_file import file_id, prepare_socket_path, remove_if_same, socket_path_problem
from .status import Status, check_concurrency, check_model_id

logger = logging.getLogger("cy_worker")

DEFAULT_SOCKET_PATH = "/tmp/cy_worker.sock"

# How long close() lets cancelled generators run their cleanup before it
# cancels them again (a generator that still ignores cancellation is left to
# the event loop's shutdown), and then how long it lets connections flush.
_CLOSE_GRACE_S = 2.0

GenerateFn = Callable[[Request], AsyncIterator[Any]]


class Worker:
    """Serves `generate(request)`, an async generator function, or an engine, to the sidecar.

    Example::

        async def generate(req):
            req.prompt_tokens = 3
            yield Token("Hel", [101])
            yield "lo", [102]

        Worker(generate, model_id="m").run()

    `generate` must not block the event loop (run blocking model code in an
    executor): heartbeats are answered from the loop. A batching engine is
    served with `Worker(engine=...)` instead: see `cy_worker.engine`.
    """

    def __init__(
        self,
        generate: Optional[GenerateFn] = None,
        *,
        engine: Any = None,
        model_id: str,
        max_concurrency: int = 64,
        socket_path: str = DEFAULT_SOCKET_PATH,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        socket_mode: int = 0o660,
        name: str = f"cy-worker/{__version__}",
        check_frames: bool = False,
        protocol_versions: Sequence[int] = SUPPORTED_VERSIONS,
    ) -> None:
        """Check every option, then fail once with all problems listed.

        `max_concurrency` bounds generations per connection. `socket_mode` is
        applied to the socket file (0o660: the sidecar must share our user or
        group). `check_frames` validates every frame written against the
        protocol and logs violations (slow; for tests and simulators).
        `engine` serves a batching engine instead of `generate`: see
        `cy_worker.engine` (exactly one of the two is given).
        `protocol_versions` are the versions the worker may choose from the
        sidecar's `hello`, by default every one the package speaks; `(1,)`
        pins version 1 (one `chunk` frame per chunk).
        """
        problems = []
        if (generate is None) == (engine is None):
            problems.append("give exactly one of generate (an async generator function) and engine")
        elif generate is not None and not callable(generate):
            problems.append(f"generate must be callable, got {generate!r}")
        elif engine is not None:
            missing = [m for m in ("submit", "cancel") if not callable(getattr(engine, m, None))]
            if missing:
                problems.append(
                    f"engine must have callable {' and '.join(missing)}, got {engine!r:.80}"
                )
        for check, value in ((check_model_id, model_id), (check_concurrency, max_concurrency)):
            try:
                check(value)
            except ValueError as exc:
                problems.append(str(exc))
        path_problem = socket_path_problem(socket_path)
        if path_problem is not None:
            problems.append(path_problem)
        if type(max_frame_bytes) is not int or max_frame_bytes < MIN_MAX_FRAME_BYTES:
            problems.append(
                f"max_frame_bytes must be an integer >= {MIN_MAX_FRAME_BYTES}, "
                f"got {max_frame_bytes!r}"
            )
        versions = tuple(protocol_versions) if isinstance(protocol_versions, (tuple, list)) else ()
        if not versions or any(type(v) is not int or v not in SUPPORTED_VERSIONS for v in versions):
            problems.append(
                f"protocol_versions must be a non-empty subset of {list(SUPPORTED_VERSIONS)}, "
                f"got {protocol_versions!r}"
            )
        if problems:
            raise ValueError("Cannot create Worker: " + "; ".join(problems))

        self._status = Status(model_id, max_concurrency)
        self.generate = generate
        self.engine = engine
        self.socket_path = socket_path
        self.max_frame_bytes = max_frame_bytes
        self.socket_mode = socket_mode
        self.name = name
        self.check_frames = check_frames
        self.protocol_versions = versions
        self._connections: Set[Connection] = set()
        self._in_flight = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._socket_id: Optional[Tuple[int, int]] = None
        self._idle: Optional[asyncio.Event] = None
        self._closed: Optional[asyncio.Future] = None
        self._closing = False
        self._drain_task: Optional[asyncio.Task] = None
        self._close_task: Optional[asyncio.Task] = None

    # What the worker announced, and what it is doing

    @property
    def state(self) -> str:
        """`ready`, `reloading` or `draining`."""
        return self._status.state

    @property
    def model_id(self) -> str:
        """The model announced last."""
        return self._status.model_id

    @property
    def max_concurrency(self) -> int:
        """Generations accepted at once on one connection."""
        return self._status.max_concurrency

    @property
    def in_flight(self) -> int:
        """Generations running now, on every connection."""
        return self._in_flight

    # Life cycle

    async def start(self) -> None:
        """Listen on `socket_path`; return once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("Cannot start: the worker is already started")
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = self._loop.create_future()

        prepare_socket_path(self.socket_path)
        self._server = await self._loop.create_unix_server(
            lambda: Connection(self), path=self.socket_path
        )
        os.chmod(self.socket_path, self.socket_mode)
        self._socket_id = file_id(self.socket_path)
        logger.info(
            "listening path=%s model=%s max_concurrency=%d",
            self.socket_path,
            self.model_id,
            self.max_concurrency,
        )

    async def serve(self) -> None:
        """Start if needed, then return once the worker is closed."""
        if self._server is None:
            await self.start()
        assert self._closed is not None
        await asyncio.shield(self._closed)

    def run(self, drain_timeout_s: float = 30.0) -> None:
        """Serve until SIGTERM or SIGINT, then drain (see `drain_and_close`)."""

        async def main() -> None:
            await self.start()
            self.handle_signals(drain_timeout_s)
            await self.serve()

        asyncio.run(main())

    def handle_signals(self, drain_timeout_s: float = 30.0) -> None:
        """Make SIGTERM and SIGINT start `drain_and_close(drain_timeout_s)`.

        A second signal closes at once, cancelling what is still in flight.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._begin_drain, drain_timeout_s, signum)

    def _begin_drain(self, timeout_s: float, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._drain_task is None:
            logger.info("draining on signal %s", name)
            self._drain_task = asyncio.ensure_future(self.drain_and_close(timeout_s))
        elif self._close_task is None:
            # A second signal means "now": whoever sent it will not wait.
            logger.info("closing now on a second signal %s", name)
            self._close_task = asyncio.ensure_future(self.close())

    async def wait_idle(self) -> None:
        """Wait until no generation is in flight."""
        assert self._idle is not None, "the worker is not started"
        while self._in_flight:
            await self._idle.wait()

    async def drain_and_close(self, timeout_s: float = 30.0) -> None:
        """Announce `draining`, let in-flight generations finish, then close.

        Generations still running after `timeout_s` are cancelled.
        """
        self.announce_draining()
        try:
            await asyncio.wait_for(self.wait_idle(), timeout_s)
        except asyncio.TimeoutError:
            logger.warning("drain timed out; cancelling %d generations", self._in_flight)
        await self.close()

    async def close(self) -> None:
        """Stop listening, close every connection, cancel every generation."""
        if self._server is None or self._closed is None:
            return
        if self._closing:
            await asyncio.shield(self._closed)
            return
        self._closing = True
        self._server.close()
        tasks = [g.task for c in self._connections for g in c.generations.values() if g.task]
        for connection in list(self._connections):
            connection.close()

        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
        # A connection is gone once its last frames (a final `done`, say)
        # have left; returning earlier could let the process exit with them.
        deadline = self._loop.time() + _CLOSE_GRACE_S
        while self._connections and self._loop.time() < deadline:
            await asyncio.sleep(0.005)
        remove_if_same(self.socket_path, self._socket_id)
        self._closed.set_result(None)
        logger.info("closed path=%s", self.socket_path)

    # Announcements: broadcast now, and remembered for the next welcome

    def announce_reloading(
        self, eta_s: Optional[float] = None, message: Optional[str] = None
    ) -> None:
        """Announce that a model is loading; `eta_s` estimates how long."""
        self._announce(lambda: self._status.to_reloading(eta_s, message))

    def announce_ready(
        self,
        model_id: Optional[str] = None,
        max_concurrency: Optional[int] = None,
        message: Optional[str] = None,
    ) -> None:
        """Announce readiness, optionally with a new model id or limit."""
        self._announce(lambda: self._status.to_ready(model_id, max_concurrency, message))

    def announce_draining(self, message: Optional[str] = None) -> None:
        """Announce that the worker is going away after what it has in flight."""
        self._announce(lambda: self._status.to_draining(message))

    def _announce(self, change: Callable[[], dict]) -> None:
        # Callable from any thread (a model loader, say): the change and the
        # broadcast run on the event loop, in order.
        loop = self._loop
        if loop is None or _running_loop() is loop or not loop.is_running():
            self._broadcast(change())
        else:
            loop.call_soon_threadsafe(lambda: self._broadcast(change()))

    def _broadcast(self, frame: dict) -> None:
        logger.info("state=%s model=%s", self._status.state, self._status.model_id)
        for connection in self._connections:
            connection.send_status(frame)

    # An engine's thread

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` on the worker's event loop, from any thread."""
        loop, on_loop = self._engine_loop("schedule")
        if on_loop:
            loop.call_soon(callback, *args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def push_step(self, outputs: Iterable[Sequence[Any]]) -> None:
        """Deliver one decode step's outputs, from the loop or any other thread.

        Each output is `(stream, text, token_ids)` or `(stream, text,
        token_ids, finish_reason)`; a finish reason other than None also
        finishes that stream. From another thread the whole step crosses to
        the event loop at once.
        """
        loop, on_loop = self._engine_loop("push")
        if on_loop:
            _push_step(outputs)
        else:
            loop.call_soon_threadsafe(_push_step, list(outputs))

    def _engine_loop(self, what: str) -> Tuple[asyncio.AbstractEventLoop, bool]:
        # The worker's loop, and whether the caller runs on it.
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"Cannot {what}: the worker is not started")
        return loop, _running_loop() is loop

    # Called by connections

    def _welcome(self, version: int) -> dict:
        return self._status.welcome(version, self.name, self.max_frame_bytes)

    def _refusal(self, message: dict, in_flight: int) -> Optional[Tuple[str, str]]:
        return self._status.refusal(message["model_id"], in_flight)

    def _connection_opened(self, connection: Connection) -> None:
        self._connections.add(connection)

    def _connection_closed(self, connection: Connection) -> None:
        self._connections.discard(connection)

    def _generation_started(self) -> None:
        self._in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def _generation_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()


def _push_step(outputs: Iterable[Sequence[Any]]) -> None:
    finished = []
    for output in outputs:
        try:
            stream, text, token_ids = output[0], output[1], output[2]
            reason = output[3] if len(output) > 3 else None
            push = stream.push
        except (TypeError, IndexError, AttributeError):
            _bad_output(output)
            continue
        push(text, token_ids)
        if reason is not None:
            finished.append((stream, reason))
    # The step's chunks first, so that they share frames, then its ends.
    for stream, reason in finished:
        stream.finish(reason)


def _bad_output(output: Any) -> None:
    # One malformed output costs its own generation, not the whole step.
    logger.error(
        "push_step: expected (stream, text, token_ids[, finish_reason]), got %.200r", output
    )
    stream = output[0] if isinstance(output, (tuple, list)) and output else None
    if isinstance(stream, Stream):
        stream.fail("internal", "the engine pushed a malformed step output")


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
