/**
 * The durable usage queue, in a Deno KV database (SQLite underneath).
 *
 * - `append()` resolves only once the record is committed; records that
 *   arrive while a commit is running are committed together in the next
 *   one (group commit), so durability costs one commit per burst rather
 *   than one per generation.
 * - Records stay until `ack()` (the billing service took them) or
 *   `setAside()` (the billing service refused them for good); nothing else
 *   removes a record.
 *
 * Keys: `["usage", "pending", id]` and `["usage", "aside", id]`.
 *
 * @module
 */

import { type UsageRecord, uuidv7Time } from "./record.ts";

const PENDING = ["usage", "pending"] as const;
const ASIDE = ["usage", "aside"] as const;

// Deno KV caps one atomic operation at 1000 mutations and 800 KiB; batches
// stay well inside both.
const MAX_RECORDS_PER_COMMIT = 500;
const MAX_BYTES_PER_COMMIT = 512 * 1024;

/** A record the billing service refused, kept for inspection. */
export interface AsideEntry {
  record: UsageRecord;
  /** HTTP status of the refusal. */
  status: number;
  reason: string;
  set_aside_at: string;
}

interface Waiting {
  record: UsageRecord;
  bytes: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** The queue of usage records not yet acknowledged by billing. */
export class UsageQueue {
  #kv: Deno.Kv;
  #depth: number;
  #asideCount: number;
  #waiting: Waiting[] = [];
  #committing = false;

  private constructor(kv: Deno.Kv, depth: number, aside: number) {
    this.#kv = kv;
    this.#depth = depth;
    this.#asideCount = aside;
  }

  /**
   * Opens (creating it and its directory if needed) the database at `path`.
   *
   * @throws {Error} naming the path, when it cannot be created or opened.
   */
  static async open(path: string): Promise<UsageQueue> {
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
    let depth = 0;
    for await (const _ of kv.list({ prefix: [...PENDING] })) depth++;
    let aside = 0;
    for await (const _ of kv.list({ prefix: [...ASIDE] })) aside++;
    return new UsageQueue(kv, depth, aside);
  }

  /** Records committed and not yet acknowledged. */
  get depth(): number {
    return this.#depth;
  }

  /** Records set aside. */
  get asideCount(): number {
    return this.#asideCount;
  }

  /** Commits a record; resolves once it is durable. */
  append(record: UsageRecord): Promise<void> {
    return new Promise((resolve, reject) => {
      const bytes = JSON.stringify(record).length;
      this.#waiting.push({ record, bytes, resolve, reject });
      if (!this.#committing) void this.#commitLoop();
    });
  }

  async #commitLoop(): Promise<void> {
    this.#committing = true;
    try {
      while (this.#waiting.length > 0) {
        let n = 0;
        let bytes = 0;
        while (
          n < this.#waiting.length && n < MAX_RECORDS_PER_COMMIT &&
          (n === 0 || bytes + this.#waiting[n].bytes <= MAX_BYTES_PER_COMMIT)
        ) {
          bytes += this.#waiting[n].bytes;
          n++;
        }
        const batch = this.#waiting.splice(0, n);
        try {
          const op = this.#kv.atomic();
          for (const w of batch) op.set([...PENDING, w.record.id], w.record);
          const res = await op.commit();
          if (!res.ok) throw new Error("usage queue commit was not applied");
          this.#depth += batch.length;
          for (const w of batch) w.resolve();
        } catch (err) {
          for (const w of batch) w.reject(err);
        }
      }
    } finally {
      this.#committing = false;
    }
  }

  /** Up to `limit` oldest pending records. */
  async peek(limit: number): Promise<UsageRecord[]> {
    const out: UsageRecord[] = [];
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...PENDING] }, { limit })
    ) {
      out.push(e.value);
    }
    return out;
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
    for (let i = 0; i < ids.length; i += MAX_RECORDS_PER_COMMIT) {
      const op = this.#kv.atomic();
      const part = ids.slice(i, i + MAX_RECORDS_PER_COMMIT);
      for (const id of part) op.delete([...PENDING, id]);
      await op.commit();
      this.#depth = Math.max(0, this.#depth - part.length);
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
    this.#asideCount++;
  }

  /** Every pending record, then every set-aside entry, oldest first. */
  async *dump(): AsyncGenerator<
    | { state: "pending"; record: UsageRecord }
    | ({ state: "set_aside" } & AsideEntry)
  > {
    for await (
      const e of this.#kv.list<UsageRecord>({ prefix: [...PENDING] })
    ) {
      yield { state: "pending", record: e.value };
    }
    for await (const e of this.#kv.list<AsideEntry>({ prefix: [...ASIDE] })) {
      yield { state: "set_aside", ...e.value };
    }
  }

  /** Waits for commits in progress, then closes the database. */
  async close(): Promise<void> {
    while (this.#committing || this.#waiting.length > 0) {
      await new Promise((r) => setTimeout(r, 5));
    }
    this.#kv.close();
  }
}
