"""Bad frames from a sidecar end that connection only."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fake_sidecar import FakeSidecar, run, serving

from cy_worker.protocol import pack_length


async def tokens(req):
    for i in range(3):
        await asyncio.sleep(0.001)
        yield f"t{i}", [i]


def framed(payload: bytes) -> bytes:
    return pack_length(len(payload)) + payload


BAD_FRAMES = {
    "zero_length": pack_length(0),
    "oversized": pack_length(5000),
    "bad_utf8": framed(b"\xff\xfe\xfd"),
    "bad_json": framed(b'{"type":"'),
    "not_object": framed(b"[1,2]"),
    "missing_type": framed(b'{"seq":1}'),
    "unknown_type": framed(b'{"type":"teleport"}'),
    "bad_field": framed(b'{"type":"ping","seq":"x"}'),
}


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_a_bad_frame_gets_an_error_without_id_and_closes_only_that_connection(sock_path, kind):
    async def body():
        async with serving(tokens, sock_path, max_frame_bytes=4096):
            bad = await FakeSidecar.open(sock_path)
            good = await FakeSidecar.open(sock_path)
            bad.generate("a", credit=1)
            await bad.recv()

            bad.send_raw(BAD_FRAMES[kind])
            error = await bad.until_end_of_connection()
            assert error["type"] == "error" and "id" not in error
            assert error["code"] == "protocol"
            assert kind in error["message"], error

            good.generate("b")
            chunks, done = await good.until_end("b")
            assert len(chunks) == 3 and done["type"] == "done"
            await good.close()

    run(body())


def test_a_duplicate_id_in_flight_is_a_protocol_error(sock_path):
    async def body():
        async with serving(tokens, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=1)
            sidecar.generate("a", credit=1)
            error = await sidecar.until_end_of_connection()
            assert "already in flight" in error["message"]

    run(body())


def test_an_error_from_the_sidecar_closes_the_connection(sock_path):
    async def body():
        async with serving(tokens, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.send({"type": "error", "code": "protocol", "message": "chunk without credit"})
            await sidecar.expect_closed()
            assert worker.in_flight == 0

    run(body())


async def endless_or_short(req):
    count = 3 if req.prompt == "short" else 1 << 30
    for i in range(count):
        await asyncio.sleep(0.001)
        yield f"t{i}", [i]


def test_an_error_from_the_sidecar_is_logged_as_a_warning_not_a_crash(sock_path, caplog):
    reason = 'worker sent a frame for "x", which is not in flight'

    async def body():
        async with serving(endless_or_short, sock_path) as worker:
            told = await FakeSidecar.open(sock_path)
            other = await FakeSidecar.open(sock_path)
            told.generate("a", prompt="endless", credit=1)
            await told.recv()
            assert worker.in_flight == 1

            with caplog.at_level(logging.DEBUG, logger="cy_worker"):
                told.send({"type": "error", "code": "protocol", "message": reason})
                await told.expect_closed()
                for _ in range(200):
                    if worker.in_flight == 0:
                        break
                    await asyncio.sleep(0.005)
            assert worker.in_flight == 0

            # Only that connection ended: the worker still serves the others.
            other.generate("b", prompt="short")
            chunks, done = await other.until_end("b")
            assert len(chunks) == 3 and done["type"] == "done"
            await other.close()

    run(body())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    text = warnings[0].getMessage()
    assert "sidecar is closing the connection" in text
    assert "protocol error" in text and "code=protocol" in text
    assert reason in text and "cancelling 1 generation" in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
