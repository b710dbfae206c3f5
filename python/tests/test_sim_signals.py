"""The simulator's signals: SIGUSR1 reloads, SIGTERM drains."""

from __future__ import annotations

import signal

from fake_sidecar import FakeSidecar, run
from sim_process import SimProcess

# Slow enough that a generation is still running when the signal lands.
PACED = ["--ttft-ms", "0", "--itl-ms", "15", "--tokens", "10", "--self-check"]


def test_sigusr1_reloads_in_process_and_announces_the_next_model(sock_dir):
    sim = SimProcess(sock_dir, PACED + ["--reload-eta-secs", "0.3", "--reload-secs", "0.05"])

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a")
        await sidecar.recv()
        sim.signal(signal.SIGUSR1)

        order = []
        while True:
            message = await sidecar.recv()
            if message["type"] == "status":
                order.append(message)
                if message["state"] == "ready":
                    break
            elif message["type"] == "done":
                order.append("done")
        assert order[0] == {
            "type": "status",
            "state": "reloading",
            "eta_ms": 300,
            "message": "loading sim-2",
        }
        # In-flight work finished before the model changed.
        assert order[1:] == [
            "done",
            {"type": "status", "state": "ready", "model_id": "sim-2", "max_concurrency": 64},
        ]

        late = await FakeSidecar.connect(sim.socket_path)
        assert (await late.handshake())["model_id"] == "sim-2"
        late.generate("b", model_id="sim-2")
        _, end = await late.until_end("b")
        assert end["type"] == "done"
        await late.close()
        await sidecar.close()

    try:
        run(body())
    finally:
        sim.stop()


def test_sigusr1_in_exit_mode_finishes_in_flight_work_then_exits_0(sock_dir):
    sim = SimProcess(sock_dir, PACED + ["--reload-mode", "exit"])

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a")
        await sidecar.recv()
        sim.signal(signal.SIGUSR1)
        before, status = await sidecar.until_type("status")
        assert (status["state"], status["eta_ms"]) == ("reloading", 5000)
        after, done = await sidecar.until_end("a")
        assert done["type"] == "done" and done["finish_reason"] == "stop"
        assert len(before) + len(after) == 9
        await sidecar.expect_closed()

    try:
        run(body())
        assert sim.wait() == 0
    finally:
        sim.stop()


def test_sigterm_drains_in_flight_work_and_exits_0(sock_dir):
    sim = SimProcess(sock_dir, PACED)

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a")
        await sidecar.recv()
        sim.signal(signal.SIGTERM)
        before, status = await sidecar.until_type("status")
        assert status == {"type": "status", "state": "draining"}
        after, done = await sidecar.until_end("a")
        assert done["type"] == "done" and done["usage"]["completion_tokens"] == 10
        assert len(before) + len(after) == 9
        await sidecar.expect_closed()

    try:
        run(body())
        assert sim.wait() == 0
    finally:
        sim.stop()


def test_a_second_sigterm_stops_waiting_for_in_flight_work(sock_dir):
    sim = SimProcess(sock_dir, PACED)

    async def body():
        sidecar = await FakeSidecar.open(sim.socket_path)
        sidecar.generate("a", prompt="[[sim fault=hang after=1]]")
        await sidecar.recv()
        sim.signal(signal.SIGTERM)
        assert await sidecar.recv() == {"type": "status", "state": "draining"}
        await sidecar.expect_silence(0.1)
        sim.signal(signal.SIGTERM)
        await sidecar.expect_closed()

    try:
        run(body())
        assert sim.wait() == 0
    finally:
        sim.stop()
