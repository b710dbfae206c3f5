import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { silentLogger } from "../log/logger.ts";
import { FakeClock } from "../util/clock.ts";
import { backoffDelayMs } from "../worker/backoff.ts";
import { parseRetryAfter } from "./answers.ts";
import type { UsageRecord } from "./record.ts";
import {
  BillingReporter,
  type ReporterOptions,
  type ReporterQueue,
  type SendFailureKind,
} from "./reporter.ts";
import { runTimers, step, testRecord, turn } from "./test_support.ts";

/** An in-memory queue; `failAck`/`failSetAside` throw like a broken KV. */
class MemQueue implements ReporterQueue {
  pending: UsageRecord[];
  aside: { record: UsageRecord; status: number }[] = [];
  failAck = 0;
  failSetAside = 0;

  constructor(n: number, make = (_i: number) => testRecord()) {
    this.pending = Array.from({ length: n }, (_, i) => make(i));
  }

  get depth(): number {
    return this.pending.length;
  }

  peek(limit: number): Promise<UsageRecord[]> {
    return Promise.resolve(this.pending.slice(0, limit));
  }

  ack(ids: string[]): Promise<void> {
    if (this.failAck > 0) {
      this.failAck--;
      return Promise.reject(new Error("database is locked"));
    }
    const gone = new Set(ids);
    this.pending = this.pending.filter((r) => !gone.has(r.id));
    return Promise.resolve();
  }

  setAside(record: UsageRecord, status: number): Promise<void> {
    if (this.failSetAside > 0) {
      this.failSetAside--;
      return Promise.reject(new Error("database is locked"));
    }
    this.pending = this.pending.filter((r) => r.id !== record.id);
    this.aside.push({ record, status });
    return Promise.resolve();
  }
}

/** One request the fake endpoint saw. */
interface Seen {
  at: number;
  records: UsageRecord[];
}

/** A billing endpoint: `answer` decides each response (or throws). */
function fakeEndpoint(
  clock: FakeClock,
  answer: (records: UsageRecord[], n: number) => Response | Promise<Response>,
) {
  const seen: Seen[] = [];
  const fetchFn = (async (_url: string | URL | Request, init?: RequestInit) => {
    const records = JSON.parse(String(init!.body)).records as UsageRecord[];
    seen.push({ at: clock.now(), records });
    return await answer(records, seen.length);
  }) as typeof fetch;
  return { seen, fetch: fetchFn };
}

function reporterWith(
  queue: MemQueue,
  clock: FakeClock,
  fetchFn: typeof fetch,
  over: Partial<ReporterOptions> = {},
) {
  const failures: SendFailureKind[] = [];
  let sent = 0;
  let setAside = 0;
  const reporter = new BillingReporter({
    endpoint: "http://billing.test/v1/usage",
    format: "json",
    instance: "test",
    batchIntervalMs: 10_000,
    batchMaxRecords: 16,
    requestTimeoutMs: 5_000,
    queue,
    logger: silentLogger,
    clock,
    fetch: fetchFn,
    onFailure: (k) => failures.push(k),
    onSent: (n) => (sent += n),
    onSetAside: (n) => (setAside += n),
    ...over,
  });
  return {
    reporter,
    failures,
    get sent() {
      return sent;
    },
    get setAside() {
      return setAside;
    },
  };
}

/** Fires timers (with I/O in between) until `cond` holds. */
async function stepUntil(clock: FakeClock, cond: () => boolean) {
  for (let i = 0; i < 500 && !cond(); i++) {
    await turn();
    if (!cond()) step(clock);
  }
  await turn();
  ok(cond(), "condition not reached");
}

const ok200 = () => Response.json({ ok: true });

Deno.test("a full batch is sent at once, before the batch interval", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(3);
  const ep = fakeEndpoint(clock, ok200);
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await turn();
  equal(ep.seen.length, 0);

  // The queue fills to batchMaxRecords; the meter nudges the reporter.
  queue.pending.push(...new MemQueue(13).pending);
  t.reporter.nudge();
  await turn();
  equal(ep.seen.length, 1);
  equal(ep.seen[0].records.length, 16);
  equal(ep.seen[0].at, 0, "no time passed");
  equal(queue.depth, 0);
  equal(t.sent, 16);
  await t.reporter.stop();
});

