/**
 * The durable usage queue, in a Deno KV database (SQLite underneath).
 *
 * - `append()` resolves only once the record is committed; records that
 *   arrive while a commit is running are committed together in the next
 *   one (group commit), so durability costs one commit per burst rather
 *   than one per generation. A group is sized in bytes against Deno KV's
 *   limits (kv_limits.ts); if its commit fails anyway, its writes are
 *   retried one by one, so one bad record cannot fail the others.
 * - `checkpoint()` writes the usage of generations still in flight under a
 *   prefix of its own; a record's commit deletes its generation's
 *   checkpoint in the same atomic operation. Checkpoints left by a process
 *   that died become pending records when the queue is next opened.
 * - Records stay until `ack()` (the billing service took them),
 *   `setAside()` (the billing service refused them for good) or `drain()`
 *   (an operator exported them); nothing else removes a record.
 *
 * Keys: `["usage", "pending", id]`, `["usage", "aside", id]`,
 * `["usage", "inflight", id]`.
 *
 * @module
 */

import { type Clock, realClock } from "../util/clock.ts";
import {
  COMMIT_BUDGET,
  keyBytes,
  MAX_RECORD_BYTES,
  recordBytes,
} from "./kv_limits.ts";
import { type UsageRecord, uuidv7Time } from "./record.ts";

const PENDING = ["usage", "pending"] as const;
const ASIDE = ["usage", "aside"] as const;
const INFLIGHT = ["usage", "inflight"] as const;
const PROBE = ["usage", "probe"] as const;

// A typical key of each kind, for the commit budget (ids are 36 bytes).
const KEY_BYTES = keyBytes([...PENDING, "0".repeat(36)]) + 8;

// Deletes and moves per atomic operation: inside every limit of Deno KV,
// for keys of KEY_BYTES each.
const KEYS_PER_OP = 300;

// Recovery checks two keys per checkpoint; Deno KV allows 100 checks.
const RECOVER_PER_OP = 40;

// After a group commit fails, its writes are retried alone, in rounds,
// with these pauses between rounds: long enough to ride out a busy
// database, short enough that a generation's end is not held up for long.
const RETRY_DELAYS_MS = [25, 100, 400];

// While records cannot be committed, a small probe write is tried this
// often, so that the meter admits generations again soon after the
// database recovers even when no other write comes.
const PROBE_INTERVAL_MS = 1_000;

/** A record the billing service refused, kept for inspection. */
export interface AsideEntry {
  record: UsageRecord;
  /** HTTP status of the refusal. */
  status: number;
  reason: string;
  set_aside_at: string;
}

/** One entry of {@link UsageQueue.dump}. */
export type DumpEntry =
  | { state: "pending"; record: UsageRecord }
  | ({ state: "set_aside" } & AsideEntry)
  | { state: "in_flight"; record: UsageRecord };

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

interface Write {
  kind: "final" | "inflight";
  record: UsageRecord;
  bytes: number;
  mutations: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** The queue of usage records not yet acknowledged by billing. */
export class UsageQueue {
  #kv: Deno.Kv;
  #o: Required<Omit<QueueOptions, "recoverInflight">>;
  #depth = 0;
  #asideCount = 0;
  #recovered = 0;
  // Bumped on every change to #depth, so a count taken by listing the
  // database is only trusted when nothing changed while it was taken.
  #version = 0;
  #waiting: Write[] = [];
  #committing = false;
  #failing = false;
  #probe: ReturnType<Clock["setTimeout"]> | null = null;
  #closed = false;

  private constructor(kv: Deno.Kv, options: QueueOptions) {
    this.#kv = kv;
    this.#o = {
      clock: options.clock ?? realClock,
      retryDelaysMs: options.retryDelaysMs ?? RETRY_DELAYS_MS,
      probeIntervalMs: options.probeIntervalMs ?? PROBE_INTERVAL_MS,
      commitBudgetBytes: options.commitBudgetBytes ?? COMMIT_BUDGET.bytes,
      maxRecordBytes: options.maxRecordBytes ?? MAX_RECORD_BYTES,
    };
  }

  /**
   * Opens (creating it and its directory if needed) the database at `path`,
   * counts what it holds and, unless told otherwise, turns checkpoints left
   * by a previous process into pending records.
   *
   * @throws {Error} naming the path, when it cannot be created or opened.
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
      if (options.recoverInflight !== false) await queue.#recoverInflight();
      queue.#depth = await count(kv, PENDING);
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
   * True from the moment a record could not be committed at all until the
   * next successful commit (a probe write is tried every second meanwhile).
   */
  get failing(): boolean {
    return this.#failing;
  }

