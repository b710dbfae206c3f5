/**
 * The durable usage queue, in a Deno KV database (SQLite underneath).
 *
 * - `append()` resolves only once the record is committed, in group
 *   commits sized against Deno KV's limits (group_commit.ts). A group
 *   commit stores its records as one value, a chunk (chunk.ts), or as few
 *   as Deno KV's limit per value allows.
 * - `checkpoint()` writes the usage of generations still in flight under a
 *   prefix of its own; a record's commit deletes its generation's
 *   checkpoint in the same atomic operation. Checkpoints left by a process
 *   that died become pending records when the queue is next opened
 *   (recovery.ts).
 * - Records stay until `ack()` (the billing service took them),
 *   `setAside()` (the billing service refused them for good) or `drain()`
 *   (an operator exported them, queue_tools.ts); nothing else removes a
 *   record. Removing part of a chunk rewrites it with the rest
 *   (chunk_removal.ts).
 * - Records are listed chunk by chunk, chunks by their oldest record and
 *   the records of a chunk in id order: oldest first, but a record may
 *   follow some of a younger generation committed before it.
 *
 * Keys and stored values: queue_keys.ts.
 *
 * @module
 */

import { type Clock, realClock } from "../util/clock.ts";
import {
  GroupCommitWriter,
  PROBE_INTERVAL_MS,
  RETRY_DELAYS_MS,
} from "./group_commit.ts";
import { ChunkIndex, countRecords } from "./chunk.ts";
import { removeRecords } from "./chunk_removal.ts";
import { COMMIT_BUDGET, MAX_RECORD_BYTES } from "./kv_limits.ts";
import { ASIDE, type AsideEntry, count, type DumpEntry } from "./queue_keys.ts";
import { oldestRecordMs, readOldest } from "./pending_read.ts";
import { drainPending, dumpEntries, listInflight } from "./queue_tools.ts";
import { recoverCheckpoints } from "./recovery.ts";
import type { UsageRecord } from "./record.ts";

export type { AsideEntry, DumpEntry } from "./queue_keys.ts";

/** Options of {@link UsageQueue.open}. */
export interface QueueOptions {
  /**
   * Turn in-flight checkpoints left by a previous process into pending
   * records (default true). Tools that may run beside a live sidecar pass
   * false: that sidecar's checkpoints belong to generations still running.
   */
  recoverInflight?: boolean;
  /** Timers for retry pauses and probes; the process clock by default. */
  clock?: Clock;
  /** Pauses between rounds of one-by-one retries; default 25, 100, 400 ms. */
  retryDelaysMs?: readonly number[];
  /** How often a probe write is tried while commits fail; default 1000 ms. */
  probeIntervalMs?: number;
  /** Estimated bytes per group commit; default 512 KiB (kv_limits.ts). */
  commitBudgetBytes?: number;
  /** Largest record accepted, by estimate; default 60 KiB (kv_limits.ts). */
  maxRecordBytes?: number;
}

/** The queue of usage records not yet acknowledged by billing. */
export class UsageQueue {
  #kv: Deno.Kv;
  #writer: GroupCommitWriter;
  #depth = 0;
  #asideCount = 0;
  #recovered = 0;
  #unrecovered = 0;
  // Bumped on every change to #depth, so a count taken by listing the
  // database is only trusted when nothing changed while it was taken.
  #version = 0;
  // The chunks the last peek read, so that acknowledging what it returned
  // rewrites or deletes them without reading them again.
  #index = new ChunkIndex();
  // Records per chunk in the last peek, to read about as many as needed.
  #perChunk = 0;

