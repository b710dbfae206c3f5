"""`Worker(engine=...)`: a batching engine served step by step, no task per generation."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fake_sidecar import FakeSidecar, ids_of, run, serving, text_of

from cy_worker import Stream, Worker, WorkerError


class ScriptEngine:
    """An engine the test drives by hand: it records what the package asked of it."""

    def __init__(self, submit=None, resumable=True):
        self.streams = {}
        self.cancelled = []
        self.resumed = []
        self._submit = submit
        if not resumable:
            self.resume = None

    def submit(self, stream):
        assert isinstance(stream, Stream)
        stream.request.prompt_tokens = 7
        self.streams[stream.request.id] = stream
        if self._submit is not None:
            self._submit(stream)

    def cancel(self, stream):
        self.cancelled.append(stream.request.id)

    def resume(self, stream):
        self.resumed.append(stream.request.id)

    async def wait_for(self, *ids):
        while not all(i in self.streams for i in ids):
            await asyncio.sleep(0.005)
        return [self.streams[i] for i in ids]


def serving_engine(engine, path, **options):
    return serving(None, path, engine=engine, **options)


async def items_until(sidecar, count):
    """The next `count` chunk items, and the types of the frames that held them."""
    items, kinds = [], []
    while len(items) < count:
        message = await sidecar.recv()
        kinds.append(message["type"])
        items.extend(message["items"] if message["type"] == "chunks" else [message])
    return items, kinds


def test_one_step_of_three_generations_leaves_as_one_chunks_frame(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path, versions=[1, 2])
            for rid in ("a", "b", "c"):
                sidecar.generate(rid)
            streams = await engine.wait_for("a", "b", "c")
            for step in range(2):
                worker.push_step([(s, f" {s.request.id}{step}", [step]) for s in streams])
                items, kinds = await items_until(sidecar, 3)
                assert kinds == ["chunks"]
                assert [i["id"] for i in items] == ["a", "b", "c"]
                assert [i["text"] for i in items] == [f" a{step}", f" b{step}", f" c{step}"]
                # The prompt's size rides on each generation's first chunk only.
                assert [i.get("prompt_tokens") for i in items] == [7 if step == 0 else None] * 3
            worker.push_step([(s, "", (), "length") for s in streams])
            for rid in ("a", "b", "c"):
                _, done = await sidecar.until_end(rid)
                assert done["type"] == "done", done
                assert done["finish_reason"] == "length"
                assert done["usage"] == {"prompt_tokens": 7, "completion_tokens": 2}
            assert worker.in_flight == 0
            assert engine.cancelled == []
            await sidecar.close()

    run(body())


def test_on_version_1_every_chunk_is_its_own_frame(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path, versions=[1])
            sidecar.generate("a")
            sidecar.generate("b")
            streams = await engine.wait_for("a", "b")
            worker.push_step([(s, " x", [1], "stop") for s in streams])
            kinds = [(await sidecar.recv())["type"] for _ in range(4)]
            # The step's chunks first, then its ends.
            assert kinds == ["chunk", "chunk", "done", "done"]
            await sidecar.close()

    run(body())


def test_chunks_beyond_credit_wait_in_the_backlog_and_the_done_waits_for_them(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=2)
            (stream,) = await engine.wait_for("a")
            for i in range(5):
                assert stream.push(f"t{i}", [i]) is True
            stream.finish("stop")
            assert stream.backlog == 3 and not stream.has_credit and not stream.open
            assert [(await sidecar.recv())["text"] for _ in range(2)] == ["t0", "t1"]
            await sidecar.expect_silence(0.1)

            sidecar.send({"type": "credit", "id": "a", "chunks": 2})
            assert [(await sidecar.recv())["text"] for _ in range(2)] == ["t2", "t3"]
            await sidecar.expect_silence(0.1)

            sidecar.send({"type": "credit", "id": "a", "chunks": 8})
            chunks, done = await sidecar.until_end("a")
            assert text_of(chunks) == "t4"
            assert done["usage"]["completion_tokens"] == 5
            # The backlog drained into a finished generation: nothing to resume.
            assert engine.resumed == []
            await sidecar.close()

    run(body())


def test_resume_is_called_when_a_stream_out_of_credit_may_send_again(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=1)
            (stream,) = await engine.wait_for("a")
            assert stream.has_credit
            stream.push("t0", [0])
            assert not stream.has_credit and stream.backlog == 0
            await sidecar.recv()
            sidecar.send({"type": "credit", "id": "a", "chunks": 3})
            # A credit that does not unblock anything does not resume again.
            sidecar.send({"type": "credit", "id": "a", "chunks": 3})
            sidecar.send({"type": "ping", "seq": 1})
            assert (await sidecar.recv())["type"] == "pong"
            assert engine.resumed == ["a"]
            assert stream.has_credit and stream.credit == 6
            stream.finish()
            _, done = await sidecar.until_end("a")
            assert done["finish_reason"] == "stop"
            await sidecar.close()

    run(body())


def test_an_engine_without_resume_is_served_too(sock_path):
    engine = ScriptEngine(resumable=False)

    async def body():
        async with serving_engine(engine, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=1)
            (stream,) = await engine.wait_for("a")
            stream.push("t0", [0])
            stream.push("t1", [1])
            stream.finish()
            sidecar.send({"type": "credit", "id": "a", "chunks": 4})
            chunks, done = await sidecar.until_end("a")
            assert ids_of(chunks) == [0, 1] and done["usage"]["completion_tokens"] == 2
            await sidecar.close()

    run(body())


def test_a_cancel_reaches_the_engine_once_and_drops_the_backlog_unbilled(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=2)
            (stream,) = await engine.wait_for("a")
            for i in range(4):
                stream.push(f"t{i}", [i])
            sidecar.send({"type": "cancel", "id": "a", "reason": "client_cancelled"})
            chunks, done = await sidecar.until_end("a")
            assert text_of(chunks) == "t0t1"
            assert done["finish_reason"] == "cancelled"
            assert done["usage"] == {"prompt_tokens": 7, "completion_tokens": 2}
            assert engine.cancelled == ["a"]
            assert stream.request.cancelled and stream.request.cancel_reason == "client_cancelled"
            # Whatever the engine still pushes goes nowhere.
            assert stream.push("late", [9]) is False
            stream.finish()
            sidecar.send({"type": "cancel", "id": "a", "reason": "client_cancelled"})
            sidecar.send({"type": "ping", "seq": 2})
            assert await sidecar.recv() == {"type": "pong", "seq": 2}
            assert engine.cancelled == ["a"] and worker.in_flight == 0
            await sidecar.close()

    run(body())


def test_a_cancel_after_the_engine_finished_is_not_sent_to_the_engine(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=1)
            (stream,) = await engine.wait_for("a")
            stream.push("t0", [0])
            stream.push("t1", [1])
            stream.finish("stop")
            sidecar.send({"type": "cancel", "id": "a", "reason": "deadline_exceeded"})
            chunks, done = await sidecar.until_end("a")
            assert text_of(chunks) == "t0"
            assert done["finish_reason"] == "cancelled"
            assert done["usage"]["completion_tokens"] == 1
            assert engine.cancelled == []
            await sidecar.close()

    run(body())


def test_a_closed_connection_and_a_closed_worker_cancel_every_open_stream(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            first = await FakeSidecar.open(sock_path)
            second = await FakeSidecar.open(sock_path)
            first.generate("a")
            first.generate("b")
            second.generate("c")
            await engine.wait_for("a", "b", "c")
            assert worker.in_flight == 3
            await first.close()
            while worker.in_flight > 1:
                await asyncio.sleep(0.005)
            assert sorted(engine.cancelled) == ["a", "b"]
            assert all(engine.streams[r].request.cancel_reason == "connection_closed" for r in "ab")
            await worker.close()
            assert sorted(engine.cancelled) == ["a", "b", "c"] and worker.in_flight == 0
            await second.close()

    run(body())


def test_a_refusal_in_submit_ends_the_generation_and_the_worker_serves_on(sock_path):
    def submit(stream):
        prompt = stream.request.prompt
        if prompt == "refuse":
            raise WorkerError("invalid_argument", "no thanks")
        if prompt == "crash":
            raise RuntimeError("engine broke")
        stream.push(" ok", [1])
        stream.finish()

    engine = ScriptEngine(submit=submit)

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", prompt="refuse")
            _, end = await sidecar.until_end("a")
            assert end["type"] == "error" and end["code"] == "invalid_argument"
            assert end["message"] == "no thanks"
            sidecar.generate("b", prompt="crash")
            _, end = await sidecar.until_end("b")
            assert end["type"] == "error" and end["code"] == "internal"
            assert end["message"] == "engine broke"
            sidecar.generate("c", prompt="fine")
            chunks, end = await sidecar.until_end("c")
            assert end["type"] == "done" and text_of(chunks) == " ok"
            assert worker.in_flight == 0 and engine.cancelled == []
            await sidecar.close()

    run(body())


def test_a_bad_chunk_fails_only_its_generation_and_the_engine_is_told(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path, max_frame_bytes=1024)
            sidecar.generate("a")
            sidecar.generate("b")
            sidecar.generate("c")
            a, b, c = await engine.wait_for("a", "b", "c")
            worker.push_step(
                [(a, 42, [1]), (b, " fine", [2]), (c, "x" * 2000, [3])]  # type: ignore[list-item]
            )
            seen = {}
            while len(seen) < 3:
                message = await sidecar.recv()
                seen[message["id"]] = message
            assert seen["b"]["type"] == "chunk" and seen["b"]["token_ids"] == [2]
            assert seen["a"]["type"] == "error" and seen["a"]["code"] == "internal"
            assert "chunk text must be str" in seen["a"]["message"]
            assert seen["c"]["type"] == "error"
            assert "exceeds the sidecar's max_frame_bytes" in seen["c"]["message"]
            assert a.push(" more", [1]) is False
            while len(engine.cancelled) < 2:
                await asyncio.sleep(0.005)
            assert sorted(engine.cancelled) == ["a", "c"]
            b.push(" again", [4])
            b.finish()
            chunks, end = await sidecar.until_end("b")
            assert end["type"] == "done" and ids_of(chunks) == [4]
            assert end["usage"]["completion_tokens"] == 2
            await sidecar.close()

    run(body())


def test_a_failure_comes_after_the_chunks_already_pushed(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a", credit=1)
            (stream,) = await engine.wait_for("a")
            stream.push("t0", [0])
            stream.push("t1", [1])
            stream.fail("unavailable", "GPU fell off the bus")
            stream.finish()
            await sidecar.recv()
            await sidecar.expect_silence(0.1)
            sidecar.send({"type": "credit", "id": "a", "chunks": 1})
            chunks, end = await sidecar.until_end("a")
            assert text_of(chunks) == "t1"
            assert end["type"] == "error" and end["code"] == "unavailable"
            assert end["message"] == "GPU fell off the bus"
            await sidecar.close()

    run(body())


def test_push_step_from_an_engine_thread_crosses_to_the_loop_whole(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path, versions=[1, 2])
            sidecar.generate("a")
            sidecar.generate("b")
            streams = await engine.wait_for("a", "b")

            def engine_thread():
                for step in range(3):
                    reason = "stop" if step == 2 else None
                    worker.push_step([(s, f" {step}", [step], reason) for s in streams])

            thread = threading.Thread(target=engine_thread)
            thread.start()
            kinds, texts, done = [], {"a": [], "b": []}, {}
            while len(done) < 2:
                message = await sidecar.recv()
                kinds.append(message["type"])
                if message["type"] == "done":
                    done[message["id"]] = message
                for item in message.get("items", ()):
                    texts[item["id"]].append(item["text"])
            thread.join()
            # Steps arrive whole (steps that land in one turn share a frame)
            # and in order.
            assert set(kinds) == {"chunks", "done"}
            assert texts == {"a": [" 0", " 1", " 2"], "b": [" 0", " 1", " 2"]}
            assert [done[r]["usage"]["completion_tokens"] for r in "ab"] == [3, 3]
            await sidecar.close()

    run(body())


def test_a_malformed_step_output_fails_its_own_generation_and_the_step_goes_on(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            for rid in ("a", "b"):
                sidecar.generate(rid)
            a, b = await engine.wait_for("a", "b")
            worker.push_step([(a, " x"), "junk", (b, " y", [2], "stop")])  # type: ignore[list-item]
            seen = {}
            while len(seen) < 2:
                message = await sidecar.recv()
                if message["type"] != "chunk":
                    seen[message["id"]] = message
            assert seen["a"]["type"] == "error" and seen["a"]["code"] == "internal"
            assert "malformed step output" in seen["a"]["message"]
            assert seen["b"]["type"] == "done" and seen["b"]["usage"]["completion_tokens"] == 1
            await sidecar.close()

    run(body())


def test_call_soon_threadsafe_runs_a_stream_call_on_the_loop(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a")
            (stream,) = await engine.wait_for("a")
            thread = threading.Thread(
                target=worker.call_soon_threadsafe, args=(stream.fail, "unavailable", "lost GPU")
            )
            thread.start()
            thread.join()
            _, end = await sidecar.until_end("a")
            assert (end["type"], end["code"], end["message"]) == ("error", "unavailable", "lost GPU")
            await sidecar.close()

    run(body())
    with pytest.raises(RuntimeError, match="not started"):
        Worker(engine=engine, model_id="m", socket_path=sock_path).call_soon_threadsafe(print)


def test_the_concurrency_limit_refuses_before_the_engine_sees_the_request(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path, max_concurrency=1):
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("a")
            sidecar.generate("b")
            _, end = await sidecar.until_end("b")
            assert end["type"] == "error" and end["code"] == "overloaded"
            assert list(engine.streams) == ["a"]
            await sidecar.close()

    run(body())


def test_the_worker_wants_exactly_one_of_generate_and_a_complete_engine(sock_path):
    async def generate(req):
        yield "x", [1]

    class NoCancel:
        def submit(self, stream):
            pass

    for args, kwargs, expected in (
        ((), {}, "exactly one of generate"),
        ((generate,), {"engine": ScriptEngine()}, "exactly one of generate"),
        ((), {"engine": NoCancel()}, "engine must have callable cancel"),
    ):
        with pytest.raises(ValueError, match=expected):
            Worker(*args, model_id="m", socket_path=sock_path, **kwargs)
    with pytest.raises(RuntimeError, match="not started"):
        Worker(engine=ScriptEngine(), model_id="m", socket_path=sock_path).push_step([])


def test_drain_waits_for_engine_streams_and_cancels_what_outlives_it(sock_path):
    engine = ScriptEngine()

    async def body():
        async with serving_engine(engine, sock_path) as worker:
            sidecar = await FakeSidecar.open(sock_path)
            sidecar.generate("quick")
            sidecar.generate("slow")
            quick, slow = await engine.wait_for("quick", "slow")
            drained = asyncio.ensure_future(worker.drain_and_close(timeout_s=0.3))
            status = await sidecar.recv()
            assert status["type"] == "status" and status["state"] == "draining"
            # A stream that ends within the drain is served to its end...
            quick.push(" done", [1])
            quick.finish()
            chunks, done = await sidecar.until_end("quick")
            assert text_of(chunks) == " done" and done["finish_reason"] == "stop"
            assert not drained.done() and worker.in_flight == 1
            # ...one that outlives it is cancelled in the engine.
            await drained
            assert engine.cancelled == ["slow"] and worker.in_flight == 0
            assert slow.push(" late", [2]) is False
            await sidecar.close()

    run(body())
