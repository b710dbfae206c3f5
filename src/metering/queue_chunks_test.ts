import { deepStrictEqual, equal, ok, rejects } from "node:assert/strict";
import * as v8 from "node:v8";
import { FakeClock } from "../util/clock.ts";
import { chunkKey, chunkValue } from "./chunk.ts";
import {
  CHUNK_BYTES,
  chunkBytes,
  KV_LIMITS,
  recordBytes,
} from "./kv_limits.ts";
import { UsageQueue } from "./queue.ts";
import { type AsideEntry, INFLIGHT, PENDING } from "./queue_keys.ts";
import { type UsageRecord, uuidv7 } from "./record.ts";
import {
  runTimers,
  storedPending,
  tempDbPath,
  testRecord,
} from "./test_support.ts";

const ids = (records: { id: string }[]) => records.map((r) => r.id);

/** A record of a generation that started at `ms` (Unix ms). */
function recordAt(ms: number, over: Partial<UsageRecord> = {}): UsageRecord {
  return testRecord({ id: uuidv7(ms), ...over });
}

/** Writes chunks directly, each under the key of its oldest record. */
async function writeChunks(path: string, runs: UsageRecord[][]) {
  const kv = await Deno.openKv(path);
  for (const run of runs) await kv.set(chunkKey(run), chunkValue(run));
  kv.close();
}

/** Three chunks of 3, 4 and 2 records, oldest first; all 9 in order. */
async function threeChunks(path: string) {
  const t = Date.now() - 60_000;
  const a = [recordAt(t), recordAt(t + 1), recordAt(t + 2)];
  const b = [recordAt(t + 10), recordAt(t + 11), recordAt(t + 12)];
  b.push(recordAt(t + 13));
  const c = [recordAt(t + 20), recordAt(t + 21)];
  await writeChunks(path, [a, b, c]);
  return { a, b, c, all: [...a, ...b, ...c] };
}

/** Counts the reads and commits of Deno KV while installed. */
function spyOnKv() {
  const kvProto = Deno.Kv.prototype;
  const opProto = Deno.AtomicOperation.prototype;
  const { list, get, getMany } = kvProto;
  const { commit } = opProto;
  const seen = { reads: 0, commits: 0 };
  kvProto.list = function (this: Deno.Kv, ...args) {
    seen.reads++;
    return list.apply(this, args);
  } as typeof list;
  kvProto.get = function (this: Deno.Kv, ...args) {
    seen.reads++;
    return get.apply(this, args);
  } as typeof get;
  kvProto.getMany = function (this: Deno.Kv, ...args) {
    seen.reads++;
    return getMany.apply(this, args);
  } as typeof getMany;
  opProto.commit = function (this: Deno.AtomicOperation) {
    seen.commits++;
    return commit.apply(this);
  };
  return {
    seen,
    restore() {
      Object.assign(kvProto, { list, get, getMany });
      Object.assign(opProto, { commit });
    },
  };
}

Deno.test("a group commit over one value's limit is split into chunks that each fit Deno KV's 64 KiB", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  // Same-sized records of about 10 KB each: a few per chunk.
  const labels = { note: "n".repeat(10_000) };
  const small = () => testRecord({ billing_labels: labels });
  const big = testRecord({ billing_labels: { note: "b".repeat(55_000) } });
  const first = testRecord();
  const group = [...Array.from({ length: 13 }, small), big];
  group.push(...Array.from({ length: 13 }, small));

  await Promise.all([first, ...group].map((r) => queue.append(r)));
  equal(queue.depth, 28);
  await queue.close();

  const stored = await storedPending(path);
  const perChunk = Math.floor(
    (CHUNK_BYTES - chunkBytes(0)) / recordBytes(group[0]),
  );
  ok(perChunk > 1 && perChunk < 13, `${perChunk} per chunk`);
  for (const e of stored) {
    const bytes = v8.serialize(e.value).length;
    ok(bytes <= KV_LIMITS.valueBytes, `${e.id}: ${bytes} bytes`);
    const records = e.value.records;
    deepStrictEqual(ids(records), ids(records).sort());
    equal(e.id, records[0].id);
    if (records.some((r) => r.id === big.id)) {
      equal(records.length, 1, "the big record fills a chunk alone");
    } else {
      ok(records.length <= perChunk || records[0].id === first.id);
    }
  }
  // The first alone; then 13 small in as few chunks as fit, the big one,
  // and 13 small again.
  equal(stored.length, 1 + 2 * Math.ceil(13 / perChunk) + 1);
  deepStrictEqual(
    stored.flatMap((e) => ids(e.value.records)).sort(),
    ids([first, ...group]).sort(),
  );
});

