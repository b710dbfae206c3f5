"""Every fault the simulator injects, seen from a fake sidecar, with either API."""

from __future__ import annotations

import shutil
import tempfile
import time

import pytest
from fake_sidecar import FakeSidecar, run
from sim_process import FAST, SimProcess

from cy_worker.protocol import TO_SIDECAR, Failure, decode_message


@pytest.fixture(scope="module", params=["generator", "engine"])
def api(request):
    """The simulator's `--api`: a generator per generation, or one engine step for all."""
    return request.param


@pytest.fixture(scope="module")
def sim(api):
    """One simulator for every fault that leaves the process running."""
    directory = tempfile.mkdtemp(prefix="cyw-", dir="/tmp")
    process = SimProcess(directory, FAST + ["--api", api])
    yield process
    process.stop()
    shutil.rmtree(directory, ignore_errors=True)


def with_sidecar(sim, test, **hello):
    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path, **hello)
        try:
            await test(sidecar)
        finally:
            await sidecar.close()

    run(body())


def test_fault_hang_stops_the_stream_but_pings_and_cancel_still_work(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=5 fault=hang after=2]]")
        assert [(await sidecar.recv())["id"] for _ in range(2)] == ["a", "a"]
        await sidecar.expect_silence(0.2)
        sidecar.send({"type": "ping", "seq": 9})
        assert await sidecar.recv() == {"type": "pong", "seq": 9}
        sidecar.send({"type": "cancel", "id": "a", "reason": "idle_timeout"})
        chunks, done = await sidecar.until_end("a")
        assert chunks == [] and done["finish_reason"] == "cancelled"

    with_sidecar(sim, test)


def test_fault_error_sends_an_error_with_the_given_code(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=5 fault=error after=1]]")
        chunks, end = await sidecar.until_end("a")
        assert len(chunks) == 1 and (end["type"], end["code"]) == ("error", "internal")
        sidecar.generate("b", prompt="[[sim tokens=5 fault=error after=3 code=unavailable]]")
        chunks, end = await sidecar.until_end("b")
        assert len(chunks) == 3 and end["code"] == "unavailable"

    with_sidecar(sim, test)


def test_fault_malformed_writes_a_frame_that_is_not_json(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=5 fault=malformed after=1]]")
        assert (await sidecar.recv())["type"] == "chunk"
        result = decode_message(await sidecar.recv_frame(), TO_SIDECAR)
        assert isinstance(result, Failure) and result.kind == "bad_json"

    with_sidecar(sim, test)


def test_fault_oversized_announces_more_than_the_sidecar_accepts(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=5 fault=oversized after=1]]")
        assert (await sidecar.recv())["type"] == "chunk"
        result = await sidecar.recv_frame()
        assert isinstance(result, Failure) and result.kind == "oversized"
        assert "4097" in result.detail

    with_sidecar(sim, test, max_frame_bytes=4096)


def test_fault_no_credit_sends_chunks_beyond_the_credit(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=6 fault=no_credit after=1]]", credit=2)
        chunks, done = await sidecar.until_end("a")
        assert len(chunks) == 6 and done["usage"]["completion_tokens"] == 6
        sidecar.generate("b", prompt="[[sim tokens=4 fault=no_credit]]", credit=1)
        chunks, done = await sidecar.until_end("b")
        assert len(chunks) == 4 and done["type"] == "done"

    with_sidecar(sim, test)


def test_fault_lie_usage_over_reports_completion_tokens_by_five(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=3 fault=lie_usage]]")
        chunks, done = await sidecar.until_end("a")
        assert len(chunks) == 3 and done["usage"]["completion_tokens"] == 8

    with_sidecar(sim, test)


def test_fault_unknown_id_sends_a_chunk_for_a_generation_never_started(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=3 fault=unknown_id after=1]]")
        ids = []
        while True:
            message = await sidecar.recv()
            ids.append(message["id"])
            if message["type"] == "done":
                break
        assert ids[0] == "a" and ids[1].startswith("sim-unknown-") and ids[2:] == ["a", "a", "a"]

    with_sidecar(sim, test)


def test_fault_slow_cancel_ends_a_cancelled_generation_a_second_late(sim, api):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim tokens=1000 itl_ms=5 fault=slow_cancel]]", credit=1000)
        if api == "engine":
            # An engine's cancellation is immediate: it cannot show this fault.
            _, end = await sidecar.until_end("a")
            assert end["code"] == "invalid_argument" and "needs the generator API" in end["message"]
            return
        await sidecar.recv()
        cancelled_at = time.monotonic()
        sidecar.send({"type": "cancel", "id": "a", "reason": "client_cancelled"})
        _, done = await sidecar.until_end("a", timeout_s=3)
        assert done["finish_reason"] == "cancelled"
        assert time.monotonic() - cancelled_at >= 0.95

    with_sidecar(sim, test)


def test_a_malformed_directive_fails_the_generation_only(sim):
    async def test(sidecar):
        sidecar.generate("a", prompt="[[sim fault=melt]]")
        _, end = await sidecar.until_end("a")
        assert end["code"] == "invalid_argument" and "fault" in end["message"]
        sidecar.generate("b")
        _, end = await sidecar.until_end("b")
        assert end["type"] == "done"

    with_sidecar(sim, test)


def test_fault_exit_ends_the_process_with_status_3_mid_stream(sock_dir, api):
    sim = SimProcess(sock_dir, FAST + ["--api", api])

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a", prompt="[[sim tokens=5 fault=exit after=3]]")
        chunks = [await sidecar.recv() for _ in range(3)]
        assert [c["type"] for c in chunks] == ["chunk"] * 3
        await sidecar.expect_closed()

    try:
        run(body())
        assert sim.wait() == 3
    finally:
        sim.stop()


def test_a_fault_given_on_the_command_line_applies_to_every_request(sock_dir, api):
    sim = SimProcess(
        sock_dir,
        FAST
        + ["--api", api]
        + ["--fault", "error", "--fault-after-tokens", "2", "--fault-code", "cancelled"],
    )

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a")
        chunks, end = await sidecar.until_end("a")
        assert len(chunks) == 2 and end["code"] == "cancelled"
        # A directive overrides the default.
        sidecar.generate("b", prompt="[[sim fault=none]]")
        chunks, end = await sidecar.until_end("b")
        assert len(chunks) == 8 and end["type"] == "done"
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()
