/**
 * The usage queue's writer: final records and in-flight checkpoints go to
 * Deno KV in group commits.
 *
 * - A write resolves only once it is committed. Writes that arrive while a
 *   commit is running are committed together in the next one, so
 *   durability costs one commit per burst rather than one per generation.
 * - The final records of a commit are written as one value, a chunk
 *   (chunk.ts), split in several only where one value would exceed Deno
 *   KV's limit; each chunk's key is checked to be free, so that a chunk
 *   never replaces another.
 * - A group is sized in bytes, checks, mutations and key bytes against
 *   Deno KV's limits (kv_limits.ts). If its commit fails anyway, its writes
 *   are retried one by one (a final record alone is a chunk of one), in
 *   rounds with pauses, so one bad record cannot fail the others.
 * - A final record's commit deletes its generation's checkpoint in the
 *   same atomic operation.
 * - From the moment a final record could not be committed at all until the
 *   next successful commit, the writer is `failing`, and tries a small
 *   probe write periodically so that it notices a recovered database even
 *   when no other write comes.
 *
 * @module
 */

import type { Clock, TimerId } from "../util/clock.ts";
import { chunkKey, ChunkPacker, chunkValue, packChunks } from "./chunk.ts";
import {
  AtomicBudget,
  type AtomicCost,
  chunkBytes,
  recordBytes,
} from "./kv_limits.ts";
import { INFLIGHT, KEY_BYTES, PROBE } from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";

/**
 * Default pauses between rounds of one-by-one retries after a group commit
 * failed: long enough to ride out a busy database, short enough that a
 * generation's end is not held up for long.
 */
export const RETRY_DELAYS_MS: readonly number[] = [25, 100, 400];

/**
 * Default time between probe writes while records cannot be committed, so
 * that the meter admits generations again soon after the database
 * recovers even when no other write comes.
 */
export const PROBE_INTERVAL_MS = 1_000;

/** What a write stores: a generation's final record, or its checkpoint. */
export type WriteKind = "final" | "inflight";

/** Options of {@link GroupCommitWriter}; every field is required here. */
export interface WriterOptions {
  /** Timers for retry pauses and probes. */
  clock: Clock;
  /** Pauses between rounds of one-by-one retries, in ms. */
  retryDelaysMs: readonly number[];
  /** How often a probe write is tried while commits fail, in ms. */
  probeIntervalMs: number;
  /** Estimated bytes per group commit. */
  commitBudgetBytes: number;
  /** Largest record accepted, by estimate, in bytes. */
  maxRecordBytes: number;
  /** Called after each commit that applied, with the final records it held. */
  onCommitted: (finals: number) => void;
}

interface Write {
  kind: WriteKind;
  record: UsageRecord;
  /** The record's {@link recordBytes}. */
  bytes: number;
  /** A final record whose generation has a checkpoint to delete. */
  deletesCheckpoint: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Commits writes to the queue's database in groups. */
export class GroupCommitWriter {
  #kv: Deno.Kv;
  #o: WriterOptions;
  #waiting: Write[] = [];
  #committing = false;
  #loop: Promise<void> | null = null;
  #failing = false;
  #probe: TimerId | null = null;
  #closed = false;
  /**
   * Generations with a checkpoint queued or committed: only their final
   * record needs to delete one. Most generations end before their first
   * checkpoint, and a delete costs as much as half a write.
   */
  #checkpointed = new Set<string>();

  constructor(kv: Deno.Kv, options: WriterOptions) {
    this.#kv = kv;
    this.#o = options;
  }

  /** True while a final record could not be committed (see module doc). */
  get failing(): boolean {
    return this.#failing;
  }

  /** True when no write is waiting or being committed. */
  get idle(): boolean {
    return !this.#committing && this.#waiting.length === 0;
  }

