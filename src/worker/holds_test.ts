import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import {
  eventually,
  isError,
  Recorder,
  request,
  withClient,
} from "../../tests/helpers/worker_client.ts";
import { Exchange } from "./exchange.ts";
import { hold, type Reloading } from "./holds.ts";
import { UINT32_MAX } from "./messages.ts";

Deno.test("during a reload new generations are held, told the ETA, and resumed", () => {
  const clock = new FakeClock();
  return withClient({ clock }, async ({ client, peer, announceReload }) => {
    await announceReload({ eta_ms: 30000, message: "loading" });

    clock.advance(500);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    const held = await sink.until((e) => "system" in e);
    deepStrictEqual(held, {
      system: "reloading",
      text: "[System] Loading new model, ETA 30s...",
      etaMs: 29_500,
    });

    await peer.send({ type: "status", state: "ready", model_id: "scripted-2" });
    const gen = await peer.expect("generate");
    equal(gen.id, "a");
    await sink.until((e) => "system" in e && e.system === "resumed");
  });
});

Deno.test("during a reload, requests beyond max_held_requests are refused at once with UNAVAILABLE and a pushback", () =>
  withClient({ maxHeldRequests: 2 }, async ({ client, announceReload }) => {
    await announceReload({ eta_ms: 30_000 });

    ok(client.submit(request("a"), new Recorder()).ok);
    ok(client.submit(request("b"), new Recorder()).ok);
    const third = client.submit(request("c"), new Recorder());

    ok(!third.ok);
    equal(third.error.kind, "worker_unavailable");
    equal(third.error.grpcCode, 14);
    match(third.error.message, /2 requests are already held/);
    ok(third.error.retryAfterMs! > 0);
    equal(client.waiting, 2);
  }));

Deno.test("a held request gives up max_hold after it was held, however often the worker re-announces its reload", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    reloadGraceMs: 1000,
    maxHoldMs: 10_000,
  }, async ({ client, peer }) => {
    const announce = async (at: number) => {
      await peer.send({ type: "status", state: "reloading", eta_ms: 5000 });
      await eventually(
        `the reload announced at ${at}`,
        () => client.state.state === "reloading" && client.state.since === at,
      );
    };
    await announce(0);
    const first = new Recorder();
    ok(client.submit(request("a"), first).ok);

    // The worker keeps moving its ETA: each announcement alone would hold
    // "a" until 5 s + 1 s after it.
    clock.advance(4000);
    await announce(4000);
    clock.advance(4000);
    await announce(8000);
    const second = new Recorder();
    ok(client.submit(request("b"), second).ok);

    clock.advance(1750); // t = 9750
    ok(!first.events.some(isError), "a is still held");
    clock.advance(500); // t = 10250: past a's 10 s cap
    const a = first.events.find(isError);
    ok(a, "a failed at its cap");
    equal(a.error.grpcCode, 14);
    match(a.error.message, /after holding this request for 10s/);
    ok(a.error.retryAfterMs! > 0);
    ok(!second.events.some(isError), "b, held later, still waits");

    clock.advance(3750); // t = 14000: b's ETA + grace from the last announcement
    const b = second.events.find(isError);
    ok(b, "b failed once the announced ETA and grace passed");
    match(b.error.message, /taking longer than announced/);
  });
});

Deno.test("a reload announced with the largest eta_ms holds requests and tells them that ETA", () => {
  const clock = new FakeClock();
  return withClient(
    { clock, maxHoldMs: 60_000 },
    async ({ client, peer, announceReload }) => {
      await announceReload({ eta_ms: UINT32_MAX });

      const sink = new Recorder();
      ok(client.submit(request("a"), sink).ok);
      deepStrictEqual(sink.events, [{
        system: "reloading",
        text: `[System] Loading new model, ETA ${
          Math.ceil(UINT32_MAX / 1000)
        }s...`,
        etaMs: UINT32_MAX,
      }]);
      equal(client.waiting, 1);
      ok(!peer.closed);

      // The hold is still capped by max_hold, however far the ETA: the held
      // request gives up then.
      clock.advance(60_250);
      const e = await sink.failure(0);
      match(e.message, /after holding this request for 60s/);
    },
  );
});

Deno.test("the ETA told to a held request is a whole number of ms within uint32, whatever the state says", () => {
  const s: Reloading = {
    state: "reloading",
    since: 0,
    info: {
      modelId: "m",
      maxConcurrency: 1,
      protocolVersion: 1,
      worker: "w",
    },
    etaMs: 2 ** 40,
    holdUntil: 10_000,
    message: "",
  };
  const limits = { reloadGraceMs: 1000, maxHoldMs: 10_000 };
  const far = new Recorder();
  hold(new Exchange(request("far"), far), s, 0.4, limits);
  const near = new Recorder();
  hold(new Exchange(request("near"), near), { ...s, etaMs: 1000.6 }, 0, limits);

  deepStrictEqual(far.events.map((e) => "system" in e && e.etaMs), [
    UINT32_MAX,
  ]);
  deepStrictEqual(near.events, [{
    system: "reloading",
    text: "[System] Loading new model, ETA 2s...",
    etaMs: 1001,
  }]);
});

Deno.test("a request refused because max_held_requests are held gets a whole-millisecond pushback from a fractional clock", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    maxHeldRequests: 1,
    reloadGraceMs: 1000,
  }, async ({ client, announceReload }) => {
    clock.advance(0.4);
    await announceReload({ eta_ms: 30_000 });
    ok(client.submit(request("a"), new Recorder()).ok);

    clock.advance(0.3);
    const refused = client.submit(request("b"), new Recorder());

    ok(!refused.ok);
    // 31 s of hold minus 0.3 ms, rounded up: the pushback is a uint32.
    equal(refused.error.retryAfterMs, 31_000);
  });
});

Deno.test("held requests left without a slot when the worker is back wait queue_timeout from then, as a queue wait", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    welcome: { max_concurrency: 1 },
    queueTimeoutMs: 5000,
    reloadGraceMs: 1000,
    maxHoldMs: 60_000,
  }, async ({ client, peer, announceReload }) => {
    // Held until 10 s + 1 s grace, had the reload gone on.
    await announceReload({ eta_ms: 10_000 });
    const a = new Recorder();
    const b = new Recorder();
    ok(client.submit(request("a"), a).ok);
    ok(client.submit(request("b"), b).ok);

    clock.advance(2000);
    await peer.send({ type: "status", state: "ready", model_id: "m-2" });
    equal((await peer.expect("generate")).id, "a");
    equal(client.waiting, 1, "b waits for a's slot");

    clock.advance(4750); // t = 6750: inside b's queue wait
    ok(!b.events.some(isError), "b still waits");
    clock.advance(500); // t = 7250: 5 s after the worker came back
    const e = b.events.find(isError);
    ok(e, "b gave up its queue wait, long before the hold would have ended");
    equal(e.error.kind, "worker_overloaded");
    match(e.error.message, /no worker slot became free within 5000 ms/);
  });
});
