"""A minimal sidecar for tests: speaks the protocol over a real socket.

Every frame it receives is validated as a `to_sidecar` message, so each
test also checks that the worker only ever writes well-formed frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Dict, List, Optional, Tuple, Union

from cy_worker import Worker
from cy_worker.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    TO_SIDECAR,
    Failure,
    decode_message,
    encode_frame,
    read_frame,
)

Message = Dict[str, Any]

# Every test body runs under this bound, so a hang fails instead of stalling.
TEST_TIMEOUT_S = 10.0


def run(coro: Awaitable[Any], timeout_s: float = TEST_TIMEOUT_S) -> Any:
    """Run one async test body on a fresh event loop, with a time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@contextlib.asynccontextmanager
async def serving(generate: Any, path: str, **options: Any) -> AsyncIterator[Worker]:
    """Run a started Worker on `path` for the body of an `async with`."""
    options.setdefault("model_id", "m")
    options.setdefault("check_frames", True)
    worker = Worker(generate, socket_path=path, **options)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.close()


class FakeSidecar:
    """One connection to a worker, driven step by step by a test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame_bytes = DEFAULT_MAX_FRAME_BYTES

    @classmethod
    async def connect(cls, path: str) -> "FakeSidecar":
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    @classmethod
    async def open(cls, path: str, **hello: Any) -> "FakeSidecar":
        """Connect and complete the handshake."""
        sidecar = await cls.connect(path)
        welcome = await sidecar.handshake(**hello)
        assert welcome["type"] == "welcome", welcome
        return sidecar

    def send(self, message: Message) -> None:
        self.writer.write(encode_frame(message))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def handshake(self, versions: Optional[List[int]] = None, **extra: Any) -> Message:
        hello = {
            "type": "hello",
            "versions": versions if versions is not None else [1],
            "sidecar": "fake-sidecar/0",
            "max_frame_bytes": self.max_frame_bytes,
            "heartbeat_interval_ms": 5000,
        }
        hello.update(extra)
        self.max_frame_bytes = hello["max_frame_bytes"]
        self.send(hello)
        return await self.recv()

    def generate(
        self,
        request_id: str,
        prompt: Optional[str] = "hi",
        max_tokens: int = 0,
        credit: int = 32,
        **extra: Any,
    ) -> None:
        """Start a generation; `extra` adds or replaces members (prompt=None drops it)."""
        message: Message = {
            "type": "generate",
            "id": request_id,
            "session_id": "s",
            "model_id": "",
            "sampling": {"max_tokens": max_tokens},
            "credit": credit,
        }
        if prompt is not None:
            message["prompt"] = prompt
        message.update(extra)
        self.send(message)

    async def recv_frame(self, timeout_s: float = 2.0) -> Union[bytes, Failure]:
        """The next frame's payload, or the failure its header shows."""
        return await asyncio.wait_for(read_frame(self.reader, self.max_frame_bytes), timeout_s)

    async def recv(self, timeout_s: float = 2.0) -> Message:
        """The next message; fails the test if it is not well-formed."""
        payload = await self.recv_frame(timeout_s)
        assert not isinstance(payload, Failure), payload
        message = decode_message(payload, TO_SIDECAR)
        assert not isinstance(message, Failure), f"{message}: {payload!r}"
        return message

    async def until_end(
        self, request_id: str, timeout_s: float = 2.0
    ) -> Tuple[List[Message], Message]:
        """Chunks for `request_id` up to its `done` or `error` (others skipped)."""
        chunks: List[Message] = []
        while True:
            message = await self.recv(timeout_s)
            if message.get("id") != request_id:
                continue
            if message["type"] == "chunk":
                chunks.append(message)
            else:
                return chunks, message

    async def until_type(self, kind: str, timeout_s: float = 2.0) -> Tuple[List[Message], Message]:
        """The messages before the next one of type `kind`, and that one."""
        skipped: List[Message] = []
        while True:
            message = await self.recv(timeout_s)
            if message["type"] == kind:
                return skipped, message
            skipped.append(message)

    async def until_end_of_connection(self, timeout_s: float = 2.0) -> Message:
        """Skip to the connection-level `error` (one without id), then expect close."""
        while True:
            message = await self.recv(timeout_s)
            if message["type"] == "error" and "id" not in message:
                await self.expect_closed(timeout_s)
                return message

    async def expect_closed(self, timeout_s: float = 2.0) -> None:
        """Read to end of stream, failing on anything but a clean close."""
        data = await asyncio.wait_for(self.reader.read(), timeout_s)
        assert data == b"", f"unexpected bytes before close: {data[:200]!r}"

    async def expect_silence(self, seconds: float) -> None:
        """Assert that nothing arrives for `seconds`."""
        try:
            payload = await asyncio.wait_for(read_frame(self.reader, self.max_frame_bytes), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected silence, got {payload!r}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def text_of(chunks: List[Message]) -> str:
    return "".join(c["text"] for c in chunks)


def ids_of(chunks: List[Message]) -> List[int]:
    return [t for c in chunks for t in c["token_ids"]]
