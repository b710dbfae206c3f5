/**
 * Reading the oldest pending records out of their chunks (chunk.ts): for
 * `peek` (the reporter's next batch) and `oldestMs` (a metric).
 *
 * Chunks are listed in key order, and a chunk's key is the id of its
 * oldest record when it was written. A peek reads whole chunks, as few as
 * give the records wanted, and hands back the chunks too, so that
 * acknowledging what it returned needs no second read.
 *
 * @module
 */

import { keyAfter, keyId, readChunks, type StoredChunk } from "./chunk.ts";
import { PENDING } from "./queue_keys.ts";
import { type UsageRecord, uuidv7Time } from "./record.ts";

/**
 * Most chunks {@link oldestRecordMs} reads: it is read for a metric, on
 * every scrape, and an answer a few records off is worth less than a
 * bounded read.
 */
export const OLDEST_CHUNKS_READ = 16;

// Most chunks read in one listing while peeking.
const CHUNKS_PER_READ = 100;

/** What {@link readOldest} read. */
export interface OldestRead {
  /** Up to `limit` records, chunk by chunk. */
  records: UsageRecord[];
  /** Every chunk read, the last perhaps only partly returned. */
  chunks: StoredChunk[];
  /** Records per chunk among those read. */
  perChunk: number;
  /** Fewer than `limit` records: the listing reached the queue's end. */
  whole: boolean;
}

/**
 * The `limit` oldest pending records, chunk by chunk. One listing reads
 * about as many chunks as the records still wanted take, by the records
 * per chunk seen so far (`perChunkHint`, from an earlier read, before the
 * first), so that few chunks are read that are not returned.
 *
 * @throws {SyntaxError} (rejects) when a stored value is neither a chunk
 *   nor a record (chunk.ts).
 */
export async function readOldest(
  kv: Deno.Kv,
  limit: number,
  perChunkHint = 0,
): Promise<OldestRead> {
  const records: UsageRecord[] = [];
  const chunks: StoredChunk[] = [];
  let seen = 0;
  let selector: Deno.KvListSelector = { prefix: [...PENDING] };
  while (records.length < limit) {
    const perChunk = chunks.length > 0 ? seen / chunks.length : perChunkHint;
    const n = perChunk > 0
      ? Math.min(
        CHUNKS_PER_READ,
        Math.ceil((limit - records.length) / perChunk),
      )
      : 1;
    const page = await readChunks(kv, n, selector);
    for (const chunk of page) {
      chunks.push(chunk);
      seen += chunk.records.length;
      for (const r of chunk.records) {
        if (records.length === limit) break;
        records.push(r);
      }
    }
    if (page.length < n) break;
    selector = {
      prefix: [...PENDING],
      start: keyAfter(page[page.length - 1].key),
    };
  }
  return {
    records,
    chunks,
    perChunk: chunks.length > 0 ? seen / chunks.length : 0,
    whole: records.length < limit,
  };
}

/**
 * Creation time (Unix ms) of the oldest pending record, or null.
 *
 * No record of a chunk is older than its key, so chunks are read in key
 * order until one's key is younger than the oldest record seen. That is
 * one chunk unless the first lost its oldest records to an ack; past
 * {@link OLDEST_CHUNKS_READ} chunks, the oldest seen is taken.
 */
export async function oldestRecordMs(kv: Deno.Kv): Promise<number | null> {
  let oldest: string | null = null;
  let selector: Deno.KvListSelector = { prefix: [...PENDING] };
  for (let read = 0; read < OLDEST_CHUNKS_READ; read++) {
    const [chunk] = await readChunks(kv, 1, selector);
    if (chunk === undefined) break;
    if (oldest !== null && keyId(chunk.key) >= oldest) break;
    for (const r of chunk.records) {
      if (oldest === null || r.id < oldest) oldest = r.id;
    }
    if (oldest === keyId(chunk.key)) break;
    selector = { prefix: [...PENDING], start: keyAfter(chunk.key) };
  }
  return oldest === null ? null : uuidv7Time(oldest);
}