Deno.test("peek returns the oldest records across chunks, chunk by chunk in order", async () => {
  const path = await tempDbPath();
  const { all } = await threeChunks(path);
  const queue = await UsageQueue.open(path);
  equal(queue.depth, 9);
  deepStrictEqual(ids(await queue.peek(1)), ids(all.slice(0, 1)));
  deepStrictEqual(ids(await queue.peek(5)), ids(all.slice(0, 5)));
  deepStrictEqual(ids(await queue.peek(7)), ids(all.slice(0, 7)));
  deepStrictEqual(ids(await queue.peek(100)), ids(all));
  equal(queue.depth, 9);
  await queue.close();
});

Deno.test("acking a peeked batch deletes the chunks it empties and rewrites the one it ends in, without reading again", async () => {
  const path = await tempDbPath();
  const { b, c } = await threeChunks(path);
  const before = await storedPending(path);
  const queue = await UsageQueue.open(path);

  const batch = await queue.peek(5);
  const spy = spyOnKv();
  try {
    await queue.ack(ids(batch));
  } finally {
    spy.restore();
  }
  deepStrictEqual(spy.seen, { reads: 0, commits: 1 });
  equal(queue.depth, 4);

  const after = await storedPending(path);
  deepStrictEqual(after.map((e) => [e.id, ids(e.value.records)]), [
    [b[0].id, ids(b.slice(2))],
    [c[0].id, ids(c)],
  ]);
  ok(after[0].versionstamp !== before[1].versionstamp, "b was rewritten");
  equal(after[1].versionstamp, before[2].versionstamp, "c was not touched");
  await queue.close();

  // Another handle acks without a peek: the records are looked up.
  const again = await UsageQueue.open(path);
  equal(again.depth, 4);
  deepStrictEqual(ids(await again.peek(10)), ids([...b.slice(2), ...c]));
  await again.close();
  const third = await UsageQueue.open(path);
  await third.ack([b[2].id]);
  equal(third.depth, 3);
  await third.ack([b[3].id, c[0].id, c[1].id, uuidv7(), b[2].id]);
  equal(third.depth, 0, "ids not pending are skipped");
  deepStrictEqual(await storedPending(path), []);
  await third.close();
});

Deno.test("a partial ack of a chunk another handle changed meanwhile reads it again and loses neither change", async () => {
  const path = await tempDbPath();
  const { b } = await threeChunks(path);
  const queue = await UsageQueue.open(path);
  await queue.peek(100);

  // Another process acks b[1] after this handle read the chunk.
  const other = await UsageQueue.open(path, { recoverInflight: false });
  await other.ack([b[1].id]);
  await other.close();

  await queue.ack([b[0].id, b[2].id]);
  equal(queue.depth, 7, "its own two");
  const stored = await storedPending(path);
  deepStrictEqual(
    ids(stored.find((e) => e.id === b[0].id)!.value.records),
    [b[3].id],
  );
  ok(await queue.recount());
  equal(queue.depth, 6);
  await queue.close();
});

Deno.test("setAside moves one record out of its chunk and into the set-aside entries in one operation", async () => {
  const path = await tempDbPath();
  const { a, b, c } = await threeChunks(path);
  const queue = await UsageQueue.open(path);
  await queue.peek(100);

  const spy = spyOnKv();
  try {
    await queue.setAside(b[1], 422, "unknown label");
  } finally {
    spy.restore();
  }
  deepStrictEqual(spy.seen, { reads: 0, commits: 1 });
  equal(queue.depth, 8);
  equal(queue.asideCount, 1);
  const stored = await storedPending(path);
  deepStrictEqual(
    ids(stored.find((e) => e.id === b[0].id)!.value.records),
    ids([b[0], b[2], b[3]]),
  );

  // The last record of a chunk: the chunk goes.
  await queue.setAside(c[0], 400, "x");
  await queue.setAside(c[1], 400, "y");
  ok(!(await storedPending(path)).some((e) => e.id === c[0].id));
  // A record no longer pending is not set aside.
  await queue.ack([a[0].id]);
  await queue.setAside(a[0], 400, "gone");
  equal(queue.asideCount, 3);
  equal(queue.depth, 5);
  await queue.close();

  const again = await UsageQueue.open(path);
  equal(again.depth, 5);
  equal(again.asideCount, 3);
  const dump = [];
  for await (const e of again.dump()) dump.push(e);
  deepStrictEqual(
    dump.map((e) => [e.state, e.record.id]),
    [
      ...[a[1], a[2], b[0], b[2], b[3]].map((r) => ["pending", r.id]),
      ...[b[1], c[0], c[1]].map((r) => ["set_aside", r.id]),
    ],
  );
  const aside = dump.find((e) => e.record.id === b[1].id) as AsideEntry;
  equal(aside.status, 422);
  equal(aside.reason, "unknown label");
  await again.close();
});

