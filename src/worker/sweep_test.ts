import { equal, match, ok } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import {
  eventually,
  isError,
  Recorder,
  request,
  withClient,
} from "../../tests/helpers/worker_client.ts";

// The sweep's deadlines, driven by a fake clock: idle generations, queue
// timeouts, and cancelled generations the worker never ends.

Deno.test("a generation the worker stops answering fails after the idle timeout", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    requestIdleTimeoutMs: 5000,
  }, async ({ peer, generating }) => {
    const { sink } = await generating("a");

    clock.advance(4000);
    equal(sink.events.length, 0);
    clock.advance(1500);
    equal((await sink.failure()).kind, "worker_hung");
    equal((await peer.expect("cancel")).reason, "idle_timeout");
  });
});

Deno.test("a request waiting for a slot fails with RESOURCE_EXHAUSTED and a pushback after queue_timeout", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    queueTimeoutMs: 2000,
    welcome: { max_concurrency: 1 },
  }, async ({ client, peer }) => {
    ok(client.submit(request("a"), new Recorder()).ok);
    const queued = new Recorder();
    ok(client.submit(request("b"), queued).ok);
    await peer.expect("generate");
    equal(client.waiting, 1);

    clock.advance(1750);
    equal(queued.events.length, 0);
    clock.advance(500);

    const e = queued.events.find(isError);
    ok(e);
    equal(e.error.kind, "worker_overloaded");
    equal(e.error.grpcCode, 8);
    ok(e.error.retryAfterMs! > 0);
    match(e.error.message, /no worker slot became free within 2000 ms/);
    equal(client.waiting, 0);
  });
});

Deno.test("late frames for a cancelled generation whose slot was freed are dropped, and its id is refused until the worker ends it", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    requestIdleTimeoutMs: 1000,
  }, async ({ client, peer, generating }) => {
    const { handle } = await generating("a");
    handle.cancel("client_cancelled");
    await peer.expect("cancel");
    clock.advance(1250);
    equal(client.inFlight, 0, "the slot was freed");

    await peer.send({ type: "chunk", id: "a", text: "late", token_ids: [1] });
    const again = client.submit(request("a"), new Recorder());
    ok(!again.ok);
    equal(again.error.kind, "duplicate_request");

    await peer.send({
      type: "done",
      id: "a",
      finish_reason: "cancelled",
      usage: { prompt_tokens: 1, completion_tokens: 1 },
    });
    await eventually(
      "the id is free again",
      () => client.submit(request("a"), new Recorder()).ok,
    );
    equal((await peer.expect("generate")).id, "a");
    equal(client.state.state, "ready");
    ok(!peer.closed);
    ok(!peer.received.some((m) => m.type === "error"));
  });
});
