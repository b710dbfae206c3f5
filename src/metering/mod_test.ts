import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { defaultConfig } from "../config/schema.ts";
import type { GenerationOutcome } from "../gateway/generation.ts";
import { createLogger } from "../log/logger.ts";
import { SidecarMetrics } from "../metrics/registry.ts";
import type { LiveGeneration } from "./checkpoint.ts";
import { startMeter } from "./mod.ts";
import { UsageQueue } from "./queue.ts";
import { type PartialUsage, uuidv7 } from "./record.ts";
import { FakeClock } from "../util/clock.ts";
import { runTimers, tempDbPath, turn } from "./test_support.ts";

function config(path: string) {
  const c = defaultConfig();
  c.metering.usageDbPath = path;
  c.metering.billingEndpoint = null;
  c.metering.instanceId = "pod-t";
  c.metering.checkpointIntervalMs = 1000;
  return c;
}

function outcome(over: Partial<GenerationOutcome> = {}): GenerationOutcome {
  const started = Date.now() - 2000;
  return {
    recordId: uuidv7(started),
    requestId: "r-1",
    sessionId: "s-1",
    modelId: "m-1",
    billingLabels: { customer: "acme" },
    finishReason: "stop",
    promptTokens: 4,
    completionTokens: 10,
    workerCompletionTokens: 10,
    startedAtMs: started,
    endedAtMs: started + 1500,
    error: null,
    ...over,
  };
}

async function counter(metrics: SidecarMetrics, name: string) {
  const text = await metrics.render();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return Number(line?.split(" ")[1] ?? NaN);
}

/** A generation in flight whose usage the test moves by hand. */
class FakeLive implements LiveGeneration {
  usage: PartialUsage;
  constructor(requestId: string) {
    const started = Date.now() - 500;
    this.usage = {
      recordId: uuidv7(started),
      requestId,
      sessionId: "s-live",
      modelId: "m-1",
      billingLabels: { team: "ü" },
      promptTokens: 3,
      completionTokens: 0,
      startedAtMs: started,
    };
  }
  partialUsage(): PartialUsage {
    return { ...this.usage };
  }
}

Deno.test("a record that cannot be committed is logged in full, counted, and refuses generations until a commit works", async () => {
  const clock = new FakeClock();
  const lines: string[] = [];
  const log = createLogger({ sink: (l) => lines.push(l) });
  const metrics = new SidecarMetrics();
  const meter = await startMeter(config(await tempDbPath()), metrics, log, {
    clock,
  });

  // Over any size a record may take (a worker-reported model id, say).
  const bad = outcome({ modelId: "m".repeat(70_000) });
  await meter.record(bad);
  equal(await counter(metrics, "sidecar_usage_record_failures_total"), 1);
  equal(await counter(metrics, "sidecar_usage_records_total"), 0);
  const logged = lines.map((l) => JSON.parse(l)).find((l) =>
    l.msg.startsWith("usage record could not be committed")
  );
  ok(logged, lines.join("\n"));
  equal(logged.level, "error");
  deepStrictEqual(Object.keys(logged.record).sort(), [
    "billing_labels",
    "completion_tokens",
    "ended_at",
    "finish_reason",
    "id",
    "model_id",
    "prompt_tokens",
    "request_id",
    "schema",
    "session_id",
    "sidecar_instance",
    "started_at",
    "worker_completion_tokens",
  ]);
  equal(logged.record.id, bad.recordId);
  equal(logged.record.model_id, bad.modelId);
  equal(logged.record.completion_tokens, 10);
  equal(logged.record.sidecar_instance, "pod-t");

  const refusal = meter.admit();
  equal(refusal?.kind, "metering_backlog");
  equal(refusal?.grpcCode, 14);
  ok((refusal?.retryAfterMs ?? 0) > 0);
  ok(meter.refusing);

  // The queue probes the database a second later, and it works.
  await runTimers(
    clock,
    (async () => {
      while (meter.admit() !== null) await turn(1);
    })(),
  );
  ok(!meter.refusing);
  await meter.record(outcome({ recordId: uuidv7() }));
  equal(await counter(metrics, "sidecar_usage_records_total"), 1);
  await meter.shutdown(1000);
});