Deno.test("a queue written one record per value (the earlier layout) is counted, peeked, acked, set aside and drained", async () => {
  const path = await tempDbPath();
  const t = Date.now() - 60_000;
  const legacy = [recordAt(t), recordAt(t + 1), recordAt(t + 2)];
  legacy.push(recordAt(t + 3), recordAt(t + 4));
  const kv = await Deno.openKv(path);
  for (const r of legacy) await kv.set([...PENDING, r.id], r);
  kv.close();

  const queue = await UsageQueue.open(path);
  equal(queue.depth, 5);
  deepStrictEqual(ids(await queue.peek(3)), ids(legacy.slice(0, 3)));
  await queue.ack([legacy[0].id]);
  await queue.setAside(legacy[1], 400, "refused");
  const fresh = testRecord();
  await queue.append(fresh);
  equal(queue.depth, 4);
  equal(queue.asideCount, 1);

  const dump = [];
  for await (const e of queue.dump()) dump.push([e.state, e.record.id]);
  deepStrictEqual(dump, [
    ...[legacy[2], legacy[3], legacy[4], fresh].map((r) => ["pending", r.id]),
    ["set_aside", legacy[1].id],
  ]);

  const drained: string[] = [];
  equal(
    await queue.drain((records) => {
      drained.push(...ids(records));
      return Promise.resolve();
    }, { chunkRecords: 2 }),
    4,
  );
  deepStrictEqual(drained, ids([legacy[2], legacy[3], legacy[4], fresh]));
  equal(queue.depth, 0);
  deepStrictEqual(await storedPending(path), []);
  await queue.close();
});

Deno.test("a pending value that is neither a chunk nor a record fails the open, naming its key, and stays", async () => {
  const path = await tempDbPath();
  const kv = await Deno.openKv(path);
  await kv.set([...PENDING, "0193"], { v: 2, records: [] });
  kv.close();

  await rejects(
    UsageQueue.open(path),
    (err: Error) =>
      /Cannot read the usage queue/.test(err.message) &&
      err.message.includes("usage/pending/0193") &&
      err.cause instanceof SyntaxError,
  );
  const left = await storedPending(path);
  equal(left.length, 1);
  equal(left[0].value.v, 2);
});

Deno.test("recovered checkpoints become chunks; one whose record is pending in a chunk is dropped as stale", async () => {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  const cps = [testRecord(), testRecord(), testRecord()]
    .sort((x, y) => x.id < y.id ? -1 : 1)
    .map((r) => ({ ...r, finish_reason: "interrupted" }));
  equal(await queue.checkpoint(cps), 0);
  // cps[1]'s final record is committed among others (its commit deletes
  // its checkpoint)...
  const finals = [testRecord(), { ...cps[1], finish_reason: "stop" }];
  await Promise.all(finals.map((r) => queue.append(r)));
  await queue.close();
  // ...and a stale copy of that checkpoint is left behind anyway.
  const kv = await Deno.openKv(path);
  await kv.set([...INFLIGHT, cps[1].id], cps[1]);
  kv.close();

  const next = await UsageQueue.open(path);
  equal(next.recovered, 2);
  equal(next.unrecovered, 0);
  equal(next.depth, 4);
  deepStrictEqual(await next.inflight(), []);
  await next.close();

  const stored = await storedPending(path);
  const recovered = stored.find((e) => e.id === cps[0].id);
  deepStrictEqual(ids(recovered!.value.records), ids([cps[0], cps[2]]));
  ok(recovered!.value.records.every((r) => r.finish_reason === "interrupted"));
  const all = stored.flatMap((e) => e.value.records);
  equal(all.filter((r) => r.id === cps[1].id).length, 1);
  equal(all.find((r) => r.id === cps[1].id)?.finish_reason, "stop");
});

