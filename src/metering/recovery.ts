/**
 * Start-up recovery: the in-flight checkpoints a process left when it died
 * become pending records (`finish_reason` `interrupted`, the counts of the
 * last checkpoint), each moved atomically and only if no record of its id
 * was committed or set aside already.
 *
 * Checkpoints are moved in chunks sized against Deno KV's limits on one
 * atomic operation. A chunk that is refused (a record of one of its ids
 * exists) or whose commit throws (a limit, a database error) is retried
 * one checkpoint at a time, so that one checkpoint cannot keep the others
 * from being recovered, nor the queue from opening.
 *
 * @module
 */

import { COMMIT_BUDGET, KV_LIMITS, recordBytes } from "./kv_limits.ts";
import { ASIDE, INFLIGHT, KEY_BYTES, PENDING } from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

// Moving one checkpoint checks three keys (the checkpoint is unchanged, no
// pending record and no set-aside entry of its id exist) and writes two
// (the pending record, the checkpoint's delete). Checks are the scarcest:
// Deno KV allows 100 per atomic operation, and throws past that.
const CHECKS_PER_CHECKPOINT = 3;
const MUTATIONS_PER_CHECKPOINT = 2;

/** Most checkpoints moved in one atomic operation (33). */
export const RECOVER_PER_OP = Math.min(
  Math.floor(KV_LIMITS.checksPerAtomic / CHECKS_PER_CHECKPOINT),
  Math.floor(COMMIT_BUDGET.mutations / MUTATIONS_PER_CHECKPOINT),
  Math.floor(COMMIT_BUDGET.keyBytes / (MUTATIONS_PER_CHECKPOINT * KEY_BYTES)),
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

/** Turns every checkpoint in `kv` into a pending record (see module doc). */
export async function recoverCheckpoints(
  kv: Deno.Kv,
): Promise<RecoveryResult> {
  const entries: Entry[] = [];
  for await (const e of kv.list<UsageRecord>({ prefix: [...INFLIGHT] })) {
    entries.push(e);
  }

  const result: RecoveryResult = { recovered: 0, stale: 0, left: 0 };
  for (const part of chunks(entries)) {
    if (part.length > 1 && await move(kv, part) === "moved") {
      result.recovered += part.length;
      continue;
    }

    // A record of one of these ids exists, or the commit failed: one by
    // one, so each checkpoint gets the outcome that is its own.
    for (const e of part) {
      const outcome = await move(kv, [e]);
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
function* chunks(entries: Entry[]): Generator<Entry[]> {
  let part: Entry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const b = recordBytes(e.value) + MUTATIONS_PER_CHECKPOINT * KEY_BYTES;
    const full = part.length >= RECOVER_PER_OP ||
      bytes + b > COMMIT_BUDGET.bytes;
    if (part.length > 0 && full) {
      yield part;
      part = [];
      bytes = 0;
    }
    part.push(e);
    bytes += b;
  }
  if (part.length > 0) yield part;
}

/**
 * Moves checkpoints to pending in one atomic operation, unless a record of
 * one of their ids exists ("conflict"). "error": the commit threw.
 */
async function move(
  kv: Deno.Kv,
  part: Entry[],
): Promise<"moved" | "conflict" | "error"> {
  const op = kv.atomic();
  for (const e of part) {
    const id = String(e.key[2]);
    op.check(e)
      .check({ key: [...PENDING, id], versionstamp: null })
      .check({ key: [...ASIDE, id], versionstamp: null })
      .set([...PENDING, id], e.value)
      .delete(e.key);
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
