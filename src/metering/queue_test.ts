import { deepStrictEqual, equal, ok, rejects } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import { UsageQueue } from "./queue.ts";
import type { UsageRecord } from "./record.ts";
import {
  heavyLabels,
  runTimers,
  storedPending,
  tempDbPath,
  testRecord,
} from "./test_support.ts";

/** Counts atomic commits and the mutations each carried, while installed. */
function spyOnCommits() {
  const proto = Deno.AtomicOperation.prototype;
  const { set, delete: del, commit } = proto;
  const sizes = new WeakMap<Deno.AtomicOperation, number>();
  const commits: number[] = [];
  proto.set = function (this: Deno.AtomicOperation, ...args) {
    sizes.set(this, (sizes.get(this) ?? 0) + 1);
    return set.apply(this, args);
  };
  proto.delete = function (this: Deno.AtomicOperation, ...args) {
    sizes.set(this, (sizes.get(this) ?? 0) + 1);
    return del.apply(this, args);
  };
  proto.commit = function (this: Deno.AtomicOperation) {
    commits.push(sizes.get(this) ?? 0);
    return commit.apply(this);
  };
  return {
    commits,
    restore() {
      Object.assign(proto, { set, delete: del, commit });
    },
  };
}

Deno.test("appends that arrive while a commit runs are committed together in the next one, as one chunk", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  const records = Array.from({ length: 50 }, () => testRecord());
  const spy = spyOnCommits();
  try {
    await Promise.all(records.map((r) => queue.append(r)));
  } finally {
    spy.restore();
  }
  // The first append starts a commit alone; the other 49 arrived while it
  // ran and share one commit, one set of one value (none had a checkpoint).
  deepStrictEqual(spy.commits, [1, 1]);
  equal(queue.depth, 50);
  await queue.close();

  // Each chunk is keyed by its oldest record and holds its records in id
  // order.
  const stored = await storedPending(path);
  const ids = (rs: UsageRecord[]) => rs.map((r) => r.id);
  const rest = ids(records.slice(1)).sort();
  deepStrictEqual(
    stored.map((e) => [e.id, ids(e.value.records)]).sort(),
    [[records[0].id, [records[0].id]], [rest[0], rest]].sort(),
  );
});

Deno.test("a final record deletes its generation's checkpoint in the same commit, and only a checkpointed one does", async () => {
  const queue = await UsageQueue.open(await tempDbPath());
  const a = testRecord();
  const b = testRecord();
  equal(await queue.checkpoint([{ ...a, finish_reason: "interrupted" }]), 0);
  deepStrictEqual((await queue.inflight()).map((r) => r.id), [a.id]);

  const spy = spyOnCommits();
  try {
    await queue.append(a);
    await queue.append(b);
  } finally {
    spy.restore();
  }
  deepStrictEqual(spy.commits, [2, 1], "a: set and delete; b: set alone");
  deepStrictEqual(await queue.inflight(), []);
  equal(queue.depth, 2);
  await queue.close();
});

Deno.test("a group commit is sized in bytes: 48 appends with 64 CJK labels each all commit", async () => {
  const queue = await UsageQueue.open(await tempDbPath());
  const spy = spyOnCommits();
  let results: PromiseSettledResult<void>[];
  try {
    results = await Promise.allSettled(
      Array.from(
        { length: 48 },
        () => queue.append(testRecord({ billing_labels: heavyLabels() })),
      ),
    );
  } finally {
    spy.restore();
  }
  deepStrictEqual(results.filter((r) => r.status === "rejected"), []);
  equal(queue.depth, 48);
  // ~22 KB per record as Deno KV counts it (47 of them overflow its
  // 800 KiB), ~34 KB in UTF-8: a commit holds at most 15 of them.
  ok(spy.commits.length >= 4, `commits: ${spy.commits}`);
  ok(!queue.failing);
  await queue.close();
});

