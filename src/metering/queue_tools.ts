/**
 * The usage queue's operator tools: `--drain-usage` (export and remove the
 * pending records) and `--dump-usage` (print everything, remove nothing),
 * plus the listing of checkpoints. Both may run in a process of their own
 * beside a live sidecar (docs/metering.md, "No billing endpoint").
 *
 * @module
 */

import { DELETES_PER_COMMIT } from "./kv_limits.ts";
import {
  ASIDE,
  type AsideEntry,
  type DumpEntry,
  INFLIGHT,
  PENDING,
} from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

/** Options of {@link drainPending}. */
export interface DrainOptions {
  /** Records per chunk handed to `write`; default 100, at most 300. */
  chunkRecords?: number;
  /** Told how many records each chunk removed, once they are removed. */
  onRemoved?: (records: number) => void;
}

/**
 * Exports and removes every pending record, oldest first, in chunks: each
 * chunk is handed to `write` and deleted only once `write` has resolved,
 * so a record is removed only after it was written out. Stops at the
 * newest record pending when it began. Returns how many were removed.
 *
 * @throws {Error} (rejects) what `write` threw, or when a delete was not
 *   applied; the chunk at hand stays.
 */
export async function drainPending(
  kv: Deno.Kv,
  write: (records: UsageRecord[]) => Promise<void>,
  options: DrainOptions = {},
): Promise<number> {
  const chunk = Math.min(options.chunkRecords ?? 100, DELETES_PER_COMMIT);
  let last: string | null = null;
  for await (const e of kv.list({ prefix: [...PENDING] }, { reverse: true })) {
    last = String(e.key[2]);
    break;
  }
  if (last === null) return 0;

  let removed = 0;
  let start: Deno.KvKey = [...PENDING, ""];
  const end: Deno.KvKey = [...PENDING, last + "\0"];
  for (;;) {
    const records: UsageRecord[] = [];
    for await (
      const e of kv.list<UsageRecord>({ start, end }, { limit: chunk })
    ) {
      records.push(e.value);
    }
    if (records.length === 0) return removed;

    await write(records);
    const op = kv.atomic();
    for (const r of records) op.delete([...PENDING, r.id]);
    const res = await op.commit();
    if (!res.ok) throw new Error("usage queue drain delete was not applied");
    removed += records.length;
    options.onRemoved?.(records.length);
    start = [...PENDING, records[records.length - 1].id + "\0"];
  }
}

/** Every pending record, set-aside entry and checkpoint, oldest first. */
export async function* dumpEntries(kv: Deno.Kv): AsyncGenerator<DumpEntry> {
  for await (const e of kv.list<UsageRecord>({ prefix: [...PENDING] })) {
    yield { state: "pending", record: e.value };
  }
  for await (const e of kv.list<AsideEntry>({ prefix: [...ASIDE] })) {
    yield { state: "set_aside", ...e.value };
  }
  for await (const e of kv.list<UsageRecord>({ prefix: [...INFLIGHT] })) {
    yield { state: "in_flight", record: e.value };
  }
}

/** The checkpoints currently stored. */
export async function listInflight(kv: Deno.Kv): Promise<UsageRecord[]> {
  const out: UsageRecord[] = [];
  for await (const e of kv.list<UsageRecord>({ prefix: [...INFLIGHT] })) {
    out.push(e.value);
  }
  return out;
}
