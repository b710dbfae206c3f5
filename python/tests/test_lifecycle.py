"""Start, drain and close; the socket file; constructor checks."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest
from fake_sidecar import FakeSidecar, run, serving

from cy_worker import Worker


async def tokens(req):
    yield "x", [1]


def test_options_are_checked_and_every_problem_is_reported():
    with pytest.raises(ValueError) as info:
        Worker(
            42,
            model_id="",
            max_concurrency=0,
            socket_path="/tmp/" + "x" * 200,
            max_frame_bytes=10,
            protocol_versions=(1, 3),
        )
    message = str(info.value)
    for part in (
        "generate",
        "model_id",
        "max_concurrency",
        "socket_path",
        "max_frame_bytes",
        "protocol_versions",
    ):
        assert part in message


@pytest.mark.parametrize("versions", [(), (3,), (True,), "12", (1.0,)])
def test_protocol_versions_must_be_versions_the_package_speaks(versions):
    with pytest.raises(ValueError, match="protocol_versions must be a non-empty subset of"):
        Worker(tokens, model_id="m", protocol_versions=versions)


def test_a_stale_socket_file_is_replaced_and_the_mode_applied(sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()

    async def body():
        async with serving(tokens, sock_path, socket_mode=0o600):
            assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
            sidecar = await FakeSidecar.open(sock_path)
            await sidecar.close()
        assert not os.path.exists(sock_path)

    run(body())


def test_a_socket_another_process_listens_on_is_left_alone(sock_path):
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(sock_path)
    live.listen()
    try:
        with pytest.raises(OSError, match="accepts connections"):
            run(Worker(tokens, model_id="m", socket_path=sock_path).start())
        assert os.path.exists(sock_path)
    finally:
        live.close()


def test_a_path_that_is_not_a_socket_is_not_removed(sock_path):
    with open(sock_path, "w") as f:
        f.write("precious")
    with pytest.raises(FileExistsError):
        run(Worker(tokens, model_id="m", socket_path=sock_path).start())
    with open(sock_path) as f:
        assert f.read() == "precious"


def test_drain_and_close_waits_for_in_flight_generations(sock_path):
    async def body():
        release = asyncio.Event()

        async def slow(req):
            await release.wait()
            yield "x", [1]

        worker = Worker(slow, model_id="m", socket_path=sock_path)
        serve = asyncio.ensure_future(worker.serve())
        await asyncio.sleep(0.01)
        sidecar = await FakeSidecar.open(sock_path)
        sidecar.generate("a")
        while worker.in_flight == 0:
            await asyncio.sleep(0.005)

        drain = asyncio.ensure_future(worker.drain_and_close(timeout_s=5))
        assert await sidecar.recv() == {"type": "status", "state": "draining"}
        sidecar.generate("b")
        _, end = await sidecar.until_end("b")
        assert end["type"] == "error" and end["code"] == "overloaded"
        assert not drain.done()

        release.set()
        chunks, done = await sidecar.until_end("a")
        assert len(chunks) == 1 and done["type"] == "done"
        await sidecar.expect_closed()
        await drain
        await serve
        assert not os.path.exists(sock_path)

    run(body())


def test_drain_and_close_cancels_what_outlives_the_timeout(sock_path):
    async def forever(req):
        await asyncio.sleep(30)
        yield "x", [1]

    async def body():
        worker = Worker(forever, model_id="m", socket_path=sock_path)
        await worker.start()
        sidecar = await FakeSidecar.open(sock_path)
        sidecar.generate("a")
        while worker.in_flight == 0:
            await asyncio.sleep(0.005)
        await worker.drain_and_close(timeout_s=0.05)
        assert worker.in_flight == 0
        assert (await sidecar.recv())["state"] == "draining"
        await sidecar.expect_closed()

    run(body())
