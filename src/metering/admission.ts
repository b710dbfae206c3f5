/**
 * Whether the meter admits new generations. It refuses them while records
 * cannot be committed (the usage queue is `failing`) and while the queue
 * holds `offline_queue_size` records or more (docs/metering.md, "When the
 * queue is full").
 *
 * While the queue is full, its depth is counted again in the database by a
 * timer of its own, so that records an operator drained in another process
 * (`--drain-usage`) free room this process would not see otherwise. A
 * count lists every pending record, so at most one runs at a time, and the
 * next waits until well after the last one ended. {@link Admission.refusing}
 * reads two numbers and starts nothing: readiness asks it on every probe
 * and poll.
 *
 * @module
 */

import { retryHint, SidecarError } from "../errors.ts";
import type { Logger } from "../log/logger.ts";
import type { Clock, TimerId } from "../util/clock.ts";

/** What admission needs of the usage queue. */
export interface AdmissionQueue {
  /** Records committed and not yet acknowledged. */
  readonly depth: number;
  /** True while records cannot be committed. */
  readonly failing: boolean;
  /** Counts pending records in the database again. */
  recount(): Promise<boolean>;
}

/** Options of {@link Admission}. */
export interface AdmissionOptions {
  queue: AdmissionQueue;
  /** Records at which the queue counts as full (`offline_queue_size`). */
  offlineQueueSize: number;
  /** How often batches are sent, in ms: the retry hint of a full queue. */
  batchIntervalMs: number;
  /** The usage database's path, for the log. */
  usageDbPath: string;
  logger: Logger;
  clock: Clock;
  /** Least time between the starts of two counts while full; default 1000 ms. */
  recountWhenFullMs?: number;
}

// While the queue is full, its depth is counted again at most this often:
// an operator's drain is noticed within about a second.
const RECOUNT_WHEN_FULL_MS = 1_000;

// After a count that took t ms, the next starts no sooner than this many
// times t after it ended: a queue of millions of records is not listed
// back to back, and counting takes at most a tenth of the time.
const RECOUNT_IDLE_FACTOR = 9;

// Refused while records cannot be committed: the queue probes the
// database about this often, so a retry after this long may succeed.
const RETRY_WHILE_FAILING_MS = 1_000;

/** The meter's admission decision and its recount while full. */
export class Admission {
  #o: AdmissionOptions;
  #recountMs: number;
  #timer: TimerId | null = null;
  #counting: Promise<void> | null = null;
  #stopped = false;
  #warnedFull = false;
  #warnedFailing = false;

  constructor(options: AdmissionOptions) {
    this.#o = options;
    this.#recountMs = options.recountWhenFullMs ?? RECOUNT_WHEN_FULL_MS;
    this.queueChanged();
  }

  /**
   * True while new generations are refused: records cannot be committed,
   * or the queue is full. Free of side effects.
   */
  get refusing(): boolean {
    return this.#o.queue.failing || this.#full();
  }

  /**
   * Null if a new generation may start; otherwise the refusal. Logs once
   * when refusing begins and once when admitting again after a failure.
   */
  admit(): SidecarError | null {
    const { queue, logger } = this.#o;
    if (queue.failing) {
      if (!this.#warnedFailing) {
        this.#warnedFailing = true;
        logger.error(
          "usage records cannot be committed; refusing new generations until the usage database works",
          { path: this.#o.usageDbPath },
        );
      }
      return new SidecarError(
        "metering_backlog",
        `usage records cannot be written to the usage database; please ${
          retryHint(RETRY_WHILE_FAILING_MS)
        }`,
        { retryAfterMs: RETRY_WHILE_FAILING_MS },
      );
    }
    if (this.#warnedFailing) {
      this.#warnedFailing = false;
      logger.info("usage database works again; admitting generations");
    }

    if (!this.#full()) {
      this.#warnedFull = false;
      return null;
    }
    this.queueChanged();
    if (!this.#warnedFull) {
      this.#warnedFull = true;
      logger.error(
        "usage queue is full; refusing new generations until billing catches up",
        { depth: queue.depth, offline_queue_size: this.#o.offlineQueueSize },
      );
    }
    const wait = Math.max(this.#o.batchIntervalMs, 1000);
    return new SidecarError(
      "metering_backlog",
      `usage queue is full (${queue.depth} records waiting for billing); please ${
        retryHint(wait)
      }`,
      { retryAfterMs: wait },
    );
  }

  /**
   * Tells admission that the queue's depth may have grown (a record was
   * committed): if it is now full, the recount timer starts.
   */
  queueChanged(): void {
    if (this.#full()) this.#scheduleRecount(this.#recountMs);
  }

  /**
   * Stops the recount timer and waits for a count in progress, for at most
   * `maxWaitMs`: a count lists the whole queue, and shutdown has a deadline.
   * A count still running then fails quietly once the queue is closed.
   */
  async stop(maxWaitMs = Infinity): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = null;
    const counting = this.#counting;
    if (counting === null) return;
    if (!Number.isFinite(maxWaitMs)) return await counting;
    let timer: TimerId | null = null;
    await Promise.race([
      counting,
      new Promise<void>((resolve) => {
        timer = this.#o.clock.setTimeout(resolve, maxWaitMs);
      }),
    ]);
    if (timer !== null) this.#o.clock.clearTimeout(timer);
  }

  #full(): boolean {
    return this.#o.queue.depth >= this.#o.offlineQueueSize;
  }

  #scheduleRecount(delayMs: number): void {
    if (this.#stopped || this.#timer !== null || this.#counting !== null) {
      return;
    }
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = null;
      if (this.#stopped || !this.#full()) return;
      // #recount yields at its first await, so this assignment comes
      // before it clears #counting.
      this.#counting = this.#recount();
    }, delayMs);
  }

  async #recount(): Promise<void> {
    const { clock, queue, logger } = this.#o;
    const began = clock.now();
    try {
      await queue.recount();
    } catch (err) {
      logger.warn("cannot count the usage queue", { error: err });
    }
    this.#counting = null;

    // Still full: count again later, never while this count runs.
    const tookMs = clock.now() - began;
    if (this.#full()) {
      this.#scheduleRecount(
        Math.max(this.#recountMs - tookMs, RECOUNT_IDLE_FACTOR * tookMs),
      );
    }
  }
}