Deno.test("records are sent every batch interval", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(2);
  const ep = fakeEndpoint(clock, ok200);
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => ep.seen.length === 1);
  equal(ep.seen[0].at, 10_000);
  equal(queue.depth, 0);
  await t.reporter.stop();
});

Deno.test("a network error is retried within the same run after a backoff, and nothing is lost", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(4);
  const ep = fakeEndpoint(clock, (_r, n) => {
    if (n === 1) throw new TypeError("connection refused");
    return ok200();
  });
  const t = reporterWith(queue, clock, ep.fetch, { random: () => 0 });
  t.reporter.start();
  await stepUntil(clock, () => ep.seen.length === 2);
  deepStrictEqual(t.failures, ["network"]);
  equal(
    ep.seen[1].at - ep.seen[0].at,
    backoffDelayMs(1, { baseDelayMs: 1000, maxDelayMs: 60_000 }),
  );
  deepStrictEqual(
    ep.seen[1].records.map((r) => r.id),
    ep.seen[0].records.map((r) => r.id),
  );
  await turn();
  equal(queue.depth, 0);
  equal(t.reporter.failures, 0);
  await t.reporter.stop();
});

/** Gaps between the first 10 attempts against an endpoint that always fails. */
async function backoffGaps(random?: () => number): Promise<number[]> {
  const clock = new FakeClock();
  const queue = new MemQueue(1);
  const ep = fakeEndpoint(clock, () => new Response("down", { status: 500 }));
  const t = reporterWith(queue, clock, ep.fetch, { random });
  t.reporter.start();
  await stepUntil(clock, () => ep.seen.length === 10);
  await t.reporter.stop();
  ok(t.failures.every((k) => k === "http_5xx"));
  equal(queue.depth, 1);
  return ep.seen.slice(1).map((s, k) => s.at - ep.seen[k].at);
}

Deno.test("backoff waits exactly 1 s before the first retry, then a step that doubles to a 60 s cap", async () => {
  // Jitter at its lowest, then at its highest: each later wait lies in
  // [max(1 s, step / 2), step], the step doubling from 2 s up to 60 s.
  deepStrictEqual(await backoffGaps(() => 0), [
    1000,
    1000,
    2000,
    4000,
    8000,
    16_000,
    30_000,
    30_000,
    30_000,
  ]);
  deepStrictEqual(await backoffGaps(() => 0.999_999), [
    1000,
    2000,
    4000,
    8000,
    16_000,
    32_000,
    60_000,
    60_000,
    60_000,
  ]);
});

Deno.test("backoff with random jitter stays within each step and never waits under 1 s", async () => {
  const gaps = await backoffGaps();
  equal(gaps[0], 1000, "the first retry waits exactly the base delay");
  for (let k = 2; k <= gaps.length; k++) {
    const step = Math.min(60_000, 1000 * 2 ** (k - 1));
    const floor = Math.max(1000, step / 2);
    const gap = gaps[k - 1];
    ok(
      gap >= floor && gap <= step,
      `retry ${k} waited ${gap} ms, outside [${floor}, ${step}]`,
    );
  }
});

Deno.test("Retry-After in seconds is waited once, with no backoff after it", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(2);
  const ep = fakeEndpoint(
    clock,
    (_r, n) =>
      n === 1
        ? new Response("busy", { status: 503, headers: { "retry-after": "7" } })
        : ok200(),
  );
  const t = reporterWith(queue, clock, ep.fetch, { random: () => 0.99 });
  t.reporter.start();
  await stepUntil(clock, () => ep.seen.length === 2);
  equal(ep.seen[1].at - ep.seen[0].at, 7_000);
  await turn();
  equal(queue.depth, 0);
  await t.reporter.stop();
});

