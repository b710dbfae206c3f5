"""The simulator as a real process: streaming, options, and its CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from fake_sidecar import FakeSidecar, ids_of, run, text_of
from sim_process import FAST, PYTHON_DIR, SimProcess

# The simulator's two ways of serving: a generator per generation, or one
# engine step for every running generation (`Worker(engine=...)`).
APIS = ["generator", "engine"]


@pytest.mark.parametrize("api", APIS)
def test_the_simulator_streams_a_deterministic_generation(sock_dir, api):
    sim = SimProcess(sock_dir, FAST + ["--model-id", "sim-7", "--api", api])

    async def body():
        sidecar = await FakeSidecar.connect(sim.socket_path)
        welcome = await sidecar.handshake()
        assert welcome["model_id"] == "sim-7" and welcome["worker"].startswith("cy-worker-sim/")

        answers = []
        for request_id in ("a", "b"):
            sidecar.generate(
                request_id, prompt="Once upon a time", sampling={"max_tokens": 0, "seed": 4}
            )
            chunks, done = await sidecar.until_end(request_id)
            assert len(chunks) == 8
            assert done["finish_reason"] == "stop"
            assert done["usage"] == {"prompt_tokens": 4, "completion_tokens": 8}
            answers.append((text_of(chunks), ids_of(chunks)))
        assert answers[0] == answers[1]
        assert answers[0][0].strip()

        sidecar.generate("c", prompt="Once upon a time", max_tokens=3)
        chunks, done = await sidecar.until_end("c")
        assert len(chunks) == 3 and done["finish_reason"] == "length"
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()
    assert "self-check" not in sim.log()


def test_both_apis_give_the_same_words_for_the_same_prompt_and_seed(sock_dir):
    answers = {}
    for api in APIS:
        sim = SimProcess(sock_dir, FAST + ["--api", api])

        async def body():
            sidecar = await FakeSidecar.open(sim.socket_path)
            sidecar.generate("a", prompt="the river [[sim tokens=20]]", sampling={"max_tokens": 0, "seed": 9})
            chunks, done = await sidecar.until_end("a")
            await sidecar.close()
            return text_of(chunks), ids_of(chunks), done["usage"]

        try:
            answers[api] = run(body())
        finally:
            sim.stop()
    assert answers["generator"] == answers["engine"]
    assert len(answers["engine"][1]) == 20


@pytest.mark.parametrize("api", APIS)
def test_chat_messages_are_answered_and_billed_by_words(sock_dir, api):
    sim = SimProcess(sock_dir, FAST + ["--api", api])

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate(
            "a",
            prompt=None,
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "say hi [[sim tokens=2]]"},
            ],
        )
        chunks, done = await sidecar.until_end("a")
        assert len(chunks) == 2 and done["usage"]["prompt_tokens"] == 4
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()


@pytest.mark.parametrize("api", APIS)
def test_stamp_makes_each_chunk_a_monotonic_timestamp(sock_dir, api):
    sim = SimProcess(sock_dir, FAST + ["--stamp", "--api", api])

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a")
        chunks, _ = await sidecar.until_end("a")
        received = time.monotonic_ns()
        stamps = [int(c["text"][:-1]) for c in chunks]
        assert all(c["text"].endswith(" ") for c in chunks)
        assert stamps == sorted(stamps) and 0 < received - stamps[-1] < 1_000_000_000
        assert all(len(c["token_ids"]) == 1 for c in chunks)
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()


@pytest.mark.parametrize("api", APIS)
def test_the_batched_schedule_sends_each_step_on_the_shared_grid(sock_dir, api):
    # Steps 100 ms apart. Generations that arrive 30 ms apart still send their
    # tokens on the same steps, in the same turn of the simulator's loop: all
    # but possibly the first step of the later one meet a token of the other.
    tokens = 4
    sim = SimProcess(
        sock_dir,
        ["--ttft-ms", "0", "--itl-ms", "100", "--tokens", str(tokens), "--stamp", "--schedule", "batched"]
        + ["--api", api],
    )

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a")
        await asyncio.sleep(0.03)
        sidecar.generate("b")
        stamps = {"a": [], "b": []}
        ended = set()
        while len(ended) < 2:
            message = await sidecar.recv(2.0)
            if message["type"] == "chunk":
                stamps[message["id"]].append(int(message["text"][:-1]))
            elif message["type"] == "done":
                ended.add(message["id"])
        assert [len(s) for s in stamps.values()] == [tokens, tokens]
        # Same step: microseconds apart; own clocks would leave 30 ms between them.
        shared = [b for b in stamps["b"] if min(abs(b - a) for a in stamps["a"]) < 5_000_000]
        assert len(shared) >= tokens - 1, stamps
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("pinned", [False, True])
def test_batched_steps_leave_as_chunks_frames_unless_pinned_to_version_1(sock_dir, pinned, api):
    args = ["--ttft-ms", "0", "--itl-ms", "50", "--tokens", "3", "--schedule", "batched"]
    args += ["--api", api]
    sim = SimProcess(sock_dir, args + (["--protocol-versions", "1"] if pinned else []))

    async def body():
        sidecar = await FakeSidecar.connect(sim.socket_path)
        welcome = await sidecar.handshake(versions=[1, 2])
        assert welcome["version"] == (1 if pinned else 2)
        for rid in ("a", "b", "c"):
            sidecar.generate(rid)
        ids = {"a": [], "b": [], "c": []}
        kinds = set()
        ended = set()
        while len(ended) < 3:
            message = await sidecar.recv(2.0)
            kinds.add(message["type"])
            if message["type"] == "done":
                ended.add(message["id"])
                continue
            for item in message["items"] if message["type"] == "chunks" else [message]:
                ids[item["id"]].extend(item["token_ids"])
        assert [len(v) for v in ids.values()] == [3, 3, 3]
        assert ("chunks" in kinds) is not pinned, kinds
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()


def run_sim_cli(*args):
    """Run the simulator's command line to its exit (options that end it)."""
    return subprocess.run(
        [sys.executable, "-m", "cy_worker.sim", *args],
        cwd=PYTHON_DIR,
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_help_lists_the_options():
    result = run_sim_cli("--help")
    assert result.returncode == 0
    for option in (
        "--socket",
        "--ttft-ms",
        "--itl-ms",
        "--schedule",
        "--tokens",
        "--stamp",
        "--fault",
        "--fault-after-tokens",
        "--reload-eta-secs",
        "--reload-mode",
        "--protocol-versions",
        "--api",
    ):
        assert option in result.stdout


def test_bad_options_are_refused():
    result = run_sim_cli("--tokens", "-1")
    assert result.returncode == 2 and "--tokens" in result.stderr
    result = run_sim_cli("--protocol-versions", "1,3")
    assert result.returncode == 2 and "--protocol-versions" in result.stderr
    result = run_sim_cli("--api", "engine", "--fault", "slow_cancel")
    assert result.returncode == 2 and "--fault slow_cancel needs --api generator" in result.stderr


def test_a_socket_in_use_is_reported_with_status_1(sock_dir):
    sim = SimProcess(sock_dir, FAST)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cy_worker.sim", "--socket", sim.socket_path],
            cwd=PYTHON_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert result.returncode == 1 and "accepts connections" in result.stderr
    finally:
        sim.stop()


def test_the_engine_api_pauses_a_sequence_without_credit_and_resumes_it(sock_dir):
    sim = SimProcess(sock_dir, FAST + ["--api", "engine", "--tokens", "6"])

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("slow", credit=2)
        sidecar.generate("fast", credit=100)
        sidecar.generate("gone", credit=100, prompt="[[sim tokens=1000 itl_ms=5]]")
        chunks, done = await sidecar.until_end("fast")
        assert len(chunks) == 6 and done["usage"]["completion_tokens"] == 6
        sidecar.send({"type": "cancel", "id": "gone", "reason": "client_cancelled"})
        _, done = await sidecar.until_end("gone")
        assert done["finish_reason"] == "cancelled"
        cancelled_usage = done["usage"]["completion_tokens"]
        assert 0 < cancelled_usage < 1000
        # "slow" sent its two chunks and sits out the steps since.
        await sidecar.expect_silence(0.1)
        sidecar.send({"type": "credit", "id": "slow", "chunks": 3})
        chunks = [await sidecar.recv() for _ in range(3)]
        assert [c["id"] for c in chunks] == ["slow"] * 3
        await sidecar.expect_silence(0.1)
        sidecar.send({"type": "credit", "id": "slow", "chunks": 10})
        chunks, done = await sidecar.until_end("slow")
        assert len(chunks) == 1 and done["usage"]["completion_tokens"] == 6
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()