Deno.test("drain hands out parts across chunk boundaries and rewrites a chunk it took part of; dump lists every record", async () => {
  const path = await tempDbPath();
  const { a, b, c, all } = await threeChunks(path);
  const queue = await UsageQueue.open(path);
  const dump = [];
  for await (const e of queue.dump()) dump.push([e.state, e.record.id]);
  deepStrictEqual(dump, all.map((r) => ["pending", r.id]));

  const parts: string[][] = [];
  const seen: string[][][] = [];
  const removed = await queue.drain(async (records) => {
    parts.push(ids(records));
    seen.push(
      (await storedPending(path)).map((e) => ids(e.value.records)),
    );
  }, { chunkRecords: 4 });
  equal(removed, 9);
  deepStrictEqual(parts, [
    ids([...a, b[0]]),
    ids([...b.slice(1), c[0]]),
    ids([c[1]]),
  ]);
  // While the second part was written, the first had gone: a deleted,
  // b rewritten without its first record.
  deepStrictEqual(seen[1], [ids(b.slice(1)), ids(c)]);
  deepStrictEqual(seen[2], [ids([c[1]])]);
  equal(queue.depth, 0);
  deepStrictEqual(await storedPending(path), []);
  await queue.close();
});

Deno.test("oldestMs is the oldest record's start, also once the first chunk lost its oldest", async () => {
  const path = await tempDbPath();
  const t = Date.now() - 60_000;
  const early = [recordAt(t), recordAt(t + 5000)];
  const later = [recordAt(t + 3000)];
  await writeChunks(path, [early, later]);
  const queue = await UsageQueue.open(path);
  equal(await queue.oldestMs(), t);
  await queue.ack([early[0].id]);
  // The first chunk keeps its key (t) but now starts at t + 5000.
  equal(await queue.oldestMs(), t + 3000);
  await queue.ack([later[0].id, early[1].id]);
  equal(await queue.oldestMs(), null);
  await queue.close();
});

Deno.test("a commit never replaces a chunk under the same key: the record whose key is taken fails alone", async () => {
  const path = await tempDbPath();
  // Older than the records appended below, so that its id is the key of
  // the chunk of the group it is appended with.
  const taken = recordAt(Date.now() - 60_000);
  await writeChunks(path, [[taken]]);

  const clock = new FakeClock();
  const queue = await UsageQueue.open(path, { clock, retryDelaysMs: [10] });
  const good = [testRecord(), testRecord(), testRecord()];
  const writes = [good[0], { ...taken, completion_tokens: 99 }, good[1]]
    .concat(good[2])
    .map((r) => queue.append(r));
  const results = await runTimers(clock, Promise.allSettled(writes));
  deepStrictEqual(results.map((r) => r.status), [
    "fulfilled",
    "rejected",
    "fulfilled",
    "fulfilled",
  ]);
  ok(queue.failing);
  equal(queue.depth, 4);
  await queue.close();

  const stored = await storedPending(path);
  const kept = stored.find((e) => e.id === taken.id)!;
  deepStrictEqual(kept.value.records, [taken]);
  equal(stored.flatMap((e) => e.value.records).length, 4);
});

Deno.test("acking records of hundreds of chunks splits the removal within Deno KV's 100 checks per operation", async () => {
  const path = await tempDbPath();
  const t = Date.now() - 60_000;
  const records = Array.from({ length: 250 }, (_, i) => recordAt(t + i));
  await writeChunks(path, records.map((r) => [r]));
  const queue = await UsageQueue.open(path);
  const batch = await queue.peek(250);
  equal(batch.length, 250);

  const spy = spyOnKv();
  try {
    await queue.ack(ids(batch));
  } finally {
    spy.restore();
  }
  equal(spy.seen.reads, 0);
  equal(spy.seen.commits, Math.ceil(250 / KV_LIMITS.checksPerAtomic));
  equal(queue.depth, 0);
  deepStrictEqual(await storedPending(path), []);
  await queue.close();
});
