"""Protocol version 2: the chunks of one turn leave together as `chunks`."""

from __future__ import annotations

import asyncio
import logging

from fake_sidecar import FakeSidecar, run, serving

from cy_worker import Token

WORDS = 6


async def lockstep(req):
    # Every generation yields one token per turn of the loop, as the
    # generations of one decode step do.
    for i in range(WORDS):
        yield Token(f" {req.id}{i}", [i])
        await asyncio.sleep(0)


async def collect(sidecar, ids):
    """Every chunk by id, in order, and the frame types seen, up to each done."""
    chunks = {rid: [] for rid in ids}
    kinds = []
    ended = set()
    while len(ended) < len(ids):
        message = await sidecar.recv(2.0)
        kinds.append(message["type"])
        if message["type"] == "chunks":
            items = message["items"]
        elif message["type"] == "chunk":
            items = [message]
        else:
            assert message["type"] == "done", message
            assert chunks[message["id"]], "done before its chunks"
            ended.add(message["id"])
            continue
        for item in items:
            assert item["id"] not in ended, "a chunk after its done"
            chunks[item["id"]].append((item["text"], item["token_ids"]))
    return chunks, kinds


def expected(rid):
    return [(f" {rid}{i}", [i]) for i in range(WORDS)]


def test_on_version_2_the_chunks_of_one_turn_share_a_frame(sock_path, caplog):
    ids = ["a", "b", "c"]

    async def body():
        async with serving(lockstep, sock_path):
            sidecar = await FakeSidecar.open(sock_path, versions=[1, 2])
            for rid in ids:
                sidecar.generate(rid)
            chunks, kinds = await collect(sidecar, ids)
            assert chunks == {rid: expected(rid) for rid in ids}
            assert kinds.count("chunks") >= WORDS - 1, kinds
            await sidecar.close()

    with caplog.at_level(logging.ERROR, logger="cy_worker"):
        run(body())
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_on_version_1_every_chunk_is_its_own_frame(sock_path):
    ids = ["a", "b"]

    async def body():
        async with serving(lockstep, sock_path):
            sidecar = await FakeSidecar.open(sock_path, versions=[1])
            for rid in ids:
                sidecar.generate(rid)
            chunks, kinds = await collect(sidecar, ids)
            assert chunks == {rid: expected(rid) for rid in ids}
            assert "chunks" not in kinds and kinds.count("chunk") == 2 * WORDS
            await sidecar.close()

    run(body())


def test_chunks_frames_are_split_to_fit_the_sidecars_frame_limit(sock_path, caplog):
    # 40 generations with 200-byte words in the same turn: about 9 KB of
    # chunks against a 1024-byte limit.
    ids = [f"g{n:02d}" for n in range(40)]

    async def wide(req):
        yield Token(req.id + "x" * 200, [1])
        await asyncio.sleep(0)
        yield Token("y", [2])

    async def body():
        async with serving(wide, sock_path):
            sidecar = await FakeSidecar.open(sock_path, versions=[2], max_frame_bytes=1024)
            for rid in ids:
                sidecar.generate(rid)
            chunks, kinds = await collect(sidecar, ids)
            assert chunks == {rid: [(rid + "x" * 200, [1]), ("y", [2])] for rid in ids}
            assert kinds.count("chunks") >= 9, kinds
            await sidecar.close()

    with caplog.at_level(logging.ERROR, logger="cy_worker"):
        run(body())
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_frame_written_between_chunks_keeps_its_place(sock_path):
    # `b` ends (its done is written) in the same turn as `a` writes chunks:
    # the chunks written before that done leave before it, those after it
    # after it.
    async def generate(req):
        if req.id == "b":
            yield Token(" b", [9])
            return
        for i in range(3):
            yield Token(f" a{i}", [i])
            await asyncio.sleep(0)

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path, versions=[2])
            sidecar.generate("a")
            sidecar.generate("b")
            chunks, kinds = await collect(sidecar, ["a", "b"])
            assert chunks == {"a": [(f" a{i}", [i]) for i in range(3)], "b": [(" b", [9])]}
            await sidecar.close()

    run(body())
