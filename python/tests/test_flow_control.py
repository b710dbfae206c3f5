"""Flow control: a generation sends no more chunks than its credit."""

from __future__ import annotations

from fake_sidecar import FakeSidecar, run, serving


def counting_generator(pulls):
    async def generate(req):
        for i in range(6):
            pulls.append(i)
            yield f"t{i}", [i]

    return generate


def test_a_generation_stops_at_its_credit_until_credit_arrives(sock_path):
    pulls = []

    async def body():
        async with serving(counting_generator(pulls), sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=2)
            assert [(await sidecar.recv())["text"] for _ in range(2)] == ["t0", "t1"]
            await sidecar.expect_silence(0.1)
            # The generator was not even asked for the next token.
            assert pulls == [0, 1]

            sidecar.send({"type": "credit", "id": "a", "chunks": 3})
            assert [(await sidecar.recv())["text"] for _ in range(3)] == ["t2", "t3", "t4"]
            await sidecar.expect_silence(0.1)
            assert pulls == [0, 1, 2, 3, 4]

            sidecar.send({"type": "credit", "id": "a", "chunks": 10})
            chunks, done = await sidecar.until_end("a")
            assert [c["text"] for c in chunks] == ["t5"]
            assert done["usage"]["completion_tokens"] == 6
            await sidecar.close()

    run(body())


def test_credit_is_per_generation(sock_path):
    pulls = []

    async def body():
        async with serving(counting_generator(pulls), sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("slow", credit=1)
            sidecar.generate("fast", credit=100)
            chunks, done = await sidecar.until_end("fast")
            assert len(chunks) == 6 and done["type"] == "done"
            sidecar.send({"type": "credit", "id": "slow", "chunks": 100})
            chunks, done = await sidecar.until_end("slow")
            assert len(chunks) == 5 and done["type"] == "done"
            await sidecar.close()

    run(body())


def test_credit_and_cancel_for_unknown_ids_are_ignored(sock_path):
    pulls = []

    async def body():
        async with serving(counting_generator(pulls), sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.send({"type": "credit", "id": "nobody", "chunks": 5})
            sidecar.send({"type": "cancel", "id": "nobody", "reason": "client_cancelled"})
            sidecar.send({"type": "ping", "seq": 4})
            assert await sidecar.recv() == {"type": "pong", "seq": 4}
            await sidecar.close()

    run(body())


async def chunk_texts(sidecar, count):
    """The next `count` chunks as (id, text), whether framed alone or together."""
    got = []
    while len(got) < count:
        message = await sidecar.recv()
        items = message["items"] if message["type"] == "chunks" else [message]
        for item in items:
            assert "text" in item, message
            got.append((item["id"], item["text"]))
    return got


def test_a_credits_frame_on_version_2_adds_credit_to_each_generation_it_names(sock_path):
    pulls = []

    async def body():
        async with serving(counting_generator(pulls), sock_path):
            sidecar = await FakeSidecar.open(sock_path, versions=[1, 2])
            sidecar.generate("a", credit=1)
            sidecar.generate("b", credit=1)
            assert sorted(await chunk_texts(sidecar, 2)) == [("a", "t0"), ("b", "t0")]
            await sidecar.expect_silence(0.1)

            # An id not in flight (one that already ended) is ignored.
            sidecar.send(
                {
                    "type": "credits",
                    "items": [
                        {"id": "a", "chunks": 2},
                        {"id": "gone", "chunks": 5},
                        {"id": "b", "chunks": 1},
                    ],
                }
            )
            got = await chunk_texts(sidecar, 3)
            assert [t for i, t in got if i == "a"] == ["t1", "t2"]
            assert [t for i, t in got if i == "b"] == ["t1"]
            await sidecar.expect_silence(0.1)
            assert sorted(pulls) == [0, 0, 1, 1, 2]
            await sidecar.close()

    run(body())


def test_a_credits_frame_on_version_1_is_a_protocol_error(sock_path):
    async def body():
        async with serving(counting_generator([]), sock_path):
            sidecar = await FakeSidecar.open(sock_path, versions=[1])
            sidecar.generate("a", credit=1)
            await sidecar.recv()
            sidecar.send({"type": "credits", "items": [{"id": "a", "chunks": 2}]})
            error = await sidecar.until_end_of_connection()
            assert error["code"] == "protocol"
            assert "'credits' on protocol version 1" in error["message"], error

    run(body())
