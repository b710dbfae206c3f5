import { equal, match, ok } from "node:assert/strict";
import { silentLogger } from "../log/logger.ts";
import { FakeClock } from "../util/clock.ts";
import { Admission, type AdmissionQueue } from "./admission.ts";
import { turn } from "./test_support.ts";

/** A queue whose counts the test ends by hand, at fake-clock times. */
class SlowCountQueue implements AdmissionQueue {
  depth = 0;
  failing = false;
  counts = 0;
  /** What the database holds: a count, when it ends, sets `depth` to it. */
  stored = 0;
  #end: (() => void) | null = null;

  recount(): Promise<boolean> {
    this.counts++;
    return new Promise((resolve) => {
      this.#end = () => {
        this.depth = this.stored;
        resolve(true);
      };
    });
  }

  /** Ends the count in progress. */
  async endCount(): Promise<void> {
    const end = this.#end;
    this.#end = null;
    ok(end, "no count in progress");
    end();
    await turn(1);
  }
}

function setUp(depth: number) {
  const clock = new FakeClock();
  const queue = new SlowCountQueue();
  queue.depth = depth;
  queue.stored = depth;
  const admission = new Admission({
    queue,
    offlineQueueSize: 5,
    batchIntervalMs: 2000,
    usageDbPath: "/data/usage.kv",
    logger: silentLogger,
    clock,
  });
  return { clock, queue, admission };
}

Deno.test("refusing reads the queue and starts nothing, however often it is read", () => {
  const { clock, queue, admission } = setUp(5);
  const timers = clock.pending;
  for (let i = 0; i < 1000; i++) ok(admission.refusing);
  equal(queue.counts, 0);
  equal(clock.pending, timers);
});

Deno.test("refusing holds exactly when admit() refuses: a full queue, or records that cannot be committed", () => {
  const { queue, admission } = setUp(4);
  equal(admission.refusing, false);
  equal(admission.admit(), null);

  queue.failing = true;
  equal(admission.refusing, true);
  const failing = admission.admit();
  equal(failing?.kind, "metering_backlog");
  match(failing!.message, /cannot be written to the usage database/);

  queue.failing = false;
  queue.depth = 5;
  equal(admission.refusing, true);
  const full = admission.admit();
  equal(full?.kind, "metering_backlog");
  match(full!.message, /usage queue is full \(5 records/);
  equal(full?.retryAfterMs, 2000);
});

Deno.test("while full, the queue is counted again by admission's own timer, one count at a time", async () => {
  const { clock, queue, admission } = setUp(0);
  // Nothing to count while there is room.
  equal(clock.pending, 0);

  queue.depth = queue.stored = 5;
  admission.queueChanged();
  clock.advance(1000);
  equal(queue.counts, 1);

  // The count is slow: no second one starts while it runs.
  clock.advance(10_000);
  equal(queue.counts, 1);
  equal(clock.pending, 0);

  // Still full when it ends: the next is due a second after the last began,
  // or nine times as long as it took, whichever is later.
  await queue.endCount();
  equal(clock.nextDue(), 11_000 + 9 * 10_000);
  clock.advance(90_000);
  equal(queue.counts, 2);

  // Another process drained the queue: the count finds room, and stops.
  queue.stored = 1;
  await queue.endCount();
  equal(admission.refusing, false);
  equal(admission.admit(), null);
  equal(clock.pending, 0);
});

Deno.test("a queue full at start is counted again without any reader", async () => {
  const { clock, queue, admission } = setUp(7);
  clock.advance(1000);
  equal(queue.counts, 1);
  queue.stored = 0;
  await queue.endCount();
  equal(admission.refusing, false);
});

Deno.test("stop() ends the recount timer and waits for a count in progress", async () => {
  const { clock, queue, admission } = setUp(5);
  clock.advance(1000);
  equal(queue.counts, 1);
  let stopped = false;
  const stopping = admission.stop().then(() => (stopped = true));
  await turn(1);
  equal(stopped, false, "stop waits for the count");
  await queue.endCount();
  await stopping;
  equal(clock.pending, 0, "no count is scheduled after stop");
  admission.queueChanged();
  equal(clock.pending, 0);
});

Deno.test("stop(ms) waits for a count in progress for at most ms", async () => {
  const { clock, queue, admission } = setUp(5);
  clock.advance(1000);
  equal(queue.counts, 1);
  let stopped = false;
  const stopping = admission.stop(500).then(() => (stopped = true));
  await turn(1);
  equal(stopped, false);
  clock.advance(500);
  await stopping;
  equal(stopped, true, "stop returned with the count still running");
  await queue.endCount();
  equal(clock.pending, 0);
});
