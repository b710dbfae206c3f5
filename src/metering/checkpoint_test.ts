import { deepStrictEqual, equal, throws } from "node:assert/strict";
import { silentLogger } from "../log/logger.ts";
import { Checkpointer, type LiveGeneration } from "./checkpoint.ts";
import { type PartialUsage, type UsageRecord, uuidv7 } from "./record.ts";
import { FakeClock } from "../util/clock.ts";
import { turn } from "./test_support.ts";

class Gen implements LiveGeneration {
  usage: PartialUsage | null;
  constructor(requestId: string) {
    this.usage = {
      recordId: uuidv7(),
      requestId,
      sessionId: "s",
      modelId: "m",
      billingLabels: {},
      promptTokens: 2,
      completionTokens: 0,
      startedAtMs: Date.now(),
    };
  }
  partialUsage(): PartialUsage | null {
    return this.usage && { ...this.usage };
  }
}

/** A queue that records each checkpoint call; `fail` fails the next ones. */
function fakeQueue(clock: FakeClock, commitMs = 0) {
  const calls: { at: number; records: UsageRecord[] }[] = [];
  let fail = 0;
  return {
    calls,
    failNext(n: number) {
      fail = n;
    },
    checkpoint(records: UsageRecord[]): Promise<number> {
      calls.push({ at: clock.now(), records });
      const failed = fail > 0 ? (fail--, records.length) : 0;
      if (commitMs === 0) return Promise.resolve(failed);
      return new Promise((r) => clock.setTimeout(() => r(failed), commitMs));
    },
  };
}

function setUp(commitMs = 0) {
  const clock = new FakeClock();
  const queue = fakeQueue(clock, commitMs);
  const live = new Set<Gen>();
  const cp = new Checkpointer({
    queue,
    live: { generations: () => live },
    instance: "pod-c",
    intervalMs: 1000,
    logger: silentLogger,
    clock,
  });
  return { clock, queue, live, cp };
}

const counts = (records: UsageRecord[]) =>
  records.map((r) => [r.request_id, r.completion_tokens]);

Deno.test("a checkpoint writes each generation in flight whose usage changed, and no other", async () => {
  const { queue, live, cp } = setUp();
  const a = new Gen("a");
  const b = new Gen("b");
  const idle = new Gen("not started");
  idle.usage = null;
  live.add(a).add(b).add(idle);

  equal(await cp.checkpoint(), 2);
  a.usage!.completionTokens = 3;
  equal(await cp.checkpoint(), 1);
  equal(await cp.checkpoint(), 0);
  b.usage!.promptTokens = 5;
  equal(await cp.checkpoint(), 1);

  deepStrictEqual(queue.calls.map((c) => counts(c.records)), [
    [["a", 0], ["b", 0]],
    [["a", 3]],
    [["b", 0]],
  ]);
  const r = queue.calls[0].records[0];
  equal(r.id, a.usage!.recordId);
  equal(r.finish_reason, "interrupted");
  equal(r.worker_completion_tokens, null);
  equal(r.sidecar_instance, "pod-c");
});

Deno.test("a generation whose record went to the queue is never checkpointed again", async () => {
  const { queue, live, cp } = setUp();
  const a = new Gen("a");
  live.add(a);
  await cp.checkpoint();
  a.usage!.completionTokens = 8;
  // Its record is being committed: it is still counted live meanwhile,
  // and reports no usage from then on (Generation.partialUsage).
  a.usage = null;
  equal(await cp.checkpoint(), 0);
  equal(queue.calls.length, 1);
});

Deno.test("a checkpoint that failed is written again at the next tick, changed or not", async () => {
  const { queue, live, cp } = setUp();
  live.add(new Gen("a"));
  queue.failNext(1);
  equal(await cp.checkpoint(), 0);
  equal(await cp.checkpoint(), 1);
  equal(queue.calls.length, 2);
});

Deno.test("ticks keep to the interval; a slow commit makes the next tick skip, not pile up", async () => {
  const { clock, queue, live, cp } = setUp(1500);
  const a = new Gen("a");
  live.add(a);
  cp.start();
  for (let t = 1; t <= 8; t++) {
    a.usage!.completionTokens = t;
    clock.advance(500);
    await turn();
  }
  // Ticks at 1000 and 3000 wrote; the one at 2000 found 1000's running,
  // and the one at 4000 found 3000's running.
  deepStrictEqual(queue.calls.map((c) => c.at), [1000, 3000]);
  clock.advance(500);
  await cp.stop();
  equal(clock.pending, 0);
});

Deno.test("the checkpoint interval must be positive", () => {
  throws(
    () =>
      new Checkpointer({
        queue: { checkpoint: () => Promise.resolve(0) },
        live: { generations: () => [] },
        instance: "x",
        intervalMs: 0,
        logger: silentLogger,
      }),
    RangeError,
  );
});
