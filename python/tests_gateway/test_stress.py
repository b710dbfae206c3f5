"""Concurrent streams and an abrupt client kill must not take the sidecar down.

The runtime under the sidecar has crashed this way before: one Deno release
aborted the whole process (an nghttp2 assertion) under two connections of 32
concurrent streams each against grpc-js, which is why Deno is pinned. This
test repeats that load shape with short Generate calls, then kills a gateway
process with SIGKILL while 64 of its streams are open, and checks outcomes
only: the sidecar process is still there, still serves, and its metrics
counted every call. It needs Python grpcio and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from typing import Dict, List

import grpc
import pytest

from conftest import CHANNEL_OPTIONS, Process, start_stack

# The crash's load shape: 2 connections x 32 concurrent streams.
CHANNELS = 2
STREAMS_PER_CHANNEL = 32
TOTAL_CALLS = 10_000

# Streams open in the gateway process that is killed.
KILLED_STREAMS = 64

# A bound for each wait, so that a broken sidecar fails the test instead of
# hanging it; never a judgement of speed.
CALL_TIMEOUT_S = 30.0
WAIT_S = 30.0

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def stack():
    """A simulator and sidecar of its own, quick to answer.

    There is no billing endpoint, so every record stays queued: the queue's
    bound is raised above the calls made, or it would fill and refuse them.
    """
    metering = f"offline_queue_size = {4 * TOTAL_CALLS}"
    with start_stack(["--ttft-ms", "0", "--itl-ms", "0"], metering) as s:
        yield s


def scrape(metrics_url: str) -> Dict[str, float]:
    """Every sample of /metrics, keyed by its name and labels as printed."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{metrics_url}/metrics", timeout=10) as res:
        text = res.read().decode()
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(samples: Dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s series that carry every label in `labels`."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{|$)")
    return sum(
        v
        for k, v in samples.items()
        if pattern.match(k) and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())
    )


async def hammer(pb, addr: str) -> Counter:
    """TOTAL_CALLS one-token Generate calls, CHANNELS x STREAMS_PER_CHANNEL at a time.

    Each call counts as "OK" only if it streamed exactly one chunk and a
    `done` whose usage says one token; otherwise as its status code name.
    """
    options = CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(addr, options=options) for _ in range(CHANNELS)]
    outcomes: Counter = Counter()
    next_id = iter(range(TOTAL_CALLS))

    async def worker(stub) -> None:
        for i in next_id:
            call = stub.Generate(
                pb.sidecar.GenerateRequest(
                    request_id=f"stress-{i}",
                    session_id="stress",
                    prompt="hi [[sim tokens=1]]",
                    sampling=pb.sidecar.SamplingParams(max_tokens=1),
                ),
                timeout=CALL_TIMEOUT_S,
            )
            try:
                events = [ev async for ev in call]
            except grpc.aio.AioRpcError as err:
                outcomes[err.code().name] += 1
                continue
            kinds = [ev.WhichOneof("kind") for ev in events]
            good = kinds == ["chunk", "done"] and events[-1].done.usage.completion_tokens == 1
            outcomes["OK" if good else f"bad events {kinds}"] += 1

    try:
        stubs = [pb.sidecar_grpc.SidecarStub(ch) for ch in channels]
        await asyncio.gather(
            *(worker(stubs[c]) for c in range(CHANNELS) for _ in range(STREAMS_PER_CHANNEL))
        )
    finally:
        for ch in channels:
            await ch.close()
    return outcomes


def wait_until(what: str, condition, timeout_s: float = WAIT_S) -> None:
    """Polls `condition` until it holds; fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def test_sidecar_survives_concurrent_streams_and_a_killed_client(pb, stack, tmp_path):
    before = scrape(stack.metrics_url)

    # 1. The crash's load shape, with short generations.
    outcomes = asyncio.run(hammer(pb, stack.grpc_addr))
    assert outcomes == Counter({"OK": TOTAL_CALLS})
    assert stack.sidecar.proc.poll() is None, stack.sidecar.log()

    # 2. A gateway process with 64 streams open dies without a word.
    pb_dir = os.path.dirname(pb.sidecar.__file__)
    client = Process(
        "stress client",
        [sys.executable, os.path.join(HERE, "stress_client.py")]
        + ["--addr", stack.grpc_addr, "--pb-dir", pb_dir]
        + ["--streams", str(KILLED_STREAMS), "--channels", str(CHANNELS)],
        str(tmp_path / "client.log"),
    )
    try:
        client.wait_for_line(lambda line: line == f"open {KILLED_STREAMS}", WAIT_S)
        client.proc.send_signal(signal.SIGKILL)
        client.proc.wait(WAIT_S)
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait()

    # 3. The sidecar is alive, frees the killed streams, and serves.
    wait_until(
        "the killed client's generations have ended",
        lambda: total(scrape(stack.metrics_url), "sidecar_generations_in_flight") == 0,
    )
    assert stack.sidecar.proc.poll() is None, stack.sidecar.log()
    with grpc.insecure_channel(stack.grpc_addr, options=CHANNEL_OPTIONS) as ch:
        stub = pb.sidecar_grpc.SidecarStub(ch)
        call = stub.Generate(
            pb.sidecar.GenerateRequest(
                request_id="after-kill",
                session_id="stress",
                prompt="tell me a story",
                sampling=pb.sidecar.SamplingParams(max_tokens=12),
            ),
            timeout=CALL_TIMEOUT_S,
        )
        events: List = list(call)
        assert call.code() == grpc.StatusCode.OK
    assert [ev.WhichOneof("kind") for ev in events] == ["chunk"] * 12 + ["done"]
    assert events[-1].done.usage.completion_tokens == 12

    # 4. The metrics counted it all: every success, and the killed streams.
    after = scrape(stack.metrics_url)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    ok_calls = grew("sidecar_requests_total", rpc="Generate", code="OK")
    assert ok_calls >= TOTAL_CALLS + 1
    assert grew("sidecar_requests_total") >= TOTAL_CALLS + 1 + KILLED_STREAMS
    assert grew("sidecar_tokens_processed_total") >= TOTAL_CALLS + 12
    assert grew("sidecar_request_duration_seconds_count", rpc="Generate") >= (
        TOTAL_CALLS + 1 + KILLED_STREAMS
    )
    assert total(after, "sidecar_worker_connection_status", status="connected") == 1
    assert stack.sidecar.proc.poll() is None, stack.sidecar.log()
