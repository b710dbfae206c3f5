/**
 * In-flight checkpoints: every interval, the usage of each generation still
 * running that changed since its last checkpoint is written to the usage
 * queue (under its own prefix, in group commits), so that a sidecar killed
 * mid-stream still bills what it had delivered up to the last checkpoint.
 * The generation's final record replaces its checkpoint (same id, one
 * atomic operation); checkpoints left by a dead process become
 * `interrupted` records at the next start (recovery.ts).
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";
import { type Clock, realClock, type TimerId } from "../util/clock.ts";
import { checkpointRecord, type PartialUsage } from "./record.ts";
import type { UsageQueue } from "./queue.ts";

/** A generation in flight, as the checkpointer sees it. */
export interface LiveGeneration {
  /**
   * Its usage so far; null while it cannot have used anything yet, and
   * from the moment its final record is handed to the queue (a checkpoint
   * taken later would be committed after the record and outlive it).
   */
  partialUsage(): PartialUsage | null;
}

/** The generations in flight (`LiveCount` in src/gateway/live_count.ts). */
export interface LiveGenerations {
  generations(): Iterable<LiveGeneration>;
}

/** Options of {@link Checkpointer}. */
export interface CheckpointerOptions {
  queue: Pick<UsageQueue, "checkpoint">;
  live: LiveGenerations;
  /** Written into the records as `sidecar_instance`. */
  instance: string;
  /** Time between checkpoints, in milliseconds. */
  intervalMs: number;
  logger: Logger;
  /** Timers; the process clock by default. */
  clock?: Clock;
}

/** Writes the checkpoints of the generations in flight, periodically. */
export class Checkpointer {
  #o: CheckpointerOptions;
  #clock: Clock;
  #timer: TimerId | null = null;
  #running: Promise<void> | null = null;
  #stopped = false;
  // What was last written per record id, to skip generations unchanged.
  #written = new Map<string, string>();

  constructor(options: CheckpointerOptions) {
    if (!(options.intervalMs > 0)) {
      throw new RangeError(
        `Cannot checkpoint usage: intervalMs must be > 0, got ${options.intervalMs}`,
      );
    }
    this.#o = options;
    this.#clock = options.clock ?? realClock;
  }

  /** Starts checkpointing every `intervalMs`. */
  start(): void {
    this.#schedule(this.#o.intervalMs);
  }

  /** Stops the timer and waits for a checkpoint in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) this.#clock.clearTimeout(this.#timer);
    this.#timer = null;
    await this.#running;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = null;
      const began = this.#clock.now();
      // A checkpoint still being committed is not overtaken: the next one
      // waits for the following tick.
      if (this.#running === null) {
        this.#running = this.checkpoint().then(() => {}).finally(() => {
          this.#running = null;
        });
      }
      // Ticks keep to the interval from when each began, not drifting by
      // the time a commit takes.
      const next = began + this.#o.intervalMs - this.#clock.now();
      this.#schedule(Math.max(0, next));
    }, delayMs);
  }

  /**
   * Writes one checkpoint now: every generation in flight whose usage
   * changed since it was last written. Returns how many were written.
   */
  async checkpoint(): Promise<number> {
    const at = Date.now();
    const records = [];
    const live = new Set<string>();
    for (const g of this.#o.live.generations()) {
      const u = g.partialUsage();
      if (u === null) continue;
      live.add(u.recordId);
      const seen = `${u.promptTokens}/${u.completionTokens}/${u.modelId}`;
      if (this.#written.get(u.recordId) === seen) continue;
      this.#written.set(u.recordId, seen);
      records.push(checkpointRecord(u, this.#o.instance, at));
    }
    for (const id of this.#written.keys()) {
      if (!live.has(id)) this.#written.delete(id);
    }
    if (records.length === 0) return 0;

    // Enqueued before any await (queue.checkpoint), so it is ordered
    // before every final record appended after this point.
    const failed = await this.#o.queue.checkpoint(records);
    if (failed > 0) {
      // Written again at the next tick, even if unchanged by then.
      for (const r of records) this.#written.delete(r.id);
      this.#o.logger.warn("usage checkpoints could not be written", {
        failed,
        of: records.length,
      });
    }
    return records.length - failed;
  }
}
