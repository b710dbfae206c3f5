"""Status announcements: broadcast to every connection, kept for the next."""

from __future__ import annotations

import asyncio
import threading

from fake_sidecar import FakeSidecar, run, serving


async def tokens(req):
    yield "x", [1]


def test_announcements_reach_every_open_connection(sock_path):
    async def body():
        async with serving(tokens, sock_path) as worker:
            first = await FakeSidecar.open(sock_path)
            second = await FakeSidecar.open(sock_path)

            worker.announce_reloading(eta_s=30, message="loading llama-3-70b")
            expected = {
                "type": "status",
                "state": "reloading",
                "eta_ms": 30000,
                "message": "loading llama-3-70b",
            }
            assert await first.recv() == expected
            assert await second.recv() == expected

            worker.announce_ready(model_id="m2", max_concurrency=32)
            expected = {"type": "status", "state": "ready", "model_id": "m2", "max_concurrency": 32}
            assert await first.recv() == expected
            assert await second.recv() == expected

            worker.announce_draining()
            assert await first.recv() == {"type": "status", "state": "draining"}
            assert await second.recv() == {"type": "status", "state": "draining"}
            await first.close()
            await second.close()

    run(body())


def test_a_new_connection_is_welcomed_with_the_current_state_and_remaining_eta(sock_path):
    async def body():
        async with serving(tokens, sock_path) as worker:
            worker.announce_reloading(eta_s=10)
            await asyncio.sleep(0.05)
            sidecar = await FakeSidecar.connect(sock_path)
            welcome = await sidecar.handshake()
            assert welcome["state"] == "reloading"
            assert 5000 <= welcome["eta_ms"] < 10000

            worker.announce_ready(model_id="m2", max_concurrency=3)
            assert (await sidecar.recv())["state"] == "ready"
            late = await FakeSidecar.connect(sock_path)
            welcome = await late.handshake()
            assert (welcome["state"], welcome["model_id"], welcome["max_concurrency"]) == (
                "ready",
                "m2",
                3,
            )
            assert "eta_ms" not in welcome
            await sidecar.close()
            await late.close()

    run(body())


def test_a_worker_that_is_not_ready_refuses_new_generations(sock_path):
    async def body():
        async with serving(tokens, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            worker.announce_reloading(eta_s=1)
            await sidecar.recv()
            sidecar.generate("a")
            _, end = await sidecar.until_end("a")
            assert end["type"] == "error" and end["code"] == "overloaded"
            assert "reloading" in end["message"]
            await sidecar.close()

    run(body())


def test_announcements_may_come_from_another_thread(sock_path):
    async def body():
        async with serving(tokens, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            thread = threading.Thread(target=worker.announce_reloading, kwargs={"eta_s": 2})
            thread.start()
            assert await sidecar.recv() == {"type": "status", "state": "reloading", "eta_ms": 2000}
            thread.join()
            await sidecar.close()

    run(body())
