import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { KV_LIMITS } from "./kv_limits.ts";
import { UsageQueue } from "./queue.ts";
import { INFLIGHT, PENDING } from "./queue_keys.ts";
import { RECOVER_PER_OP } from "./recovery.ts";
import { type UsageRecord, uuidv7 } from "./record.ts";
import { tempDbPath, testRecord } from "./test_support.ts";

/**
 * Watches atomic operations while installed: the checks each commit
 * carried, and `throwIf` (given the keys each deletes) makes a commit
 * throw as Deno KV does over a limit.
 */
function spyOnAtomics(
  throwIf: (deletedKeys: Deno.KvKey[]) => boolean = () => false,
) {
  const proto = Deno.AtomicOperation.prototype;
  const { check, delete: del, commit } = proto;
  const checks = new WeakMap<Deno.AtomicOperation, number>();
  const deletes = new WeakMap<Deno.AtomicOperation, Deno.KvKey[]>();
  const commits: number[] = [];
  proto.check = function (this: Deno.AtomicOperation, ...args) {
    checks.set(this, (checks.get(this) ?? 0) + args.length);
    return check.apply(this, args);
  };
  proto.delete = function (this: Deno.AtomicOperation, ...args) {
    deletes.set(this, [...(deletes.get(this) ?? []), args[0]]);
    return del.apply(this, args);
  };
  proto.commit = function (this: Deno.AtomicOperation) {
    commits.push(checks.get(this) ?? 0);
    if (throwIf(deletes.get(this) ?? [])) {
      return Promise.reject(new TypeError("Too many checks (max 100)"));
    }
    return commit.apply(this);
  };
  return {
    commits,
    restore() {
      Object.assign(proto, { check, delete: del, commit });
    },
  };
}

/** Opens the queue at `path` (running recovery) with {@link spyOnAtomics} installed. */
async function openSpied(
  path: string,
  throwIf?: (deletedKeys: Deno.KvKey[]) => boolean,
): Promise<{ queue: UsageQueue; commits: number[] }> {
  const spy = spyOnAtomics(throwIf);
  try {
    return { queue: await UsageQueue.open(path), commits: spy.commits };
  } finally {
    spy.restore();
  }
}

/** A database holding `n` checkpoints of a process that died. */
async function crashedWith(
  n: number,
  labels: Record<string, string> = { customer: "acme" },
): Promise<{
  path: string;
  records: UsageRecord[];
}> {
  const path = await tempDbPath();
  const queue = await UsageQueue.open(path);
  const records = Array.from(
    { length: n },
    (_, i) =>
      testRecord({
        id: uuidv7(Date.now() - n + i),
        finish_reason: "interrupted",
        completion_tokens: i,
        billing_labels: labels,
      }),
  );
  equal(await queue.checkpoint(records), 0);
  await queue.close();
  return { path, records };
}

Deno.test("start-up recovery turns 300 checkpoints into records, within Deno KV's 100 checks per atomic operation", async () => {
  const { path, records } = await crashedWith(300);

  const { queue, commits } = await openSpied(path);
  equal(queue.recovered, 300);
  equal(queue.unrecovered, 0);
  equal(queue.depth, 300);
  deepStrictEqual(await queue.inflight(), []);
  const pending = await queue.peek(1000);
  deepStrictEqual(
    pending.map((r) => [r.id, r.completion_tokens]),
    records.map((r) => [r.id, r.completion_tokens]),
  );
  ok(commits.every((checks) => checks <= KV_LIMITS.checksPerAtomic));
  // Chunks, not one operation per checkpoint.
  equal(commits.length, Math.ceil(300 / RECOVER_PER_OP));
  await queue.close();
});

Deno.test("checkpoints near the size limit are recovered in chunks sized in bytes, none of which fails", async () => {
  // ~55 KB each: 33 of them in one operation would overflow Deno KV's
  // 800 KiB of keys and values.
  const { path } = await crashedWith(40, { blob: "x".repeat(55_000) });
  const { queue, commits } = await openSpied(path);
  equal(queue.recovered, 40);
  equal(queue.depth, 40);
  // Had a chunk failed, its checkpoints would have been retried alone.
  ok(commits.length > 1 && commits.length < 10, `${commits}`);
  await queue.close();
});

Deno.test("a recovery commit that throws is retried one by one; a checkpoint that fails alone stays, and the queue still opens", async () => {
  const { path, records } = await crashedWith(50);
  const bad = records[7].id;

  // Any operation that moves `bad` (deletes its checkpoint) throws, alone
  // or not.
  const { queue } = await openSpied(
    path,
    (keys) => keys.some((k) => k[1] === INFLIGHT[1] && k[2] === bad),
  );
  equal(queue.recovered, 49);
  equal(queue.unrecovered, 1);
  equal(queue.depth, 49);
  deepStrictEqual((await queue.inflight()).map((r) => r.id), [bad]);
  await queue.close();

  // Nothing was lost: the next open moves the one left behind.
  const next = await UsageQueue.open(path);
  equal(next.recovered, 1);
  equal(next.unrecovered, 0);
  equal(next.depth, 50);
  await next.close();
});

Deno.test("a checkpoint whose record was already committed is removed, not billed twice, even among many", async () => {
  const { path, records } = await crashedWith(80);
  // A record of one of them exists already, written here directly: its
  // checkpoint is stale and must not become a second record.
  const kv = await Deno.openKv(path);
  const done = { ...records[40], finish_reason: "stop", completion_tokens: 99 };
  await kv.set([...PENDING, done.id], done);
  kv.close();

  const queue = await UsageQueue.open(path);
  equal(queue.recovered, 79);
  equal(queue.depth, 80);
  deepStrictEqual(await queue.inflight(), []);
  const byId = new Map((await queue.peek(100)).map((r) => [r.id, r]));
  equal(byId.get(done.id)?.finish_reason, "stop");
  equal(byId.get(done.id)?.completion_tokens, 99);
  await queue.close();

  const kv2 = await Deno.openKv(path);
  let left = 0;
  for await (const _ of kv2.list({ prefix: [...INFLIGHT] })) left++;
  kv2.close();
  equal(left, 0);
});