  private constructor(kv: Deno.Kv, options: QueueOptions) {
    this.#kv = kv;
    this.#writer = new GroupCommitWriter(kv, {
      clock: options.clock ?? realClock,
      retryDelaysMs: options.retryDelaysMs ?? RETRY_DELAYS_MS,
      probeIntervalMs: options.probeIntervalMs ?? PROBE_INTERVAL_MS,
      commitBudgetBytes: options.commitBudgetBytes ?? COMMIT_BUDGET.bytes,
      maxRecordBytes: options.maxRecordBytes ?? MAX_RECORD_BYTES,
      onCommitted: (finals) => this.#changeDepth(finals),
    });
  }

  /**
   * Opens (creating it and its directory if needed) the database at `path`,
   * counts what it holds and, unless told otherwise, turns checkpoints left
   * by a previous process into pending records.
   *
   * @throws {Error} naming the path, when it cannot be created, opened or
   *   read.
   */
  static async open(
    path: string,
    options: QueueOptions = {},
  ): Promise<UsageQueue> {
    let kv: Deno.Kv;
    try {
      await Deno.mkdir(path.slice(0, path.lastIndexOf("/")) || "/", {
        recursive: true,
      });
      kv = await Deno.openKv(path);
    } catch (err) {
      throw new Error(
        `Cannot open the usage queue at ${path}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    const queue = new UsageQueue(kv, options);
    try {
      if (options.recoverInflight !== false) {
        const r = await recoverCheckpoints(kv);
        queue.#recovered = r.recovered;
        queue.#unrecovered = r.left;
      }
      queue.#depth = await countRecords(kv);
      queue.#asideCount = await count(kv, ASIDE);
    } catch (err) {
      kv.close();
      throw new Error(
        `Cannot read the usage queue at ${path}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return queue;
  }

  /** Records committed and not yet acknowledged. */
  get depth(): number {
    return this.#depth;
  }

  /** Records set aside. */
  get asideCount(): number {
    return this.#asideCount;
  }

  /** Checkpoints of an earlier process turned into records at open. */
  get recovered(): number {
    return this.#recovered;
  }

  /**
   * Checkpoints of an earlier process that could not be turned into
   * records at open; they stay, and the next open tries them again.
   */
  get unrecovered(): number {
    return this.#unrecovered;
  }

  /**
   * True from the moment a record could not be committed at all until the
   * next successful commit (a probe write is tried every second meanwhile).
   */
  get failing(): boolean {
    return this.#writer.failing;
  }

  /**
   * Commits a record (and deletes its generation's checkpoint); resolves
   * once it is durable.
   *
   * @throws {RangeError} (rejects) when the record is too large to store.
   * @throws {Error} (rejects) when the database refused it after retries.
   */
  append(record: UsageRecord): Promise<void> {
    return this.#writer.write("final", record);
  }

  /**
   * Writes the current usage of generations in flight, replacing their
   * earlier checkpoints. Returns how many could not be written.
   */
  async checkpoint(records: UsageRecord[]): Promise<number> {
    // Enqueued synchronously, before any await: a generation that ends
    // after this call has its record committed after its checkpoint.
    const writes = records.map((r) => this.#writer.write("inflight", r));
    const results = await Promise.allSettled(writes);
    return results.filter((r) => r.status === "rejected").length;
  }

  /**
   * Up to `limit` oldest pending records, in the queue's order (module
   * doc), across as many chunks as it takes.
   *
   * @throws {SyntaxError} (rejects) when a stored value is neither a chunk
   *   nor a record (chunk.ts).
   */
  async peek(limit: number): Promise<UsageRecord[]> {
    const before = this.#writer.idle ? this.#version : -1;
    this.#index.clear();
    const read = await readOldest(this.#kv, limit, this.#perChunk);
    for (const chunk of read.chunks) this.#index.put(chunk);
    if (read.chunks.length > 0) this.#perChunk = read.perChunk;
    // A short listing is the whole queue: it corrects the count when
    // another process (an operator's --drain-usage) removed records.
    if (read.whole) this.#trustCount(before, read.records.length);
    return read.records;
  }

  /**
   * Counts pending records in the database again (another process may
   * have removed some); true when the count was taken and applied. Reads
   * every pending chunk: its cost grows with the queue.
   */
  async recount(): Promise<boolean> {
    const before = this.#writer.idle ? this.#version : -1;
    const n = await countRecords(this.#kv);
    return this.#trustCount(before, n);
  }

  #trustCount(before: number, n: number): boolean {
    if (before < 0 || before !== this.#version || !this.#writer.idle) {
      return false;
    }
    if (n !== this.#depth) this.#changeDepth(n - this.#depth);
    return true;
  }

  #changeDepth(by: number): void {
    this.#depth = Math.max(0, this.#depth + by);
    this.#version++;
  }

  /**
   * Creation time (Unix ms) of the oldest pending record, or null
   * (`oldestRecordMs` in pending_read.ts: a read of one chunk, unless the
   * first chunk lost its oldest records to an ack).
   */
  oldestMs(): Promise<number | null> {
    return oldestRecordMs(this.#kv);
  }

  /**
   * Removes records the billing service acknowledged: each chunk that
   * holds some is deleted, or rewritten with the rest (chunk_removal.ts).
   * Cheapest for records the last `peek` returned.
   */
  async ack(ids: string[]): Promise<void> {
    await removeRecords(this.#kv, ids, this.#index, {
      onRemoved: (n) => this.#changeDepth(-n),
    });
  }

  /**
   * Moves a refused record aside: out of its chunk and into the set-aside
   * entries, in one atomic operation. A record no longer pending (another
   * process removed it) is left alone.
   */
  async setAside(
    record: UsageRecord,
    status: number,
    reason: string,
  ): Promise<void> {
    const entry: AsideEntry = {
      record,
      status,
      reason: reason.slice(0, 1000),
      set_aside_at: new Date().toISOString(),
    };
    await removeRecords(this.#kv, [record.id], this.#index, {
      aside: new Map([[record.id, entry]]),
      onRemoved: (n) => {
        this.#changeDepth(-n);
        this.#asideCount += n;
      },
    });
  }

  /**
   * Exports and removes every pending record, oldest first, in parts of
   * `chunkRecords` (`drainPending` in queue_tools.ts): a record is removed
   * only after `write` has resolved for its part. Returns how many were
   * removed.
   */
  drain(
    write: (records: UsageRecord[]) => Promise<void>,
    options: { chunkRecords?: number } = {},
  ): Promise<number> {
    return drainPending(this.#kv, write, {
      chunkRecords: options.chunkRecords,
      onRemoved: (n) => this.#changeDepth(-n),
    });
  }

  /** Every pending record, set-aside entry and checkpoint, oldest first. */
  dump(): AsyncGenerator<DumpEntry> {
    return dumpEntries(this.#kv);
  }

  /** Checkpoints currently stored (for tests and tools). */
  inflight(): Promise<UsageRecord[]> {
    return listInflight(this.#kv);
  }

  /** Waits for commits in progress, then closes the database. */
  async close(): Promise<void> {
    await this.#writer.close();
    this.#kv.close();
  }
}
