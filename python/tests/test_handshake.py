"""Handshake: version negotiation and what `welcome` carries."""

from __future__ import annotations

from fake_sidecar import FakeSidecar, run, serving


async def tokens(req):
    yield "x", [1]


def test_welcome_describes_the_worker(sock_path):
    async def body():
        async with serving(
            tokens,
            sock_path,
            model_id="llama",
            max_concurrency=7,
            max_frame_bytes=65536,
            name="w/9",
        ):
            sidecar = await FakeSidecar.connect(sock_path)
            welcome = await sidecar.handshake()
            assert welcome == {
                "type": "welcome",
                "version": 1,
                "worker": "w/9",
                "model_id": "llama",
                "max_concurrency": 7,
                "max_frame_bytes": 65536,
                "state": "ready",
            }
            await sidecar.close()

    run(body())


def test_worker_picks_the_highest_version_it_supports(sock_path):
    async def body():
        async with serving(tokens, sock_path):
            sidecar = await FakeSidecar.connect(sock_path)
            welcome = await sidecar.handshake(versions=[4, 1, 3])
            assert welcome["version"] == 1
            await sidecar.close()
            sidecar = await FakeSidecar.connect(sock_path)
            welcome = await sidecar.handshake(versions=[3, 1, 2])
            assert welcome["version"] == 2
            await sidecar.close()

    run(body())


def test_a_worker_pinned_to_version_1_chooses_it_when_2_is_offered(sock_path):
    async def body():
        async with serving(tokens, sock_path, protocol_versions=(1,)):
            sidecar = await FakeSidecar.connect(sock_path)
            welcome = await sidecar.handshake(versions=[1, 2])
            assert welcome["version"] == 1
            await sidecar.close()
            sidecar = await FakeSidecar.connect(sock_path)
            error = await sidecar.handshake(versions=[2])
            assert error["code"] == "unsupported_version"
            assert "worker supports [1]" in error["message"]
            await sidecar.expect_closed()

    run(body())


def test_no_common_version_is_refused_and_the_connection_closed(sock_path):
    async def body():
        async with serving(tokens, sock_path):
            sidecar = await FakeSidecar.connect(sock_path)
            error = await sidecar.handshake(versions=[3, 4])
            assert error["type"] == "error" and "id" not in error
            assert error["code"] == "unsupported_version"
            await sidecar.expect_closed()

    run(body())


def test_a_frame_before_hello_is_a_protocol_error(sock_path):
    async def body():
        async with serving(tokens, sock_path):
            sidecar = await FakeSidecar.connect(sock_path)
            sidecar.send({"type": "ping", "seq": 1})
            error = await sidecar.recv()
            assert error["type"] == "error" and "id" not in error
            assert "before the handshake" in error["message"]
            await sidecar.expect_closed()

    run(body())


def test_a_second_hello_is_a_protocol_error(sock_path):
    async def body():
        async with serving(tokens, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            error = await sidecar.handshake()
            assert error["type"] == "error" and "second hello" in error["message"]
            await sidecar.expect_closed()

    run(body())


def test_chunks_respect_the_frame_limit_the_sidecar_announced(sock_path):
    async def big(req):
        yield "y" * 2000, [1]

    async def body():
        async with serving(big, sock_path):
            sidecar = await FakeSidecar.open(sock_path, max_frame_bytes=1024)
            sidecar.generate("a")
            chunks, end = await sidecar.until_end("a")
            assert chunks == []
            assert end["type"] == "error" and end["code"] == "internal"
            assert "max_frame_bytes" in end["message"]
            await sidecar.close()

    run(body())


def test_error_messages_are_cut_to_the_frame_limit_the_sidecar_announced(sock_path):
    async def failing(req):
        raise RuntimeError("\x01" * 3000)
        yield "never", [1]

    async def body():
        async with serving(failing, sock_path):
            sidecar = await FakeSidecar.open(sock_path, max_frame_bytes=1024)
            sidecar.generate("a")
            _, end = await sidecar.until_end("a")
            assert end["code"] == "internal" and end["message"].endswith("...")
            assert 50 < len(end["message"]) < 1024 // 6
            await sidecar.close()

    run(body())
