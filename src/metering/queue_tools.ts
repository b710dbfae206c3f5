/**
 * The usage queue's operator tools: `--drain-usage` (export and remove the
 * pending records) and `--dump-usage` (print everything, remove nothing),
 * plus the listing of checkpoints. Both may run in a process of their own
 * beside a live sidecar (docs/metering.md, "No billing endpoint").
 *
 * @module
 */

import { ChunkIndex, keyAfter, listChunks, readChunks } from "./chunk.ts";
import { removeRecords } from "./chunk_removal.ts";
import {
  ASIDE,
  type AsideEntry,
  type DumpEntry,
  INFLIGHT,
  PENDING,
} from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

/** Most records handed to one `write` of {@link drainPending}. */
export const MAX_DRAIN_PART = 300;

// Chunks read at a time while draining: a few hundred records.
const CHUNKS_PER_READ = 4;

/** Options of {@link drainPending}. */
export interface DrainOptions {
  /** Records per part handed to `write`; default 100, at most 300. */
  chunkRecords?: number;
  /** Told how many records each part removed, once they are removed. */
  onRemoved?: (records: number) => void;
}

/**
 * Exports and removes every pending record, oldest first, in parts: each
 * part is handed to `write` and removed only once `write` has resolved,
 * so a record is removed only after it was written out. A part may end
 * inside a chunk: that chunk is rewritten with the rest (chunk_removal.ts).
 * Stops at the newest chunk pending when it began. Returns how many were
 * removed.
 *
 * @throws {Error} (rejects) what `write` threw, or when the database
 *   failed; the part at hand stays.
 * @throws {SyntaxError} (rejects) when a stored value is neither a chunk
 *   nor a record (chunk.ts).
 */
export async function drainPending(
  kv: Deno.Kv,
  write: (records: UsageRecord[]) => Promise<void>,
  options: DrainOptions = {},
): Promise<number> {
  const size = Math.max(
    1,
    Math.min(options.chunkRecords ?? 100, MAX_DRAIN_PART),
  );
  const last = await lastKey(kv);
  if (last === null) return 0;

  const index = new ChunkIndex();
  const end = keyAfter(last);
  let start: Deno.KvKey = [...PENDING, ""];
  let listed = false;
  const buffered: UsageRecord[] = [];
  let removed = 0;
  for (;;) {
    while (buffered.length < size && !listed) {
      const page = await readChunks(kv, CHUNKS_PER_READ, { start, end });
      listed = page.length < CHUNKS_PER_READ;
      for (const chunk of page) {
        index.put(chunk);
        buffered.push(...chunk.records);
        start = keyAfter(chunk.key);
      }
    }
    if (buffered.length === 0) return removed;

    const part = buffered.splice(0, size);
    await write(part);
    removed += await removeRecords(kv, part.map((r) => r.id), index, {
      onRemoved: options.onRemoved,
    });
  }
}

/** The key of the newest pending chunk, if any. */
async function lastKey(kv: Deno.Kv): Promise<Deno.KvKey | null> {
  for await (
    const e of kv.list({ prefix: [...PENDING] }, { reverse: true, limit: 1 })
  ) {
    return e.key;
  }
  return null;
}

/**
 * Every pending record, set-aside entry and checkpoint, oldest first.
 *
 * @throws {SyntaxError} (rejects) when a stored value is neither a chunk
 *   nor a record (chunk.ts).
 */
export async function* dumpEntries(kv: Deno.Kv): AsyncGenerator<DumpEntry> {
  for await (const chunk of listChunks(kv)) {
    for (const record of chunk.records) yield { state: "pending", record };
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
