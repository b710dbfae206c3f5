"""One sidecar connection: handshake, dispatch, and the frames it writes.

Frames are handled in `data_received`, straight from the event loop, so a
`ping` is answered as soon as the loop runs, however busy the generators
are. A protocol error ends this connection only: an `error` frame without
`id` says why, then the socket closes and its generations are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

from .engine import Stream
from .generation import Generation
from .protocol import (
    CHUNKS_HEAD,
    CHUNKS_OVERHEAD,
    CHUNKS_TAIL,
    MIN_MAX_FRAME_BYTES,
    TO_SIDECAR,
    TO_WORKER,
    Failure,
    FrameDecoder,
    check_frame,
    chunk_frame,
    decode_message,
    encode_frame,
    encode_json,
    pack_length,
)
from .request import Request

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("cy_worker")

# Error messages longer than this are cut: a gRPC status message is read by
# people, and a longer one (a whole traceback) belongs in the worker's log.
_MAX_ERROR_CHARS = 4096


class Connection(asyncio.Protocol):
    """The worker's end of one accepted Unix socket connection."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.transport: Optional[asyncio.Transport] = None
        self.generations: Dict[str, Union[Generation, Stream]] = {}
        self.welcomed = False
        self.closing = False
        self.write_paused = False
        # Until `hello` says otherwise, write only what any peer accepts.
        self.peer_max_frame_bytes = MIN_MAX_FRAME_BYTES
        self.write: Callable[[bytes], None] = self._write_nowhere
        # Frames written in one turn of the event loop, sent together at
        # its end: one system call for the tokens of every generation that
        # produced one in this turn, instead of one per token.
        self._pending: List[bytes] = []
        # Chunks written since the last frame, as JSON objects without
        # `type`: on protocol version 2 they leave as `chunks` frames.
        self._items: List[bytes] = []
        self._flush_scheduled = False
        # The protocol version agreed in the handshake.
        self.version = 1
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._decoder = FrameDecoder(worker.max_frame_bytes)
        self._writable: Optional[asyncio.Future] = None
        self._handlers = {
            "generate": self._on_generate,
            "credit": self._on_credit,
            "credits": self._on_credits,
            "cancel": self._on_cancel,
            "ping": self._on_ping,
            "hello": self._on_hello,
            "error": self._on_error,
        }

    # asyncio.Protocol callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self.write = self._write_checked if self.worker.check_frames else self._write_coalesced
        self.worker._connection_opened(self)

    def data_received(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            if self.closing:
                return
            if type(payload) is Failure:
                self.fail(payload)
                return
            message = decode_message(payload, TO_WORKER)
            if type(message) is Failure:
                self.fail(message)
                return
            self._dispatch(message)

    def eof_received(self) -> Optional[bool]:
        # Nothing more will arrive: close our side too.
        return None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closing = True
        self._cancel_all("connection_closed")
        self._release_writers()
        self.worker._connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release_writers()

    # Writing

    async def wait_writable(self) -> None:
        """Wait until the transport's buffer drains below its low-water mark."""
        if not self.write_paused or self.closing:
            return
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()
        # One future for every waiting generation (StreamWriter.drain allows
        # only one waiter on Python 3.9); shielded so that cancelling one
        # waiter does not cancel the others' wait.
        await asyncio.shield(self._writable)

    def _release_writers(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, message: dict) -> None:
        """Write one message, unless the connection is closing."""
        if not self.closing:
            self.write(encode_frame(message))

    def send_done(self, request_id: str, finish_reason: str, usage: dict) -> None:
        """End a generation with `done`."""
        self.send(
            {"type": "done", "id": request_id, "finish_reason": finish_reason[:128], "usage": usage}
        )

    def send_error(self, code: str, message: str, request_id: Optional[str] = None) -> None:
        """Send an `error` for a generation, or for the connection if no id.

        A long message is cut (marked with "...") to fit the peer's limit.
        """
        frame: Dict[str, Any] = {"type": "error"}
        if request_id is not None:
            frame["id"] = request_id
        frame["code"] = code[:64]
        frame["message"] = message
        if len(message) > _MAX_ERROR_CHARS:
            frame["message"] = message[:_MAX_ERROR_CHARS] + "..."
        data = encode_frame(frame)
        while len(data) - 4 > self.peer_max_frame_bytes and len(frame["message"]) > 3:
            frame["message"] = frame["message"][: len(frame["message"]) // 2] + "..."
            data = encode_frame(frame)
        if not self.closing:
            self.write(data)

    def send_status(self, status: dict) -> None:
        """Forward a status announcement, once the handshake is done."""
        if self.welcomed:
            self.send(status)

    def fail(self, failure: Failure) -> None:
        """Report a protocol error from the sidecar, then close."""
        logger.warning("protocol error from sidecar: %s", failure)
        self.send_error("protocol", f"protocol error ({failure})")
        self.close()

    def close(self) -> None:
        """Close the connection and cancel every generation started on it."""
        if self.closing:
            return
        self.closing = True
        self._cancel_all("connection_closed")
        if self.transport is not None:
            # What the cancellations and a failure wrote goes out first.
            self.flush()
            self.transport.close()

    def generation_ended(self, generation: Union[Generation, Stream]) -> None:
        """Free the slot of a generation whose end has been reported."""
        if self.generations.get(generation.req.id) is generation:
            del self.generations[generation.req.id]
        self.worker._generation_ended()

    def _cancel_all(self, reason: str) -> None:
        for generation in list(self.generations.values()):
            generation.cancel(reason)

    def _write_nowhere(self, data: bytes) -> None:
        raise RuntimeError("Cannot write: the connection is not open")

    def _write_checked(self, data: bytes) -> None:
        self._check(data)
        self._write_coalesced(data)

    def _check(self, data: bytes) -> None:
        result = check_frame(data, TO_SIDECAR, self.peer_max_frame_bytes)
        if type(result) is Failure:
            logger.error("self-check: worker sent an invalid frame (%s): %.200r", result, data)

    def _write_coalesced(self, data: bytes) -> None:
        if self._items:
            self._close_items()
        elif not self._flush_scheduled:
            self._schedule_flush()
        self._pending.append(data)

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        self._loop.call_soon(self.flush)  # type: ignore[union-attr]

    def write_chunk(self, item: bytes) -> None:
        """Write one chunk, given as its JSON object without `type`.

        On protocol version 2 the chunks written in one turn of the event
        loop, up to the next other frame, leave together in `chunks`
        frames of at most the peer's frame limit; a lone one, and every one
        on version 1, as a `chunk` frame. The caller has checked that the
        chunk fits one `chunk` frame.
        """
        if self.version < 2:
            self.write(chunk_frame(item))
            return
        if not self._flush_scheduled:
            self._schedule_flush()
        self._items.append(item)

    def _close_items(self) -> None:
        items = self._items
        self._items = []
        check = self.worker.check_frames
        limit = self.peer_max_frame_bytes
        count = len(items)
        start = 0
        while start < count:
            size = CHUNKS_OVERHEAD + len(items[start])
            end = start + 1
            while end < count and size + 1 + len(items[end]) <= limit:
                size += 1 + len(items[end])
                end += 1
            if end - start == 1:
                frame = chunk_frame(items[start])
            else:
                payload = CHUNKS_HEAD + b",".join(items[start:end]) + CHUNKS_TAIL
                frame = pack_length(len(payload)) + payload
            if check:
                self._check(frame)
            self._pending.append(frame)
            start = end

    def flush(self) -> None:
        """Send the frames written in this turn of the event loop now."""
        self._flush_scheduled = False
        if self._items:
            self._close_items()
        pending = self._pending
        if not pending:
            return
        self._pending = []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    # Messages from the sidecar

    def _dispatch(self, message: dict) -> None:
        kind = message["type"]
        if not self.welcomed and kind not in ("hello", "error"):
            self.fail(Failure("bad_field", f"{kind!r} before the handshake"))
            return
        self._handlers[kind](message)

    def _on_hello(self, message: dict) -> None:
        if self.welcomed:
            self.fail(Failure("bad_field", "a second hello"))
            return
        offered = [int(v) for v in message["versions"]]
        supported = self.worker.protocol_versions
        common = [v for v in offered if v in supported]
        if not common:
            logger.warning("no common protocol version: sidecar offers %s", offered)
            self.send_error(
                "unsupported_version",
                f"no common protocol version: sidecar offers {offered}, "
                f"worker supports {list(supported)}",
            )
            self.close()
            return
        self.peer_max_frame_bytes = int(message["max_frame_bytes"])
        self.welcomed = True
        self.version = max(common)
        self.send(self.worker._welcome(self.version))
        logger.info("sidecar connected sidecar=%s", message.get("sidecar", "?"))

    def _on_generate(self, message: dict) -> None:
        request_id = message["id"]
        if request_id in self.generations:
            self.fail(Failure("bad_field", f"generate: id {request_id!r} is already in flight"))
            return
        worker = self.worker
        refusal = worker._refusal(message, len(self.generations))
        if refusal is not None:
            self.send_error(refusal[0], refusal[1], request_id)
            return

        req = Request.from_message(message)
        credit = int(message["credit"])
        generation: Union[Generation, Stream]
        if worker.engine is not None:
            generation = Stream(self, req, credit, worker.engine)
        else:
            generation = Generation(self, req, credit)
        self.generations[request_id] = generation
        worker._generation_started()
        generation.start()
        logger.debug("generation started id=%s session=%s", request_id, message["session_id"])

    def _on_credit(self, message: dict) -> None:
        generation = self.generations.get(message["id"])
        if generation is not None:
            generation.add_credit(int(message["chunks"]))

    def _on_credits(self, message: dict) -> None:
        if self.version < 2:
            self.fail(Failure("bad_field", f"'credits' on protocol version {self.version}"))
            return
        generations = self.generations
        for item in message["items"]:
            generation = generations.get(item["id"])
            if generation is not None:
                generation.add_credit(int(item["chunks"]))

    def _on_cancel(self, message: dict) -> None:
        generation = self.generations.get(message["id"])
        if generation is not None:
            generation.cancel(message.get("reason", "client_cancelled"))

    def _on_ping(self, message: dict) -> None:
        payload = encode_json({"type": "pong", "seq": message["seq"]}).encode()
        self.write(pack_length(len(payload)) + payload)

    def _on_error(self, message: dict) -> None:
        # The sidecar found something wrong in what this worker sent and is
        # closing the connection: a bug to look into, not a crash of either
        # side. Its generations are cancelled; other connections go on.
        logger.warning(
            "sidecar is closing the connection: it reports a protocol error "
            "in what this worker sent: code=%s message=%s; cancelling %d generation(s)",
            message["code"],
            message["message"],
            len(self.generations),
        )
        self.close()
