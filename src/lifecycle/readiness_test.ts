import {
  deepStrictEqual as assertEquals,
  equal,
  throws,
} from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import type { WorkerInfo, WorkerState } from "../worker/state.ts";
import {
  decideServing,
  describeVerdict,
  Readiness,
  type ServingVerdict,
  type WorkerView,
} from "./readiness.ts";

const INFO: WorkerInfo = {
  modelId: "m",
  maxConcurrency: 4,
  protocolVersion: 1,
  worker: "test",
};
const READY: WorkerState = { state: "ready", since: 0, info: INFO };
const DOWN: WorkerState = {
  state: "disconnected",
  since: 0,
  attempt: 1,
  retryAt: 100,
  lastError: "refused",
};

/** A worker client stand-in whose state the test sets. */
class FakeWorker implements WorkerView {
  state: WorkerState = READY;
  accepting = true;
  #listeners: ((s: WorkerState) => void)[] = [];

  onStateChange(listener: (s: WorkerState) => void): void {
    this.#listeners.push(listener);
  }

  set(state: WorkerState, accepting = state.state === "ready"): void {
    this.state = state;
    this.accepting = accepting;
    for (const l of this.#listeners) l(state);
  }
}

function bed() {
  const clock = new FakeClock();
  const worker = new FakeWorker();
  let refusing = false;
  const readiness = new Readiness({
    worker,
    meterRefusing: () => refusing,
    meterPollMs: 250,
    clock,
  });
  const heard: ServingVerdict[] = [];
  readiness.onChange((v) => heard.push(v));
  return {
    clock,
    worker,
    readiness,
    heard,
    setRefusing: (v: boolean) => (refusing = v),
  };
}

Deno.test("decideServing serves only with the worker ready and accepting, no shutdown and the meter admitting", () => {
  const base = {
    worker: READY,
    workerAccepting: true,
    shuttingDown: false,
    meterRefusing: false,
  };
  assertEquals(decideServing(base), { serving: true, reasons: [] });
  assertEquals(decideServing({ ...base, worker: DOWN }), {
    serving: false,
    reasons: ["worker_not_ready"],
  });
  assertEquals(decideServing({ ...base, meterRefusing: true }), {
    serving: false,
    reasons: ["metering_refusing"],
  });
  assertEquals(decideServing({ ...base, shuttingDown: true }), {
    serving: false,
    reasons: ["shutting_down"],
  });
  // A ready worker whose client refuses new work: the client only does so
  // for shutdown, even before the sidecar flags it.
  assertEquals(decideServing({ ...base, workerAccepting: false }), {
    serving: false,
    reasons: ["shutting_down"],
  });
  assertEquals(
    decideServing({
      worker: { state: "stopped", since: 0 },
      workerAccepting: false,
      shuttingDown: true,
      meterRefusing: true,
    }).reasons,
    ["shutting_down", "worker_not_ready", "metering_refusing"],
  );
});

Deno.test("describeVerdict names every reason and is empty while serving", () => {
  equal(describeVerdict({ serving: true, reasons: [] }), "");
  equal(
    describeVerdict({
      serving: false,
      reasons: ["shutting_down", "metering_refusing"],
    }),
    "not taking new generations: the sidecar is shutting down; the usage queue is full or the usage database cannot be written",
  );
});

Deno.test("a worker state change reaches listeners at once, only when serving flips", () => {
  const t = bed();
  t.worker.set(DOWN);
  assertEquals(t.heard.map((v) => v.serving), [false]);
  // Another not-ready state is no news.
  t.worker.set({ state: "connecting", since: 1, attempt: 2 });
  t.worker.set(READY);
  assertEquals(t.heard.map((v) => v.serving), [false, true]);
});

Deno.test("a meter that starts or stops refusing reaches listeners within one poll", () => {
  const t = bed();
  t.readiness.start();
  t.setRefusing(true);
  // Asked directly, the verdict is current before any poll.
  equal(t.readiness.verdict.serving, false);
  t.clock.advance(249);
  equal(t.heard.length, 0);
  t.clock.advance(1);
  assertEquals(t.heard, [{ serving: false, reasons: ["metering_refusing"] }]);

  t.setRefusing(false);
  t.clock.advance(250);
  assertEquals(t.heard.map((v) => v.serving), [false, true]);
  // Polls with nothing new are silent.
  t.clock.advance(10_000);
  equal(t.heard.length, 2);
});

Deno.test("a meter that pushes its changes reaches listeners without waiting for the poll", () => {
  const clock = new FakeClock();
  let refusing = false;
  let changed = () => {};
  const readiness = new Readiness({
    worker: new FakeWorker(),
    meterRefusing: () => refusing,
    meterChanges: (listener) => (changed = listener),
    clock,
  });
  readiness.start();
  const heard: boolean[] = [];
  readiness.onChange((v) => heard.push(v.serving));

  refusing = true;
  changed();
  assertEquals(heard, [false]);
  refusing = false;
  readiness.recheck();
  assertEquals(heard, [false, true]);
  equal(clock.now(), 0);
});

Deno.test("shutdown turns the verdict off at once and for good", () => {
  const t = bed();
  t.readiness.beginShutdown();
  equal(t.readiness.shuttingDown, true);
  assertEquals(t.heard, [{ serving: false, reasons: ["shutting_down"] }]);
  t.worker.set(READY);
  equal(t.readiness.verdict.serving, false);
  equal(t.heard.length, 1);
});

Deno.test("stop ends the poll; an unsubscribed listener hears nothing", () => {
  const t = bed();
  t.readiness.start();
  equal(t.clock.pending, 1);
  t.readiness.stop();
  equal(t.clock.pending, 0);

  const late: boolean[] = [];
  const unsubscribe = t.readiness.onChange((v) => late.push(v.serving));
  unsubscribe();
  t.worker.set(DOWN);
  assertEquals(late, []);
  equal(t.heard.length, 1);
});

Deno.test("Readiness rejects a poll interval that is not a positive number of ms", () => {
  for (const meterPollMs of [0, -1, Number.NaN, Infinity]) {
    throws(
      () =>
        new Readiness({
          worker: new FakeWorker(),
          meterRefusing: () => false,
          meterPollMs,
        }),
      (err: Error) =>
        err instanceof RangeError && err.message.includes(String(meterPollMs)),
    );
  }
});
