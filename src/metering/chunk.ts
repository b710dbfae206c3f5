/**
 * Pending usage records are stored in chunks: one Deno KV value holds the
 * final records of one group commit (split in several values only when
 * they would not fit one: {@link CHUNK_BYTES}), so that a commit costs one
 * write of one value, not one per record.
 *
 * - A chunk's value is `{ v: 1, records: [...] }`, its records in id
 *   order, under `["usage", "pending", <id of its first record>]`. Record
 *   ids are UUIDv7s of their generations' start, so listing the prefix
 *   lists chunks by their oldest record.
 * - A chunk never gains records. Removing some (acknowledged, set aside,
 *   drained) rewrites it under the same key with the rest, and removing
 *   the last deletes it: a record stays under the key it was committed
 *   under until it leaves the queue.
 * - A value that is a record itself (the one-record-per-value layout of
 *   earlier versions) is read as a chunk of that one record, so a queue
 *   written by an earlier version is read, sent and removed as it is.
 *
 * @module
 */

import { CHUNK_BYTES, chunkBytes } from "./kv_limits.ts";
import { PENDING } from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

/** Version of a chunk's shape. */
export const CHUNK_VERSION = 1;

/** A chunk's value as stored. */
export interface UsageChunk {
  v: typeof CHUNK_VERSION;
  /** In id order; never empty when written. */
  records: UsageRecord[];
}

/** A chunk as it was read from the database. */
export interface StoredChunk {
  key: Deno.KvKey;
  /** The versionstamp it was read at: a rewrite checks that it is unchanged. */
  versionstamp: string;
  records: UsageRecord[];
}

/** The value of a chunk holding `records`, sorted here by id. */
export function chunkValue(records: UsageRecord[]): UsageChunk {
  return { v: CHUNK_VERSION, records: [...records].sort(byId) };
}

/** The key of a chunk holding `records` (at least one). */
export function chunkKey(records: UsageRecord[]): Deno.KvKey {
  let first = records[0].id;
  for (const r of records) if (r.id < first) first = r.id;
  return [...PENDING, first];
}

/** Orders records by id. */
export function byId(a: UsageRecord, b: UsageRecord): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** The id part of a chunk's key. */
export function keyId(key: Deno.KvKey): string {
  return String(key[PENDING.length]);
}

/**
 * The records of a value listed under the pending prefix: a chunk, or a
 * record stored alone by an earlier version.
 *
 * @throws {SyntaxError} naming the key, when the value is neither (a
 *   chunk of a newer version among them): nothing is guessed or dropped.
 */
export function readChunk(entry: Deno.KvEntry<unknown>): StoredChunk {
  const v = entry.value as Record<string, unknown> | null;
  const chunk = { key: entry.key, versionstamp: entry.versionstamp };
  if (isRecord(v) && !("records" in v) && !("v" in v)) {
    return { ...chunk, records: [v] };
  }
  if (
    typeof v === "object" && v !== null && v.v === CHUNK_VERSION &&
    Array.isArray(v.records) && v.records.every(isRecord)
  ) {
    return { ...chunk, records: v.records };
  }
  const shape = typeof v === "object" && v !== null && "v" in v
    ? `a chunk of version ${JSON.stringify(v.v)}`
    : `a ${v === null ? "null" : typeof v}`;
  throw new SyntaxError(
    `Cannot read the usage queue's value at ${
      entry.key.join("/")
    }: ${shape}, neither a chunk of usage records (version ${CHUNK_VERSION}) nor a usage record`,
  );
}

function isRecord(v: unknown): v is UsageRecord {
  return typeof v === "object" && v !== null && !Array.isArray(v) &&
    typeof (v as { id?: unknown }).id === "string";
}

/**
 * Splits items, in the order given, into runs that each make a chunk of at
 * most {@link CHUNK_BYTES} by estimate; an item too large for that is a
 * run of its own. Keeps the running state, so that a commit being sized
 * one write at a time splits exactly as {@link packChunks} will.
 */
export class ChunkPacker {
  #limit: number;
  #bytes = 0;
  #count = 0;

  constructor(limitBytes: number = CHUNK_BYTES) {
    this.#limit = limitBytes;
  }

  /** Whether an item of `bytes` (its {@link recordBytes}) starts a run. */
  startsChunk(bytes: number): boolean {
    return this.#count === 0 || chunkBytes(this.#bytes + bytes) > this.#limit;
  }

  /** Adds an item; true when it started a run. */
  add(bytes: number): boolean {
    const starts = this.startsChunk(bytes);
    if (starts) {
      this.#bytes = 0;
      this.#count = 0;
    }
    this.#bytes += bytes;
    this.#count++;
    return starts;
  }
}

/** `items` in runs as {@link ChunkPacker} splits them. */
export function packChunks<T>(
  items: readonly T[],
  bytesOf: (item: T) => number,
  limitBytes: number = CHUNK_BYTES,
): T[][] {
  const packer = new ChunkPacker(limitBytes);
  const runs: T[][] = [];
  for (const item of items) {
    if (packer.add(bytesOf(item))) runs.push([]);
    runs[runs.length - 1].push(item);
  }
  return runs;
}

/** The first key after `key` and every key it prefixes, for paging. */
export function keyAfter(key: Deno.KvKey): Deno.KvKey {
  return [...PENDING, keyId(key) + "\0"];
}

/** Up to `limit` chunks of `selector` (every pending chunk by default). */
export async function readChunks(
  kv: Deno.Kv,
  limit: number,
  selector: Deno.KvListSelector = { prefix: [...PENDING] },
): Promise<StoredChunk[]> {
  const out: StoredChunk[] = [];
  for await (const e of kv.list(selector, { limit, batchSize: limit })) {
    out.push(readChunk(e));
  }
  return out;
}

/** Every pending chunk, in key order. */
export async function* listChunks(
  kv: Deno.Kv,
): AsyncGenerator<StoredChunk> {
  for await (const e of kv.list({ prefix: [...PENDING] })) {
    yield readChunk(e);
  }
}

/** Counts pending records (reads every chunk: its cost grows with them). */
export async function countRecords(kv: Deno.Kv): Promise<number> {
  let n = 0;
  for await (const c of listChunks(kv)) n += c.records.length;
  return n;
}

/**
 * Which chunk each record was read from, so that removing records read a
 * moment ago needs no second read: one operation checks and rewrites (or
 * deletes) each chunk as it was read.
 */
export class ChunkIndex {
  #chunks = new Map<string, StoredChunk>();
  #byRecord = new Map<string, StoredChunk>();

  /** Records `chunk` as the latest known state of its key. */
  put(chunk: StoredChunk): void {
    this.drop(chunk.key);
    this.#chunks.set(keyId(chunk.key), chunk);
    for (const r of chunk.records) this.#byRecord.set(r.id, chunk);
  }

  /** Forgets the chunk under `key` (it was deleted, or changed). */
  drop(key: Deno.KvKey): void {
    const old = this.#chunks.get(keyId(key));
    if (old === undefined) return;
    this.#chunks.delete(keyId(key));
    for (const r of old.records) {
      if (this.#byRecord.get(r.id) === old) this.#byRecord.delete(r.id);
    }
  }

  /** The chunk record `id` was last seen in, if known. */
  find(id: string): StoredChunk | undefined {
    return this.#byRecord.get(id);
  }

  /** Forgets everything. */
  clear(): void {
    this.#chunks.clear();
    this.#byRecord.clear();
  }
}