  /**
   * Queues a write; resolves once it is committed.
   *
   * @throws {RangeError} (rejects) when the record is too large to store.
   * @throws {Error} (rejects) when the database refused it after retries,
   *   or the writer is closed.
   */
  write(kind: WriteKind, record: UsageRecord): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#closed) {
        reject(new Error("Cannot write usage: the usage queue is closed"));
        return;
      }
      const bytes = recordBytes(record);
      if (bytes + 2 * KEY_BYTES > this.#o.maxRecordBytes) {
        if (kind === "final") this.#markFailing();
        reject(
          new RangeError(
            `Cannot store usage record ${record.id}: about ${
              bytes + 2 * KEY_BYTES
            } bytes, over the ${this.#o.maxRecordBytes} a record may take`,
          ),
        );
        return;
      }
      const id = record.id;
      if (kind === "inflight") this.#checkpointed.add(id);
      const deletesCheckpoint = kind === "final" && this.#checkpointed.has(id);
      this.#waiting.push({
        kind,
        record,
        bytes,
        deletesCheckpoint,
        resolve,
        reject,
      });
      // The loop starts with a write waiting, so it always reaches an
      // await (a commit) before it returns: #committing stays true until
      // the waiting list is empty.
      if (!this.#committing) this.#loop = this.#commitLoop();
    });
  }

  /** Waits until every write queued so far is settled, then refuses more. */
  async close(): Promise<void> {
    while (this.#committing) await this.#loop;
    this.#closed = true;
    if (this.#probe !== null) this.#o.clock.clearTimeout(this.#probe);
    this.#probe = null;
  }

  async #commitLoop(): Promise<void> {
    this.#committing = true;
    try {
      while (this.#waiting.length > 0) {
        const batch = this.#takeBatch();
        try {
          await this.#commit(batch);
          for (const w of batch) w.resolve();
        } catch {
          await this.#retryAlone(batch);
        }
      }
    } finally {
      this.#committing = false;
    }
  }

  /** The oldest writes that fit one commit, checkpoints superseded dropped. */
  #takeBatch(): Write[] {
    const budget = new AtomicBudget({ bytes: this.#o.commitBudgetBytes });
    // Final records fill chunks in this order, as #commit will pack them.
    const packer = new ChunkPacker();
    let n = 0;
    while (n < this.#waiting.length) {
      const w = this.#waiting[n];
      const starts = w.kind === "final" && packer.startsChunk(w.bytes);
      const cost = writeCost(w, starts);
      if (n > 0 && !budget.fits(cost)) break;
      budget.add(cost);
      if (w.kind === "final") packer.add(w.bytes);
      n++;
    }
    const batch = this.#waiting.splice(0, n);

    // A record committed in this batch deletes its checkpoint; writing the
    // checkpoint too would only race with that delete.
    const finals = new Set(
      batch.filter((w) => w.kind === "final").map((w) => w.record.id),
    );
    return batch.filter((w) => {
      if (w.kind === "final" || !finals.has(w.record.id)) return true;
      w.resolve();
      return false;
    });
  }

  // TODO(#5): at about 4,500 one-token generations/s, durable metering
  // takes about a tenth of the sidecar's busy samples, and this commit is
  // most of it: the op, V8 serialization and the size estimates of
  // kv_limits.ts. Throughput with it is 0.81 to 0.93 of throughput without
  // it across runs (target 0.9). Scenario 6's floor, a meter that only
  // commits, posts and deletes (bench/probe/floor_meter.ts), was at 0.85
  // and 0.88 in two five-repetition runs, this meter at 0.98 and 0.95 of
  // it: most of the cost is Deno KV's commit and V8's serialization, not
  // the code around them. A commit already holds about 38 records at that
  // rate, so a longer commit window would not buy it back either.
  async #commit(batch: Write[]): Promise<void> {
    const op = this.#kv.atomic();
    const finals: Write[] = [];
    for (const w of batch) {
      if (w.kind === "final") {
        finals.push(w);
        if (w.deletesCheckpoint) op.delete([...INFLIGHT, w.record.id]);
      } else {
        op.set([...INFLIGHT, w.record.id], w.record);
      }
    }
    for (const run of packChunks(finals, (w) => w.bytes)) {
      const records = run.map((w) => w.record);
      const key = chunkKey(records);
      op.check({ key, versionstamp: null }).set(key, chunkValue(records));
    }
    const res = await op.commit();
    if (!res.ok) {
      throw new Error(
        "usage queue commit was not applied: a chunk's key is taken",
      );
    }
    for (const w of finals) this.#checkpointed.delete(w.record.id);
    this.#o.onCommitted(finals.length);
    this.#recoveredFromFailing();
  }

  /** Retries each write of a failed group alone, in rounds with pauses. */
  async #retryAlone(batch: Write[]): Promise<void> {
    let left = batch;
    for (let round = 0;; round++) {
      const failed: { w: Write; err: unknown }[] = [];
      for (const w of left) {
        try {
          await this.#commit([w]);
          w.resolve();
        } catch (err) {
          failed.push({ w, err });
        }
      }
      if (failed.length === 0) return;
      if (round >= this.#o.retryDelaysMs.length) {
        for (const { w, err } of failed) {
          if (w.kind === "final") {
            this.#markFailing();
            // Best effort: a checkpoint left behind would be billed again
            // at the next start, beside the record logged for hand billing.
            if (this.#checkpointed.delete(w.record.id)) {
              await this.#kv.delete([...INFLIGHT, w.record.id]).catch(() => {});
            }
          }
          w.reject(err);
        }
        return;
      }
      await this.#pause(this.#o.retryDelaysMs[round]);
      left = failed.map((f) => f.w);
    }
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => this.#o.clock.setTimeout(resolve, ms));
  }

  #markFailing(): void {
    this.#failing = true;
    this.#scheduleProbe();
  }

  #recoveredFromFailing(): void {
    this.#failing = false;
    if (this.#probe !== null) {
      this.#o.clock.clearTimeout(this.#probe);
      this.#probe = null;
    }
  }

  #scheduleProbe(): void {
    if (this.#probe !== null || this.#closed) return;
    this.#probe = this.#o.clock.setTimeout(async () => {
      this.#probe = null;
      if (!this.#failing || this.#closed) return;
      try {
        const res = await this.#kv.atomic()
          .set([...PROBE], new Date().toISOString()).commit();
        if (res.ok) this.#recoveredFromFailing();
        else this.#scheduleProbe();
      } catch {
        this.#scheduleProbe();
      }
    }, this.#o.probeIntervalMs);
  }
}

/**
 * What a write adds to its commit: a checkpoint is one set; a final record
 * is bytes of its chunk, a checkpoint's delete when it has one, and, when
 * it starts a chunk, that chunk's set and the check that its key is free.
 */
function writeCost(w: Write, startsChunk: boolean): AtomicCost {
  if (w.kind === "inflight") {
    return {
      checks: 0,
      mutations: 1,
      keyBytes: KEY_BYTES,
      bytes: w.bytes + KEY_BYTES,
    };
  }
  const del = w.deletesCheckpoint ? 1 : 0;
  const chunk = startsChunk ? 1 : 0;
  return {
    checks: chunk,
    mutations: del + chunk,
    keyBytes: (del + 2 * chunk) * KEY_BYTES,
    bytes: w.bytes + (del + 2 * chunk) * KEY_BYTES +
      (startsChunk ? chunkBytes(0) : 0),
  };
}
