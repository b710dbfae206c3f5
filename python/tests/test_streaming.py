"""Generations: chunks, `done` with exact usage, many at once."""

from __future__ import annotations

import asyncio

from fake_sidecar import FakeSidecar, ids_of, run, serving, text_of

from cy_worker import Token


def test_a_generation_streams_its_chunks_then_done_with_exact_usage(sock_path):
    async def generate(req):
        assert req.prompt == "Once upon" and req.sampling.max_tokens == 3
        req.prompt_tokens = 2
        yield Token(text="Hel", token_ids=[101])
        yield "lo", [102, 103]
        yield Token(" wörld 😀")
        req.finish_reason = "length"

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", prompt="Once upon", max_tokens=3)
            chunks, done = await sidecar.until_end("a")
            assert text_of(chunks) == "Hello wörld 😀"
            assert ids_of(chunks) == [101, 102, 103]
            assert done == {
                "type": "done",
                "id": "a",
                "finish_reason": "length",
                "usage": {"prompt_tokens": 2, "completion_tokens": 3},
            }
            await sidecar.close()

    run(body())


def test_empty_items_are_skipped_and_do_not_count(sock_path):
    async def generate(req):
        yield "", []
        yield "a", []
        yield "", (7,)

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=3)
            chunks, done = await sidecar.until_end("a")
            assert [(c["text"], c["token_ids"]) for c in chunks] == [("a", []), ("", [7])]
            assert done["usage"]["completion_tokens"] == 1
            assert done["finish_reason"] == "stop"
            await sidecar.close()

    run(body())


def test_request_carries_chat_messages_and_sampling(sock_path):
    seen = {}

    async def generate(req):
        seen["req"] = req
        yield "ok", [1]

    async def body():
        async with serving(generate, sock_path, model_id="m"):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.send(
                {
                    "type": "generate",
                    "id": "a",
                    "session_id": "sess",
                    "model_id": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "sampling": {
                        "max_tokens": 5,
                        "temperature": 0.5,
                        "top_p": 0.9,
                        "stop": ["\n"],
                        "seed": 3,
                    },
                    "credit": 4,
                }
            )
            await sidecar.until_end("a")
            await sidecar.close()

    run(body())
    req = seen["req"]
    assert req.prompt is None and req.messages == [{"role": "user", "content": "hi"}]
    assert (req.id, req.session_id, req.model_id) == ("a", "sess", "m")
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.seed) == (5, 0.5, 0.9, ["\n"], 3)


def test_many_generations_on_one_connection_interleave(sock_path):
    async def generate(req):
        for i in range(5):
            await asyncio.sleep(0.001)
            yield f"{req.id}{i} ", [i]

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            ids = [f"r{n}" for n in range(20)]
            for request_id in ids:
                sidecar.generate(request_id)
            order, ended = [], {}
            while len(ended) < len(ids):
                message = await sidecar.recv()
                order.append(message["id"])
                if message["type"] == "done":
                    ended[message["id"]] = message
            assert all(m["usage"]["completion_tokens"] == 5 for m in ended.values())
            # Interleaved: the first generation is not over before others start.
            first_done = order.index("r0", len(order) - order[::-1].index("r0") - 1)
            assert len(set(order[:first_done])) > 1
            await sidecar.close()

    run(body())


def test_a_generation_for_another_model_is_refused(sock_path):
    async def body():
        async with serving(_one_token, sock_path, model_id="m1"):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", model_id="m2")
            _, end = await sidecar.until_end("a")
            assert end["type"] == "error" and end["code"] == "model_mismatch"
            sidecar.generate("b", model_id="m1")
            _, end = await sidecar.until_end("b")
            assert end["type"] == "done"
            await sidecar.close()

    run(body())


def test_bad_items_from_a_generator_end_it_with_an_internal_error(sock_path):
    async def generate(req):
        yield BAD[req.prompt]

    BAD = {"str": "lo", "float": ("a", [1.5]), "neg": ("a", [-1]), "text": (5, [1]), "int": 7}

    async def body():
        async with serving(generate, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            for name in BAD:
                sidecar.generate(name, prompt=name)
                chunks, end = await sidecar.until_end(name)
                assert chunks == [] and end["type"] == "error", name
                assert end["code"] == "internal", end
            await sidecar.close()

    run(body())


async def _one_token(req):
    yield "x", [1]
