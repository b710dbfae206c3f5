/**
 * Where the usage queue keeps what in its Deno KV database, and the shapes
 * of the values stored there. Shared by the writer (group_commit.ts), the
 * start-up recovery (recovery.ts), the operator tools (queue_tools.ts) and
 * the queue itself (queue.ts).
 *
 * Keys, each ending in a record's id (a UUIDv7, so listing a prefix
 * lists records by their generation's start):
 *
 * - `["usage", "pending", id]`: a chunk of records waiting for the billing
 *   service, `id` that of its first record (chunk.ts); a value written by
 *   an earlier version may be one record alone;
 * - `["usage", "aside", id]`: a record the billing service refused
 *   ({@link AsideEntry});
 * - `["usage", "inflight", id]`: the checkpoint of a generation in flight;
 * - `["usage", "probe"]`: the small write tried while commits fail.
 *
 * @module
 */

import { keyBytes } from "./kv_limits.ts";
import type { UsageRecord } from "./record.ts";

/** Prefix of pending records. */
export const PENDING = ["usage", "pending"] as const;
/** Prefix of set-aside entries. */
export const ASIDE = ["usage", "aside"] as const;
/** Prefix of in-flight checkpoints. */
export const INFLIGHT = ["usage", "inflight"] as const;
/** Key of the probe write. */
export const PROBE = ["usage", "probe"] as const;

/**
 * A typical key of each kind (a chunk's included), for the commit budgets
 * (ids are 36 bytes),
 * with a few bytes of margin.
 */
export const KEY_BYTES = keyBytes([...PENDING, "0".repeat(36)]) + 8;

/** A record the billing service refused, kept for inspection. */
export interface AsideEntry {
  record: UsageRecord;
  /** HTTP status of the refusal. */
  status: number;
  reason: string;
  set_aside_at: string;
}

/** One entry of `UsageQueue.dump()`. */
export type DumpEntry =
  | { state: "pending"; record: UsageRecord }
  | ({ state: "set_aside" } & AsideEntry)
  | { state: "in_flight"; record: UsageRecord };

/** Counts the keys under `prefix` (lists every one of them). */
export async function count(
  kv: Deno.Kv,
  prefix: readonly string[],
): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix: [...prefix] })) n++;
  return n;
}
