"""Cancellation: by `cancel`, and by the connection closing."""

from __future__ import annotations

import asyncio

from fake_sidecar import FakeSidecar, run, serving

from cy_worker.protocol import encode_frame


class Probe:
    """A generator that records how it was stopped."""

    def __init__(self):
        # Made inside the test's event loop: Python 3.9 binds events to a loop.
        self.started = asyncio.Event()
        self.seen = {}

    async def generate(self, req):
        try:
            yield "first", [1]
            self.started.set()
            await asyncio.sleep(30)
            yield "never", [2]
        except asyncio.CancelledError:
            self.seen[req.id] = "CancelledError"
            raise
        except GeneratorExit:
            self.seen[req.id] = "GeneratorExit"
            raise
        finally:
            self.seen.setdefault(req.id + ":flag", req.cancelled)


def test_cancel_stops_the_generator_and_ends_with_done_cancelled(sock_path):
    async def body():
        probe = Probe()
        async with serving(probe.generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a")
            assert (await sidecar.recv())["text"] == "first"
            await probe.started.wait()
            sidecar.send({"type": "cancel", "id": "a", "reason": "client_cancelled"})
            chunks, done = await sidecar.until_end("a")
            assert chunks == []
            assert done["type"] == "done" and done["finish_reason"] == "cancelled"
            assert done["usage"]["completion_tokens"] == 1
            assert probe.seen == {"a": "CancelledError", "a:flag": True}
            await sidecar.close()

    run(body())


def test_cancel_while_waiting_for_credit_closes_the_generator(sock_path):
    async def body():
        probe = Probe()
        async with serving(probe.generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=1)
            assert (await sidecar.recv())["text"] == "first"
            sidecar.send({"type": "cancel", "id": "a", "reason": "deadline_exceeded"})
            _, done = await sidecar.until_end("a")
            assert done["finish_reason"] == "cancelled"
            assert probe.seen["a"] == "GeneratorExit"
            await sidecar.close()

    run(body())


def test_a_generator_that_swallows_cancel_still_ends_cancelled(sock_path):
    async def stubborn(req):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        yield "late", [1]
        yield "later", [2]

    async def body():
        async with serving(stubborn, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a")
            await asyncio.sleep(0.02)
            sidecar.send({"type": "cancel", "id": "a", "reason": "client_cancelled"})
            chunks, done = await sidecar.until_end("a")
            assert chunks == [] and done["finish_reason"] == "cancelled"
            await sidecar.close()

    run(body())


def test_closing_the_connection_cancels_all_its_generations(sock_path):
    async def body():
        probe = Probe()
        async with serving(probe.generate, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            for request_id in ("a", "b", "c"):
                sidecar.generate(request_id)
            for _ in range(3):
                await sidecar.recv()
            other = await FakeSidecar.open(sock_path)
            other.generate("d")
            assert (await other.recv())["id"] == "d"
            assert worker.in_flight == 4

            await sidecar.close()
            for _ in range(50):
                if worker.in_flight == 1:
                    break
                await asyncio.sleep(0.01)
            assert worker.in_flight == 1
            assert {probe.seen.get(k) for k in "abc"} == {"CancelledError"}
            # The other connection's generation is untouched.
            assert "d" not in probe.seen
            await other.close()

    run(body())


def test_a_cancel_right_behind_its_generate_still_ends_with_done(sock_path):
    calls = []

    async def generate(req):
        calls.append(req.id)
        yield "x", [1]

    async def body():
        async with serving(generate, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            # One write: the cancel arrives before the generation's task runs.
            sidecar.send_raw(
                encode_frame(
                    {
                        "type": "generate",
                        "id": "a",
                        "session_id": "s",
                        "model_id": "",
                        "prompt": "p",
                        "sampling": {"max_tokens": 0},
                        "credit": 4,
                    }
                )
                + encode_frame({"type": "cancel", "id": "a", "reason": "client_cancelled"})
            )
            chunks, done = await sidecar.until_end("a")
            assert chunks == [] and done["finish_reason"] == "cancelled"
            assert done["usage"]["completion_tokens"] == 0
            assert worker.in_flight == 0 and calls == []
            await sidecar.close()

    run(body())