Deno.test("checkpoints follow live generations; a final record replaces its checkpoint; a crash leaves interrupted records", async () => {
  const clock = new FakeClock();
  const path = await tempDbPath();
  const metrics = new SidecarMetrics();
  const a = new FakeLive("live-a");
  const b = new FakeLive("live-b");
  const live = new Set<LiveGeneration>([a, b]);
  const meter = await startMeter(
    config(path),
    metrics,
    createLogger({ sink: () => {} }),
    { clock, live: { generations: () => live } },
  );

  a.usage.completionTokens = 5;
  b.usage.completionTokens = 2;
  clock.advance(1000);
  await turn(5);
  a.usage.completionTokens = 9;
  clock.advance(1000);
  await turn(5);

  // a ends: its record (12 tokens, same id) is committed.
  await meter.record(outcome({
    recordId: a.usage.recordId,
    requestId: "live-a",
    completionTokens: 12,
  }));
  live.delete(a);
  b.usage.completionTokens = 4;
  clock.advance(1000);
  await turn(5);
  // The sidecar dies with b in flight: the queue closes without its record.
  await meter.shutdown(100);

  const peek = await UsageQueue.open(path, { recoverInflight: false });
  const inflight = await peek.inflight();
  await peek.close();
  deepStrictEqual(inflight.map((r) => [r.request_id, r.completion_tokens]), [
    ["live-b", 4],
  ]);

  const next = await UsageQueue.open(path);
  equal(next.recovered, 1);
  const records = await next.peek(10);
  await next.close();
  const byRequest = new Map(records.map((r) => [r.request_id, r]));
  equal(records.length, 2);
  equal(byRequest.get("live-a")?.id, a.usage.recordId);
  equal(byRequest.get("live-a")?.completion_tokens, 12);
  equal(byRequest.get("live-a")?.finish_reason, "stop");
  const rb = byRequest.get("live-b")!;
  equal(rb.id, b.usage.recordId);
  equal(rb.finish_reason, "interrupted");
  equal(rb.completion_tokens, 4);
  equal(rb.prompt_tokens, 3);
  equal(rb.worker_completion_tokens, null);
  deepStrictEqual(rb.billing_labels, { team: "ü" });
  equal(rb.sidecar_instance, "pod-t");
  ok(rb.started_at <= rb.ended_at);
});

Deno.test("a full queue is counted again while full, so records drained elsewhere free room", async () => {
  const clock = new FakeClock();
  const path = await tempDbPath();
  const c = config(path);
  c.metering.offlineQueueSize = 2;
  const meter = await startMeter(
    c,
    new SidecarMetrics(),
    createLogger({ sink: () => {} }),
    { clock },
  );
  await meter.record(outcome({ recordId: uuidv7() }));
  await meter.record(outcome({ recordId: uuidv7() }));
  equal(meter.admit()?.kind, "metering_backlog");

  const other = await UsageQueue.open(path, { recoverInflight: false });
  equal(await other.drain(() => Promise.resolve()), 2);
  await other.close();

  clock.advance(1000);
  meter.admit();
  for (let i = 0; i < 100 && meter.refusing; i++) await turn(1);
  equal(meter.admit(), null);
  await meter.shutdown(100);
});

Deno.test("a usage queue that cannot be read keeps its age gauge, and the scrape still renders", async () => {
  const lines: string[] = [];
  const log = createLogger({ sink: (l) => lines.push(l) });
  const metrics = new SidecarMetrics();
  const meter = await startMeter(config(await tempDbPath()), metrics, log);
  await meter.record(outcome({ recordId: uuidv7(Date.now() - 5000) }));
  const age = await counter(metrics, "sidecar_usage_queue_oldest_age_seconds");
  ok(age >= 5, `age ${age}`);
  // Shutdown closes the queue; a scrape may still come in after it.
  await meter.shutdown(1000);
  const after = await counter(
    metrics,
    "sidecar_usage_queue_oldest_age_seconds",
  );
  equal(after, age);
  ok(
    lines.some((l) => l.includes("usage queue age could not be read")),
    lines.join("\n"),
  );
});