Deno.test("when a group commit fails, its records are retried one by one and all commit", async () => {
  // A budget far over Deno KV's limit makes the group commit fail for
  // real ("Total mutation size too large"); each record alone fits.
  const queue = await UsageQueue.open(await tempDbPath(), {
    commitBudgetBytes: 100 * 1024 * 1024,
  });
  const spy = spyOnCommits();
  let results: PromiseSettledResult<void>[];
  try {
    results = await Promise.allSettled(
      Array.from(
        { length: 48 },
        () => queue.append(testRecord({ billing_labels: heavyLabels() })),
      ),
    );
  } finally {
    spy.restore();
  }
  deepStrictEqual(results.filter((r) => r.status === "rejected"), []);
  equal(queue.depth, 48);
  // One alone, one failed group of 47, then 47 alone.
  deepStrictEqual(spy.commits, [1, 47, ...Array(47).fill(1)]);
  ok(!queue.failing);
  await queue.close();
});

Deno.test("a record the database refuses fails alone after retries; the queue fails until the next commit", async () => {
  const clock = new FakeClock();
  // The queue's own size check is lifted, so Deno KV itself refuses the
  // oversized record ("Value too large").
  const queue = await UsageQueue.open(await tempDbPath(), {
    clock,
    maxRecordBytes: 10 * 1024 * 1024,
    retryDelaysMs: [10, 20],
  });
  const huge = testRecord({ billing_labels: { blob: "x".repeat(70_000) } });
  const good = [testRecord(), testRecord(), testRecord()];

  const first = queue.append(testRecord());
  const group = [queue.append(good[0]), queue.append(huge)];
  group.push(queue.append(good[1]), queue.append(good[2]));
  const all = Promise.allSettled([first, ...group]);
  const results = await runTimers(clock, all);

  deepStrictEqual(results.map((r) => r.status), [
    "fulfilled",
    "fulfilled",
    "rejected",
    "fulfilled",
    "fulfilled",
  ]);
  ok(String((results[2] as PromiseRejectedResult).reason).includes("large"));
  // Two retry rounds waited 10 and 20 ms of (fake) time.
  equal(clock.now(), 30);
  equal(queue.depth, 4);
  ok(queue.failing);

  // A probe write, a second later, finds the database working.
  equal(clock.nextDue(), 1030);
  await runTimers(
    clock,
    (async () => {
      while (queue.failing) await new Promise((r) => setTimeout(r, 1));
    })(),
  );
  ok(!queue.failing);
  await queue.close();
});

Deno.test("a record over the size limit is refused at once with a RangeError", async () => {
  const queue = await UsageQueue.open(await tempDbPath());
  const huge = testRecord({ billing_labels: { blob: "x".repeat(70_000) } });
  await rejects(queue.append(huge), RangeError);
  ok(queue.failing);
  await queue.append(testRecord());
  ok(!queue.failing, "a successful commit ends the failing state");
  equal(queue.depth, 1);
  await queue.close();
});

Deno.test("ack and setAside remove records; a reopened queue counts pending and set-aside records", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  const records = Array.from({ length: 6 }, () => testRecord())
    .sort((x, y) => x.id < y.id ? -1 : 1);
  await Promise.all(records.map((r) => queue.append(r)));
  equal(queue.depth, 6);

  await queue.ack([records[0].id, records[1].id]);
  await queue.setAside(records[2], 400, "unknown customer");
  equal(queue.depth, 3);
  equal(queue.asideCount, 1);
  deepStrictEqual(
    (await queue.peek(10)).map((r) => r.id),
    records.slice(3).map((r) => r.id),
  );
  await queue.close();

  const again = await UsageQueue.open(path);
  equal(again.depth, 3);
  equal(again.asideCount, 1);
  const dump = [];
  for await (const e of again.dump()) dump.push(e);
  deepStrictEqual(dump.map((e) => e.state), [
    "pending",
    "pending",
    "pending",
    "set_aside",
  ]);
  const aside = dump[3] as { status: number; reason: string };
  equal(aside.status, 400);
  equal(aside.reason, "unknown customer");
  await again.close();
});

