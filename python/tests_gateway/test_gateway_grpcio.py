"""A gateway written with grpcio against the real sidecar and simulator.

Every call goes over a real HTTP/2 connection to `main.ts`, which forwards
generations to `python -m cy_worker.sim` (see conftest.py). The simulator's
per-request directives (`[[sim ...]]` in the prompt) make a generation long,
or make it hang, without any timing in the assertions.
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Callable, List

import grpc
import pytest

# Every call has a deadline, so that a broken sidecar fails a test instead
# of hanging it.
CALL_TIMEOUT_S = 30.0

# A generation that outlives any test unless it is cancelled.
ENDLESS = "[[sim tokens=1000000 itl_ms=5]]"


def request(pb, request_id: str, prompt: str = "tell me a story", max_tokens: int = 12, **fields):
    """A GenerateRequest with the given id and prompt."""
    return pb.sidecar.GenerateRequest(
        request_id=request_id,
        session_id="gateway-test",
        prompt=prompt,
        sampling=pb.sidecar.SamplingParams(max_tokens=max_tokens),
        **fields,
    )


def token_ids(events) -> List[int]:
    """The token ids of every chunk event, in order."""
    return [i for ev in events if ev.WhichOneof("kind") == "chunk" for i in ev.chunk.token_ids]


def assert_chunks_then_done(events, request_id: str, count: int) -> None:
    """`count` chunks, then one `done` whose usage counts the ids received."""
    kinds = [ev.WhichOneof("kind") for ev in events]
    assert kinds == ["chunk"] * count + ["done"]
    assert all(ev.request_id == request_id for ev in events)

    done = events[-1].done
    assert done.finish_reason == "length"
    assert done.model_id == "sim-1"
    assert done.usage.completion_tokens == len(token_ids(events)) == count
    assert done.usage.prompt_tokens == 4  # "tell me a story"


def test_generate_streams_chunks_then_one_done(pb, stub):
    call = stub.Generate(request(pb, "gen-1", max_tokens=12), timeout=CALL_TIMEOUT_S)
    events = list(call)

    assert_chunks_then_done(events, "gen-1", 12)
    assert "".join(ev.chunk.text for ev in events[:-1]).strip()
    assert call.code() == grpc.StatusCode.OK


def test_generate_with_the_asyncio_api(pb, sidecar_addr, channel_options):
    async def body():
        async with grpc.aio.insecure_channel(sidecar_addr, options=channel_options) as ch:
            stub = pb.sidecar_grpc.SidecarStub(ch)
            call = stub.Generate(request(pb, "aio-1", max_tokens=12), timeout=CALL_TIMEOUT_S)
            events = [ev async for ev in call]
            return events, await call.code()

    events, code = asyncio.run(body())

    assert_chunks_then_done(events, "aio-1", 12)
    assert code == grpc.StatusCode.OK


class SessionCall:
    """A Session call driven one message and one event at a time."""

    def __init__(self, stub) -> None:
        self.outgoing: queue.Queue = queue.Queue()
        self.events: list = []
        self.call = stub.Session(self._requests(), timeout=CALL_TIMEOUT_S)

    def _requests(self):
        while True:
            message = self.outgoing.get()
            if message is None:
                return  # half-close
            yield message

    def send(self, message) -> None:
        self.outgoing.put(message)

    def close_send(self) -> None:
        self.outgoing.put(None)

    def until(self, wanted: Callable):
        """Reads events until one satisfies `wanted`; returns it."""
        for ev in self.call:
            self.events.append(ev)
            if wanted(ev):
                return ev
        raise AssertionError(f"the stream ended first; events: {self.events}")

    def of(self, request_id: str) -> list:
        return [ev for ev in self.events if ev.request_id == request_id]


def is_event(request_id: str, kind: str) -> Callable:
    return lambda ev: ev.request_id == request_id and ev.WhichOneof("kind") == kind


def test_session_interleaves_two_generations_and_cancels_one(pb, stub):
    s = SessionCall(stub)
    try:
        # "long" streams until cancelled; "short" starts and ends inside it.
        endless = request(pb, "long", f"go on {ENDLESS}", max_tokens=0)
        s.send(pb.sidecar.SessionRequest(generate=endless))
        s.until(is_event("long", "chunk"))
        s.send(pb.sidecar.SessionRequest(generate=request(pb, "short", max_tokens=6)))
        s.until(is_event("short", "done"))
        s.until(is_event("long", "chunk"))

        s.send(pb.sidecar.SessionRequest(cancel=pb.sidecar.CancelRequest(request_id="long")))
        s.until(is_event("long", "done"))
        s.close_send()
        rest = list(s.call)
    finally:
        s.close_send()
        s.call.cancel()

    assert rest == []
    assert s.call.code() == grpc.StatusCode.OK

    ids = [ev.request_id for ev in s.events]
    first_short, last_short = ids.index("short"), len(ids) - 1 - ids[::-1].index("short")
    assert "long" in ids[:first_short] and "long" in ids[last_short:]
    assert_chunks_then_done(s.of("short"), "short", 6)

    long_events = s.of("long")
    assert [ev.WhichOneof("kind") for ev in long_events[:-1]] == ["chunk"] * (len(long_events) - 1)
    done = long_events[-1].done
    assert done.finish_reason == "cancelled"
    assert done.usage.completion_tokens == len(token_ids(long_events)) >= 2


def test_session_reports_an_invalid_generation_and_stays_open(pb, stub):
    s = SessionCall(stub)
    try:
        s.send(pb.sidecar.SessionRequest(generate=request(pb, "bad", prompt="")))
        error = s.until(is_event("bad", "error")).error
        s.send(pb.sidecar.SessionRequest(generate=request(pb, "good", max_tokens=3)))
        s.until(is_event("good", "done"))
        s.close_send()
        rest = list(s.call)
    finally:
        s.close_send()
        s.call.cancel()

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error.message.startswith("prompt:")
    assert rest == []
    assert s.call.code() == grpc.StatusCode.OK


def test_get_status_reports_the_connected_simulator(pb, stub):
    status = stub.GetStatus(pb.sidecar.GetStatusRequest(), timeout=CALL_TIMEOUT_S)

    assert status.state == pb.sidecar.WorkerStatus.CONNECTED
    assert status.model_id == "sim-1"
    assert status.max_concurrency == 64
    assert status.protocol_version >= 1
    assert status.sidecar_version


@pytest.mark.parametrize("service", ["", "cy.sidecar.v1.Sidecar"])
def test_health_check_is_serving(pb, channel, service):
    health = pb.health_grpc.HealthStub(channel)
    answer = health.Check(pb.health.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)

    assert answer.status == pb.health.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(pb, channel):
    health = pb.health_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(pb.health.HealthCheckRequest(service="nope"), timeout=CALL_TIMEOUT_S)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# (case name, fields over a valid request, the field the details must name)
INVALID_REQUESTS = [
    ("empty request_id", {"request_id": ""}, "request_id"),
    ("request_id with a space", {"request_id": "a b"}, "request_id"),
    ("no prompt and no messages", {"prompt": ""}, "prompt"),
    ("both prompt and messages", {"messages": [("user", "hi")]}, "prompt"),
    ("a message without a role", {"prompt": "", "messages": [("", "hi")]}, "messages[0].role"),
    ("top_p above 1", {"sampling": {"top_p": 1.5}}, "sampling.top_p"),
    ("negative temperature", {"sampling": {"temperature": -1.0}}, "sampling.temperature"),
    ("an empty stop sequence", {"sampling": {"stop": ["ok", ""]}}, "sampling.stop[1]"),
]


@pytest.mark.parametrize(
    "fields, field", [case[1:] for case in INVALID_REQUESTS], ids=[c[0] for c in INVALID_REQUESTS]
)
def test_an_invalid_request_gets_invalid_argument_naming_the_field(pb, stub, fields, field):
    req = request(pb, "invalid-1")
    for name, value in fields.items():
        if name == "messages":
            req.messages.extend(pb.sidecar.ChatMessage(role=r, content=c) for r, c in value)
        elif name == "sampling":
            req.sampling.MergeFrom(pb.sidecar.SamplingParams(**value))
        else:
            setattr(req, name, value)

    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Generate(req, timeout=CALL_TIMEOUT_S))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}:")


def test_generate_past_its_deadline_is_deadline_exceeded_and_freed(pb, stub):
    # Two tokens, then the simulated model hangs until the call is cancelled.
    hangs = request(pb, "deadline-1", "wait [[sim tokens=100 fault=hang after=2]]", max_tokens=0)

    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Generate(hangs, timeout=2.0))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The sidecar cancels the worker's generation once the deadline passes.
    deadline = time.monotonic() + 20.0
    while True:
        status = stub.GetStatus(pb.sidecar.GetStatusRequest(), timeout=CALL_TIMEOUT_S)
        if status.in_flight == 0:
            break
        assert time.monotonic() < deadline, f"still in flight: {status}"
        time.sleep(0.1)