  /**
   * Commits a record (and deletes its generation's checkpoint); resolves
   * once it is durable.
   *
   * @throws {RangeError} (rejects) when the record is too large to store.
   * @throws {Error} (rejects) when the database refused it after retries.
   */
  append(record: UsageRecord): Promise<void> {
    return this.#enqueue("final", record);
  }

  /**
   * Writes the current usage of generations in flight, replacing their
   * earlier checkpoints. Returns how many could not be written.
   */
  async checkpoint(records: UsageRecord[]): Promise<number> {
    // Enqueued synchronously, before any await: a generation that ends
    // after this call has its record committed after its checkpoint.
    const writes = records.map((r) => this.#enqueue("inflight", r));
    const results = await Promise.allSettled(writes);
    return results.filter((r) => r.status === "rejected").length;
  }

  #enqueue(kind: Write["kind"], record: UsageRecord): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#closed) {
        reject(new Error("Cannot write usage: the usage queue is closed"));
        return;
      }
      const bytes = recordBytes(record) + 2 * KEY_BYTES;
      if (bytes > this.#o.maxRecordBytes) {
        if (kind === "final") this.#markFailing();
        reject(
          new RangeError(
            `Cannot store usage record ${record.id}: about ${bytes} bytes, over the ${this.#o.maxRecordBytes} a record may take`,
          ),
        );
        return;
      }
      const mutations = kind === "final" ? 2 : 1;
      this.#waiting.push({ kind, record, bytes, mutations, resolve, reject });
      if (!this.#committing) void this.#commitLoop();
    });
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
    let n = 0;
    let bytes = 0;
    let mutations = 0;
    let keys = 0;
    while (n < this.#waiting.length) {
      const w = this.#waiting[n];
      const fits = bytes + w.bytes <= this.#o.commitBudgetBytes &&
        mutations + w.mutations <= COMMIT_BUDGET.mutations &&
        keys + w.mutations * KEY_BYTES <= COMMIT_BUDGET.keyBytes;
      if (n > 0 && !fits) break;
      bytes += w.bytes;
      mutations += w.mutations;
      keys += w.mutations * KEY_BYTES;
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

  async #commit(batch: Write[]): Promise<void> {
    const op = this.#kv.atomic();
    let finals = 0;
    for (const w of batch) {
      if (w.kind === "final") {
        op.set([...PENDING, w.record.id], w.record);
        op.delete([...INFLIGHT, w.record.id]);
        finals++;
      } else {
        op.set([...INFLIGHT, w.record.id], w.record);
      }
    }
    const res = await op.commit();
    if (!res.ok) throw new Error("usage queue commit was not applied");
    this.#depth += finals;
    this.#version++;
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
      if (round >= this.#o.retryDelaysMs.length || this.#closed) {
        for (const { w, err } of failed) {
          if (w.kind === "final") {
            this.#markFailing();
            // Best effort: a checkpoint left behind would be billed again
            // at the next start, beside the record logged for hand billing.
            await this.#kv.delete([...INFLIGHT, w.record.id]).catch(() => {});
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

  /** Turns every checkpoint into a pending record, atomically each. */
  async #recoverInflight(): Promise<void> {
    const entries: Deno.KvEntry<UsageRecord>[] = [];
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...INFLIGHT] })
    ) {
      entries.push(e);
    }
    for (let i = 0; i < entries.length; i += RECOVER_PER_OP) {
      const part = entries.slice(i, i + RECOVER_PER_OP);
      if (await this.#recover(part)) continue;
      // A record with one of these ids exists already: go one by one.
      for (const e of part) await this.#recover([e]);
    }
  }

  /** Moves checkpoints to pending unless a record of that id exists. */
  async #recover(part: Deno.KvEntry<UsageRecord>[]): Promise<boolean> {
    const op = this.#kv.atomic();
    for (const e of part) {
      const id = String(e.key[2]);
      op.check(e)
        .check({ key: [...PENDING, id], versionstamp: null })
        .check({ key: [...ASIDE, id], versionstamp: null })
        .set([...PENDING, id], e.value)
        .delete(e.key);
    }
    if ((await op.commit()).ok) {
      this.#recovered += part.length;
      return true;
    }
    if (part.length === 1) {
      // Its record was committed (or set aside): the checkpoint is stale.
      await this.#kv.atomic().check(part[0]).delete(part[0].key).commit();
    }
    return false;
  }

  /** Up to `limit` oldest pending records. */
  async peek(limit: number): Promise<UsageRecord[]> {
    const before = this.#quiet() ? this.#version : -1;
    const out: UsageRecord[] = [];
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...PENDING] }, { limit })
    ) {
      out.push(e.value);
    }
    // A short listing is the whole queue: it corrects the count when
    // another process (an operator's --drain-usage) removed records.
    if (out.length < limit) this.#trustCount(before, out.length);
    return out;
  }

  /**
   * Counts pending records in the database again (another process may
   * have removed some); true when the count was taken and applied.
   */
  async recount(): Promise<boolean> {
    const before = this.#quiet() ? this.#version : -1;
    const n = await count(this.#kv, PENDING);
    return this.#trustCount(before, n);
  }

  #quiet(): boolean {
    return !this.#committing && this.#waiting.length === 0;
  }

  #trustCount(before: number, n: number): boolean {
    if (before < 0 || before !== this.#version || !this.#quiet()) return false;
    if (n !== this.#depth) {
      this.#depth = n;
      this.#version++;
    }
    return true;
  }

  /** Creation time (Unix ms) of the oldest pending record, or null. */
  async oldestMs(): Promise<number | null> {
    for await (
      const e of this.#kv.list({ prefix: [...PENDING] }, { limit: 1 })
    ) {
      return uuidv7Time(String(e.key[2]));
    }
    return null;
  }

  /** Removes records the billing service acknowledged. */
  async ack(ids: string[]): Promise<void> {
    for (let i = 0; i < ids.length; i += KEYS_PER_OP) {
      const op = this.#kv.atomic();
      const part = ids.slice(i, i + KEYS_PER_OP);
      for (const id of part) op.delete([...PENDING, id]);
      await op.commit();
      this.#depth = Math.max(0, this.#depth - part.length);
      this.#version++;
    }
  }

  /** Moves a refused record aside, atomically. */
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
    await this.#kv.atomic().delete([...PENDING, record.id]).set([
      ...ASIDE,
      record.id,
    ], entry).commit();
    this.#depth = Math.max(0, this.#depth - 1);
    this.#version++;
    this.#asideCount++;
  }

  /**
   * Exports and removes every pending record, oldest first, in chunks:
   * each chunk is handed to `write` and deleted only once `write` has
   * resolved, so a record is removed only after it was written out. Stops
   * at the newest record pending when it began. Returns how many records
   * were removed.
   */
  async drain(
    write: (records: UsageRecord[]) => Promise<void>,
    options: { chunkRecords?: number } = {},
  ): Promise<number> {
    const chunk = Math.min(options.chunkRecords ?? 100, KEYS_PER_OP);
    let last: string | null = null;
    for await (
      const e of this.#kv.list({ prefix: [...PENDING] }, { reverse: true })
    ) {
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
        const e of this.#kv.list<UsageRecord>({ start, end }, {
          limit: chunk,
        })
      ) {
        records.push(e.value);
      }
      if (records.length === 0) return removed;

      await write(records);
      const op = this.#kv.atomic();
      for (const r of records) op.delete([...PENDING, r.id]);
      const res = await op.commit();
      if (!res.ok) throw new Error("usage queue drain delete was not applied");
      removed += records.length;
      this.#depth = Math.max(0, this.#depth - records.length);
      this.#version++;
      start = [...PENDING, records[records.length - 1].id + "\0"];
    }
  }

  /** Every pending record, set-aside entry and checkpoint, oldest first. */
  async *dump(): AsyncGenerator<DumpEntry> {
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...PENDING] })
    ) {
      yield { state: "pending", record: e.value };
    }
    for await (const e of this.#kv.list<AsideEntry>({ prefix: [...ASIDE] })) {
      yield { state: "set_aside", ...e.value };
    }
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...INFLIGHT] })
    ) {
      yield { state: "in_flight", record: e.value };
    }
  }

  /** Checkpoints currently stored (for tests and tools). */
  async inflight(): Promise<UsageRecord[]> {
    const out: UsageRecord[] = [];
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...INFLIGHT] })
    ) {
      out.push(e.value);
    }
    return out;
  }

  /** Waits for commits in progress, then closes the database. */
  async close(): Promise<void> {
    while (this.#committing || this.#waiting.length > 0) {
      await new Promise((r) => setTimeout(r, 5));
    }
    this.#closed = true;
    if (this.#probe !== null) this.#o.clock.clearTimeout(this.#probe);
    this.#probe = null;
    this.#kv.close();
  }
}

async function count(kv: Deno.Kv, prefix: readonly string[]): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix: [...prefix] })) n++;
  return n;
}
