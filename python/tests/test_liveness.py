"""Heartbeats, failing generators and overload: the worker keeps serving."""

from __future__ import annotations

import asyncio

from fake_sidecar import FakeSidecar, run, serving

from cy_worker import WorkerError


def test_ping_is_answered_while_a_generator_is_busy(sock_path):
    async def body():
        busy = asyncio.Event()

        async def generate(req):
            busy.set()
            await asyncio.sleep(30)
            yield "never", [1]

        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a")
            await busy.wait()
            for seq in (1, 2, 3):
                sidecar.send({"type": "ping", "seq": seq})
                assert await sidecar.recv(timeout_s=0.5) == {"type": "pong", "seq": seq}
            await sidecar.close()

    run(body())


def test_a_worker_error_keeps_its_code_and_message(sock_path):
    async def generate(req):
        yield "a", [1]
        raise WorkerError("invalid_argument", "prompt is too long")

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a")
            chunks, end = await sidecar.until_end("a")
            assert len(chunks) == 1
            assert end == {
                "type": "error",
                "id": "a",
                "code": "invalid_argument",
                "message": "prompt is too long",
            }
            await sidecar.close()

    run(body())


def test_a_crashing_generator_becomes_an_internal_error_and_the_worker_goes_on(sock_path):
    async def generate(req):
        if req.prompt == "crash":
            raise KeyError("weights")
        if req.prompt == "long":
            raise RuntimeError("x" * 10_000)
        yield "fine", [1]

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", prompt="crash")
            _, end = await sidecar.until_end("a")
            assert end["type"] == "error" and end["code"] == "internal"
            assert "weights" in end["message"]
            sidecar.generate("b", prompt="long")
            _, end = await sidecar.until_end("b")
            assert end["code"] == "internal" and len(end["message"]) == 4096 + 3
            sidecar.generate("c", prompt="ok")
            chunks, end = await sidecar.until_end("c")
            assert end["type"] == "done" and chunks[0]["text"] == "fine"
            await sidecar.close()

    run(body())


def test_a_generate_over_max_concurrency_is_refused_as_overloaded(sock_path):
    async def body():
        release = asyncio.Event()

        async def generate(req):
            await release.wait()
            yield "x", [1]

        async with serving(generate, sock_path, max_concurrency=2):
            sidecar = await FakeSidecar.open(sock_path)
            for request_id in ("a", "b", "c"):
                sidecar.generate(request_id)
            _, end = await sidecar.until_end("c")
            assert end["type"] == "error" and end["code"] == "overloaded"
            release.set()
            for request_id in ("a", "b"):
                _, end = await sidecar.until_end(request_id)
                assert end["type"] == "done"
            # Slots are free again.
            sidecar.generate("d")
            _, end = await sidecar.until_end("d")
            assert end["type"] == "done"
            await sidecar.close()

    run(body())
