import { equal } from "node:assert/strict";
import client from "prom-client";
import { FakeClock } from "../util/clock.ts";
import { OVERFLOW_SESSION, SessionSeries } from "./session_series.ts";

function setup(maxSeries = 3) {
  const registry = new client.Registry();
  const counter = new client.Counter({
    name: "t_tokens_total",
    help: "t",
    labelNames: ["session_id", "model_id"] as const,
    registers: [registry],
  });
  const clock = new FakeClock();
  const series = new SessionSeries({ counter, ttlMs: 1000, maxSeries, clock });
  const value = async (session: string) =>
    (await counter.get()).values.find((v) => v.labels.session_id === session)
      ?.value;
  return { series, clock, value };
}

Deno.test("session series idle past the TTL are removed, busy ones stay", async () => {
  const { series, clock, value } = setup();
  const a = series.acquire("a", "m");
  const b = series.acquire("b", "m");
  a.inc(3);
  b.inc(2);
  a.release();

  clock.advance(1500);
  series.sweep();
  equal(series.size, 1);
  equal(await value("a"), undefined);
  equal(await value("b"), 2);
});

Deno.test("past maxSeries the least recently used idle series makes room", async () => {
  const { series, value } = setup(2);
  const a = series.acquire("a", "m");
  a.inc(1);
  a.release();
  const b = series.acquire("b", "m");
  const c = series.acquire("c", "m");
  c.inc(5);
  equal(series.size, 2);
  equal(await value("a"), undefined);
  equal(await value("c"), 5);
  b.release();
});

Deno.test("when every series is busy, tokens are counted under the overflow session", async () => {
  const { series, value } = setup(1);
  series.acquire("a", "m");
  const b = series.acquire("b", "m");
  b.inc(4);
  equal(series.size, 1);
  equal(await value(OVERFLOW_SESSION), 4);
});