Deno.test("Retry-After as an HTTP-date is honoured", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(1);
  const when = new Date(Date.now() + 20_000).toUTCString();
  const ep = fakeEndpoint(
    clock,
    (_r, n) =>
      n === 1
        ? new Response("slow down", {
          status: 429,
          headers: { "retry-after": when },
        })
        : ok200(),
  );
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => ep.seen.length === 2);
  const gap = ep.seen[1].at - ep.seen[0].at;
  // The date has whole seconds: up to 1 s earlier than asked.
  ok(gap > 18_000 && gap <= 20_000, `waited ${gap} ms`);
  deepStrictEqual(t.failures, ["http_429"]);
  await t.reporter.stop();
});

Deno.test("parseRetryAfter reads delay-seconds and HTTP-dates, and ignores the rest", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  equal(parseRetryAfter("120", now), 120_000);
  equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:30 GMT", now), 30_000);
  equal(parseRetryAfter("Wed, 31 Dec 2025 23:59:00 GMT", now), undefined);
  equal(parseRetryAfter("0", now), undefined);
  equal(parseRetryAfter("soon", now), undefined);
  equal(parseRetryAfter(null, now), undefined);
});

Deno.test("a batch refused in every part is an endpoint failure: nothing is set aside, all is kept", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(8);
  const ep = fakeEndpoint(clock, () => new Response("bad", { status: 400 }));
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => t.reporter.failures === 2);
  equal(queue.depth, 8);
  equal(queue.aside.length, 0);
  equal(t.setAside, 0);
  // Each attempt split the batch down to single records (15 requests).
  equal(ep.seen.length, 30);
  ok(t.failures.every((k) => k === "http_4xx"));
  await t.reporter.stop();
});

Deno.test("splitting a large batch the endpoint refuses whole stops after a bounded number of requests", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(500);
  const ep = fakeEndpoint(clock, () => new Response("bad", { status: 422 }));
  const t = reporterWith(queue, clock, ep.fetch, { batchMaxRecords: 500 });
  t.reporter.start();
  await stepUntil(clock, () => t.reporter.failures === 1);
  // A full split would take 999 requests.
  ok(ep.seen.length <= 70, `${ep.seen.length} requests`);
  equal(queue.depth, 500);
  equal(queue.aside.length, 0);
  await t.reporter.stop();
});

for (const status of [401, 403, 404, 405, 407, 415]) {
  Deno.test(`HTTP ${status} is an endpoint failure: the batch is neither split nor set aside`, async () => {
    const clock = new FakeClock();
    const queue = new MemQueue(8);
    const ep = fakeEndpoint(clock, () => new Response("no", { status }));
    const t = reporterWith(queue, clock, ep.fetch);
    t.reporter.start();
    await stepUntil(clock, () => t.reporter.failures === 2);
    equal(ep.seen.length, 2, "one request per attempt");
    ok(ep.seen.every((s) => s.records.length === 8));
    equal(queue.depth, 8);
    equal(queue.aside.length, 0);
    deepStrictEqual(t.failures, ["http_4xx", "http_4xx"]);
    await t.reporter.stop();
  });
}

Deno.test("records refused among accepted ones are set aside, even at the head of the queue", async () => {
  const clock = new FakeClock();
  const poison = new Set([0, 1, 5]);
  const queue = new MemQueue(
    12,
    (i) =>
      testRecord({ billing_labels: { poison: poison.has(i) ? "1" : "0" } }),
  );
  const bad = queue.pending.filter((_, i) => poison.has(i)).map((r) => r.id);
  const ep = fakeEndpoint(
    clock,
    (records) =>
      records.some((r) => r.billing_labels.poison === "1")
        ? new Response("unknown customer", { status: 400 })
        : ok200(),
  );
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => queue.depth === 0);
  deepStrictEqual(queue.aside.map((a) => a.record.id).sort(), bad.sort());
  ok(queue.aside.every((a) => a.status === 400));
  equal(t.setAside, 3);
  equal(t.sent, 9);
  equal(t.reporter.failures, 0);
  await t.reporter.stop();
});

