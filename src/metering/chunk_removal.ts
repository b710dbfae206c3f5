/**
 * Removing pending records from their chunks (chunk.ts): for records the
 * billing service acknowledged, records set aside, and drained records.
 *
 * - Each chunk is changed by one atomic operation that checks its
 *   versionstamp: deleted when every record left in it goes, rewritten
 *   with the rest otherwise. A chunk that changed since it was read
 *   (another process removed some of its records) is read again and the
 *   removal planned anew, so a concurrent change is never overwritten.
 * - Where each record is comes from a {@link ChunkIndex} filled when the
 *   records were read (`peek`), so the common case, a whole batch just
 *   read, needs no read at all. Records the index does not know are looked
 *   for by listing the pending chunks once.
 * - A set-aside entry is written in the same operation that removes its
 *   record, so a record is always pending or set aside, never both or
 *   neither.
 * - Operations are sized against Deno KV's limits (kv_limits.ts), several
 *   chunks to one operation.
 *
 * @module
 */

import { utf8Length } from "../util/utf8.ts";
import {
  AtomicBudget,
  type AtomicCost,
  chunkBytes,
  keyBytes,
  recordBytes,
} from "./kv_limits.ts";
import {
  type ChunkIndex,
  chunkValue,
  listChunks,
  readChunk,
  type StoredChunk,
} from "./chunk.ts";
import { ASIDE, type AsideEntry } from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

// A chunk that keeps changing under concurrent removals is read again at
// most this many times; each time, some other process made progress.
const MAX_ROUNDS = 8;

/** Options of {@link removeRecords}. */
export interface RemoveOptions {
  /** Entries to set aside, by record id, as their records are removed. */
  aside?: ReadonlyMap<string, AsideEntry>;
  /** Told how many records each operation removed, once it is committed. */
  onRemoved?: (records: number) => void;
}

/** One chunk's part of a removal. */
interface Change {
  chunk: StoredChunk;
  removed: UsageRecord[];
  rest: UsageRecord[];
  cost: AtomicCost;
}

/**
 * Removes the pending records with these ids (see module doc); ids no
 * longer pending are skipped. Returns how many records were removed.
 *
 * @throws {Error} (rejects) when the database fails, or when the chunks
 *   kept changing; what was removed before stays removed.
 */
export async function removeRecords(
  kv: Deno.Kv,
  ids: Iterable<string>,
  index: ChunkIndex,
  options: RemoveOptions = {},
): Promise<number> {
  const want = new Set(ids);
  const unknown = [...want].filter((id) => index.find(id) === undefined);
  if (unknown.length > 0) await locate(kv, new Set(unknown), index);

  let removed = 0;
  for (let round = 0;; round++) {
    // The index knows where every pending record of `want` is: one it
    // does not know is not pending (any more).
    for (const id of want) if (index.find(id) === undefined) want.delete(id);
    if (want.size === 0) return removed;
    if (round === MAX_ROUNDS) {
      throw new Error(
        `Cannot remove ${want.size} usage records: their chunks kept changing`,
      );
    }

    const changed: StoredChunk[] = [];
    for (const op of operations(plan(want, index, options.aside))) {
      const atomic = kv.atomic();
      for (const c of op) write(atomic, c, options.aside);
      const res = await atomic.commit();
      if (!res.ok) {
        changed.push(...op.map((c) => c.chunk));
        continue;
      }
      let n = 0;
      for (const c of op) {
        if (c.rest.length === 0) {
          index.drop(c.chunk.key);
        } else {
          index.put({
            key: c.chunk.key,
            versionstamp: res.versionstamp,
            records: c.rest,
          });
        }
        for (const r of c.removed) want.delete(r.id);
        n += c.removed.length;
      }
      removed += n;
      options.onRemoved?.(n);
    }

    // Read again what changed meanwhile; the next round plans with it.
    for (const chunk of changed) {
      const e = await kv.get(chunk.key);
      if (e.versionstamp === null) index.drop(chunk.key);
      else index.put(readChunk(e));
    }
  }
}

/** Puts the chunks holding any of `ids` into `index`. */
async function locate(
  kv: Deno.Kv,
  ids: Set<string>,
  index: ChunkIndex,
): Promise<void> {
  for await (const chunk of listChunks(kv)) {
    if (chunk.records.some((r) => ids.has(r.id))) index.put(chunk);
  }
}

/** Each chunk holding records of `want`, with what goes and what stays. */
function plan(
  want: Set<string>,
  index: ChunkIndex,
  aside: ReadonlyMap<string, AsideEntry> | undefined,
): Change[] {
  const chunks = new Set<StoredChunk>();
  for (const id of want) chunks.add(index.find(id)!);

  const changes: Change[] = [];
  for (const chunk of chunks) {
    const removed: UsageRecord[] = [];
    const rest: UsageRecord[] = [];
    for (const r of chunk.records) (want.has(r.id) ? removed : rest).push(r);

    // A check and a delete or a set of the chunk, plus the set-aside
    // entries; check keys counted in the bytes too, to be safe.
    const key = keyBytes(chunk.key as (string | number)[]);
    const cost: AtomicCost = {
      checks: 1,
      mutations: 1,
      keyBytes: 2 * key,
      bytes: 2 * key +
        (rest.length === 0
          ? 0
          : chunkBytes(rest.reduce((n, r) => n + recordBytes(r), 0))),
    };
    for (const r of removed) {
      const entry = aside?.get(r.id);
      if (entry === undefined) continue;
      const k = keyBytes([...ASIDE, r.id]);
      cost.mutations++;
      cost.keyBytes += k;
      cost.bytes += k + asideBytes(entry);
    }
    changes.push({ chunk, removed, rest, cost });
  }
  return changes;
}

/** `changes` in groups that each fit one atomic operation. */
function* operations(changes: Change[]): Generator<Change[]> {
  let op: Change[] = [];
  let budget = new AtomicBudget();
  for (const c of changes) {
    if (op.length > 0 && !budget.fits(c.cost)) {
      yield op;
      op = [];
      budget = new AtomicBudget();
    }
    op.push(c);
    budget.add(c.cost);
  }
  if (op.length > 0) yield op;
}

function write(
  atomic: Deno.AtomicOperation,
  c: Change,
  aside: ReadonlyMap<string, AsideEntry> | undefined,
): void {
  atomic.check(c.chunk);
  if (c.rest.length === 0) atomic.delete(c.chunk.key);
  else atomic.set(c.chunk.key, chunkValue(c.rest));
  for (const r of c.removed) {
    const entry = aside?.get(r.id);
    if (entry !== undefined) atomic.set([...ASIDE, r.id], entry);
  }
}

// A set-aside entry is its record plus a status, a reason and a time.
function asideBytes(entry: AsideEntry): number {
  return recordBytes(entry.record) + utf8Length(entry.reason) +
    utf8Length(entry.set_aside_at) + 64;
}