Deno.test("checkpoints left by a dead process become interrupted records at the next open, once", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  const a = testRecord({ finish_reason: "interrupted", completion_tokens: 4 });
  const b = testRecord({ finish_reason: "interrupted", completion_tokens: 9 });
  equal(await queue.checkpoint([a, b]), 0);
  equal(await queue.checkpoint([{ ...a, completion_tokens: 6 }]), 0);
  // b ends normally: its record replaces its checkpoint.
  await queue.append({ ...b, finish_reason: "stop", completion_tokens: 11 });
  equal(queue.depth, 1);
  deepStrictEqual((await queue.inflight()).map((r) => r.id), [a.id]);
  // The process "dies" here: closed without a's record.
  await queue.close();

  // A tool that may run beside a live sidecar leaves checkpoints alone.
  const tool = await UsageQueue.open(path, { recoverInflight: false });
  equal(tool.depth, 1);
  equal((await tool.inflight()).length, 1);
  await tool.close();

  const next = await UsageQueue.open(path);
  equal(next.recovered, 1);
  equal(next.depth, 2);
  deepStrictEqual(await next.inflight(), []);
  const pending = await next.peek(10);
  const byId = new Map(pending.map((r) => [r.id, r]));
  equal(byId.get(a.id)?.finish_reason, "interrupted");
  equal(byId.get(a.id)?.completion_tokens, 6);
  equal(byId.get(b.id)?.finish_reason, "stop");
  equal(byId.get(b.id)?.completion_tokens, 11);
  await next.close();

  const third = await UsageQueue.open(path);
  equal(third.recovered, 0);
  equal(third.depth, 2);
  await third.close();
});

Deno.test("a checkpoint never overwrites the record of a generation already committed", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  const r = testRecord();
  // A checkpoint and the final record in one group: the record wins.
  const first = queue.append(testRecord());
  const cp = queue.checkpoint([{ ...r, finish_reason: "interrupted" }]);
  const fin = queue.append(r);
  await Promise.all([first, cp, fin]);
  deepStrictEqual(await queue.inflight(), []);
  await queue.close();

  const next = await UsageQueue.open(path);
  equal(next.recovered, 0);
  equal(next.depth, 2);
  await next.close();
});

Deno.test("drain hands each chunk out before deleting it, and keeps a chunk whose write failed", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  // Oldest first is id order (ids made in the same millisecond included).
  const records = Array.from({ length: 7 }, () => testRecord())
    .sort((x, y) => x.id < y.id ? -1 : 1);
  await Promise.all(records.map((r) => queue.append(r)));

  const written: string[] = [];
  let calls = 0;
  await rejects(
    queue.drain(async (chunk) => {
      if (++calls === 3) throw new Error("stdout closed");
      // Nothing of this chunk is deleted yet while it is being written.
      equal(queue.depth, 7 - written.length);
      written.push(...chunk.map((r) => r.id));
      await Promise.resolve();
    }, { chunkRecords: 3 }),
    /stdout closed/,
  );
  deepStrictEqual(written, records.slice(0, 6).map((r) => r.id));
  equal(queue.depth, 1);
  deepStrictEqual((await queue.peek(10)).map((r) => r.id), [records[6].id]);

  const rest: string[] = [];
  equal(
    await queue.drain((chunk) => {
      rest.push(...chunk.map((r) => r.id));
      return Promise.resolve();
    }),
    1,
  );
  deepStrictEqual(rest, [records[6].id]);
  equal(queue.depth, 0);
  await queue.close();
});

Deno.test("records another handle drained are noticed by peek and recount", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  await Promise.all(
    Array.from({ length: 5 }, () => queue.append(testRecord())),
  );

  const other = await UsageQueue.open(path, { recoverInflight: false });
  equal(await other.drain(() => Promise.resolve()), 5);
  await other.close();

  equal(queue.depth, 5, "not seen until the database is read");
  ok(await queue.recount());
  equal(queue.depth, 0);

  await queue.append(testRecord());
  const third = await UsageQueue.open(path, { recoverInflight: false });
  await third.drain(() => Promise.resolve());
  await third.close();
  deepStrictEqual(await queue.peek(10), []);
  equal(queue.depth, 0, "a short peek is the whole queue");
  await queue.close();
});

Deno.test("close() waits for every write queued before it, then refuses more", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  // One commit runs, the others wait for the next group, when close() comes.
  const writes = Array.from({ length: 20 }, () => queue.append(testRecord()));
  const cp = queue.checkpoint([testRecord({ finish_reason: "interrupted" })]);
  await queue.close();
  const results = await Promise.allSettled([...writes, cp]);
  deepStrictEqual(results.filter((r) => r.status === "rejected"), []);
  equal(await cp, 0);
  await rejects(queue.append(testRecord()), /the usage queue is closed/);

  const again = await UsageQueue.open(path, { recoverInflight: false });
  equal(again.depth, 20);
  equal((await again.inflight()).length, 1);
  await again.close();
});