Deno.test("413 splits the batch until the parts are small enough; nothing is set aside", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(16);
  const ep = fakeEndpoint(
    clock,
    (records) =>
      records.length > 3 ? new Response("too large", { status: 413 }) : ok200(),
  );
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => queue.depth === 0);
  equal(queue.aside.length, 0);
  equal(t.sent, 16);
  ok(ep.seen.filter((s) => s.records.length <= 3).length >= 6);
  await t.reporter.stop();
});

Deno.test("409 Conflict acknowledges the batch: billing already holds those ids", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(5);
  const ep = fakeEndpoint(
    clock,
    () => new Response("duplicate", { status: 409 }),
  );
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => queue.depth === 0);
  equal(ep.seen.length, 1);
  equal(t.sent, 5);
  deepStrictEqual(t.failures, []);
  await t.reporter.stop();
});

Deno.test("408 is counted as a timeout, not as a 5xx", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(1);
  const ep = fakeEndpoint(
    clock,
    (_r, n) => n === 1 ? new Response("slow", { status: 408 }) : ok200(),
  );
  const t = reporterWith(queue, clock, ep.fetch);
  t.reporter.start();
  await stepUntil(clock, () => queue.depth === 0);
  deepStrictEqual(t.failures, ["timeout"]);
  await t.reporter.stop();
});

Deno.test("a queue error in ack or setAside is caught, counted and backed off; the loop goes on", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(
    4,
    (i) => testRecord({ billing_labels: { poison: i === 2 ? "1" : "0" } }),
  );
  queue.failAck = 1;
  queue.failSetAside = 1;
  const ep = fakeEndpoint(
    clock,
    (records) =>
      records.some((r) => r.billing_labels.poison === "1")
        ? new Response("refused", { status: 400 })
        : ok200(),
  );
  const t = reporterWith(queue, clock, ep.fetch, { random: () => 0 });
  t.reporter.start();
  await stepUntil(
    clock,
    () => t.failures.filter((k) => k === "queue").length === 2,
  );
  // The refused record is left alone: alone, its refusal proves nothing
  // against it. A new record gives it an accepted sibling.
  await stepUntil(clock, () => queue.depth === 1 && t.reporter.failures > 0);
  equal(queue.aside.length, 0);
  queue.pending.push(testRecord());
  await stepUntil(clock, () => queue.depth === 0);
  equal(queue.aside.length, 1);
  // Records whose ack failed were sent again, under the same ids.
  const ids = ep.seen.flatMap((s) => s.records.map((r) => r.id));
  ok(new Set(ids).size === 5 && ids.length > 5);
  equal(t.reporter.failures, 0);
  await t.reporter.stop();
});

/** A fetch that never answers, but honours its abort signal. */
function hangingFetch(calls: { n: number }): typeof fetch {
  return ((_u: string | URL | Request, init?: RequestInit) => {
    calls.n++;
    return new Promise<Response>((_resolve, reject) => {
      init!.signal!.addEventListener(
        "abort",
        () => reject(init!.signal!.reason),
      );
    });
  }) as typeof fetch;
}

Deno.test("stop() abandons a request in flight at once; its records stay queued", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(3);
  const calls = { n: 0 };
  const t = reporterWith(queue, clock, hangingFetch(calls), {
    requestTimeoutMs: 10_000,
  });
  t.reporter.start();
  await stepUntil(clock, () => calls.n === 1);
  const at = clock.now();
  await t.reporter.stop();
  equal(clock.now(), at, "stop did not wait for the request timeout");
  equal(queue.depth, 3);
  deepStrictEqual(t.failures, [], "an abandoned request is not a failure");
});

Deno.test("flush ends within its deadline even when a request would take longer", async () => {
  const clock = new FakeClock();
  const queue = new MemQueue(3);
  const calls = { n: 0 };
  const t = reporterWith(queue, clock, hangingFetch(calls), {
    requestTimeoutMs: 10_000,
  });
  const left = await runTimers(clock, t.reporter.flush(3_000));
  equal(clock.now(), 3_000);
  equal(left, 3);
  equal(calls.n, 1);
  deepStrictEqual(t.failures, ["timeout"]);
});
