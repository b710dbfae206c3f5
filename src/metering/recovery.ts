/**
 * Start-up recovery: the in-flight checkpoints a process left when it died
 * become pending records (`finish_reason` `interrupted`, the counts of the
 * last checkpoint), moved atomically into chunks (chunk.ts), and only if
 * no record of their id is pending or set aside already.
 *
 * Whether a record of a checkpoint's id is pending is read from the
 * pending chunks before anything moves: a record inside a chunk has no
 * key of its own to check. That read is enough because recovery runs
 * when the queue is opened, before its process commits anything, and a
 * checkpoint's record is only ever committed by the process that wrote
 * the checkpoint, which is gone. Each move still checks, atomically, that
 * the checkpoint is unchanged, that no set-aside entry of its id exists,
 * and that no chunk has the new chunk's key.
 *
 * Checkpoints are moved in groups sized against Deno KV's limits on one
 * atomic operation. A group that is refused (a check failed) or whose
 * commit throws (a limit, a database error) is retried one checkpoint at
 * a time, so that one checkpoint cannot keep the others from being
 * recovered, nor the queue from opening.
 *
 * @module
 */

import {
  chunkKey,
  ChunkPacker,
  chunkValue,
  keyId,
  listChunks,
} from "./chunk.ts";
import {
  AtomicBudget,
  type AtomicCost,
  chunkBytes,
  KV_LIMITS,
  recordBytes,
} from "./kv_limits.ts";
import { ASIDE, INFLIGHT, KEY_BYTES } from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

// Moving one checkpoint checks two keys (the checkpoint is unchanged, no
// set-aside entry of its id exists) and deletes it; each chunk it goes
// into costs one more check (its key is free) and a set. Checks are the
// scarcest: Deno KV allows 100 per atomic operation, and throws past that.
const CHECKS_PER_CHECKPOINT = 2;

/** Most checkpoints moved in one atomic operation, into one chunk (49). */
export const RECOVER_PER_OP = Math.floor(
  (KV_LIMITS.checksPerAtomic - 1) / CHECKS_PER_CHECKPOINT,
);

/** What {@link recoverCheckpoints} did. */
export interface RecoveryResult {
  /** Checkpoints turned into pending records. */
  recovered: number;
  /** Checkpoints removed because their record was already committed or set aside. */
  stale: number;
  /**
   * Checkpoints the database would not move even alone: they stay where
   * they are, and the next open tries them again.
   */
  left: number;
}

type Entry = Deno.KvEntry<UsageRecord>;

/** A group of checkpoints moved in one operation, as the chunks they make. */
type Group = Entry[][];

/** Turns every checkpoint in `kv` into a pending record (see module doc). */
export async function recoverCheckpoints(
  kv: Deno.Kv,
): Promise<RecoveryResult> {
  const result: RecoveryResult = { recovered: 0, stale: 0, left: 0 };
  const entries: Entry[] = [];
  for await (const e of kv.list<UsageRecord>({ prefix: [...INFLIGHT] })) {
    entries.push(e);
  }
  if (entries.length === 0) return result;

  // Which checkpoints have a pending record already: a set as large as
  // the checkpoints (bounded by generations in flight), not the queue.
  const ids = new Set(entries.map((e) => keyId(e.key)));
  const pending = new Set<string>();
  for await (const chunk of listChunks(kv)) {
    for (const r of chunk.records) if (ids.has(r.id)) pending.add(r.id);
  }
  const fresh: Entry[] = [];
  for (const e of entries) {
    if (!pending.has(keyId(e.key))) {
      fresh.push(e);
      continue;
    }
    const removed = await removeStale(kv, e);
    if (removed === "error") result.left++;
    else if (removed === "removed") result.stale++;
  }

  for (const group of groups(fresh)) {
    const count = group.reduce((n, chunk) => n + chunk.length, 0);
    if (count > 1 && await move(kv, group) === "moved") {
      result.recovered += count;
      continue;
    }

    // A check failed, or the commit did: one by one, so each checkpoint
    // gets the outcome that is its own.
    for (const e of group.flat()) {
      const outcome = await move(kv, [[e]]);
      if (outcome === "moved") {
        result.recovered++;
      } else if (outcome === "error") {
        result.left++;
      } else {
        const removed = await removeStale(kv, e);
        if (removed === "error") result.left++;
        else if (removed === "removed") result.stale++;
      }
    }
  }
  return result;
}

/** Consecutive runs of `entries` that each fit one atomic operation. */
function* groups(entries: Entry[]): Generator<Group> {
  let group: Group = [];
  let budget = new AtomicBudget();
  let packer = new ChunkPacker();
  for (const e of entries) {
    const bytes = recordBytes(e.value);
    let starts = packer.startsChunk(bytes);
    if (group.length > 0 && !budget.fits(moveCost(bytes, starts))) {
      yield group;
      group = [];
      budget = new AtomicBudget();
      packer = new ChunkPacker();
      starts = true;
    }
    budget.add(moveCost(bytes, starts));
    packer.add(bytes);
    if (starts) group.push([]);
    group[group.length - 1].push(e);
  }
  if (group.length > 0) yield group;
}

/** What moving one checkpoint adds to an operation (see the constants). */
function moveCost(bytes: number, startsChunk: boolean): AtomicCost {
  const chunk = startsChunk ? 1 : 0;
  return {
    checks: CHECKS_PER_CHECKPOINT + chunk,
    mutations: 1 + chunk,
    keyBytes: (3 + 2 * chunk) * KEY_BYTES,
    bytes: bytes + (3 + 2 * chunk) * KEY_BYTES +
      (startsChunk ? chunkBytes(0) : 0),
  };
}

/**
 * Moves checkpoints into new chunks in one atomic operation, unless a
 * check fails ("conflict"). "error": the commit threw.
 */
async function move(
  kv: Deno.Kv,
  group: Group,
): Promise<"moved" | "conflict" | "error"> {
  const op = kv.atomic();
  for (const chunk of group) {
    for (const e of chunk) {
      op.check(e)
        .check({ key: [...ASIDE, keyId(e.key)], versionstamp: null })
        .delete(e.key);
    }
    const records = chunk.map((e) => e.value);
    const key = chunkKey(records);
    op.check({ key, versionstamp: null }).set(key, chunkValue(records));
  }
  try {
    return (await op.commit()).ok ? "moved" : "conflict";
  } catch {
    // Over one of Deno KV's limits, or the database failed: the caller
    // tries smaller steps.
    return "error";
  }
}

/**
 * Deletes a checkpoint whose record was committed (or set aside) already.
 * "changed": another process changed or removed it meanwhile.
 */
async function removeStale(
  kv: Deno.Kv,
  e: Entry,
): Promise<"removed" | "changed" | "error"> {
  try {
    const res = await kv.atomic().check(e).delete(e.key).commit();
    return res.ok ? "removed" : "changed";
  } catch {
    return "error";
  }
}
