/**
 * Sends the usage queue to the billing endpoint in batches.
 *
 * - Every `batchIntervalMs`, or as soon as a full batch is waiting, the
 *   oldest records are posted.
 * - 2xx, and 409 (the endpoint already has those ids): the records leave
 *   the queue.
 * - An endpoint failure (network error, timeout, 408, 429, 5xx, or a 4xx
 *   that says the endpoint or its configuration is wrong, answers.ts): the
 *   records stay, and the batch is retried after a backoff (exactly 1 s
 *   before the first retry, then a jittered wait that doubles up to 60 s
 *   and is never under 1 s: src/worker/backoff.ts), or after the
 *   `Retry-After` the endpoint asked for.
 * - Any other 4xx, and 413: the batch is split in halves, and the halves
 *   sent, down to single records. A record refused on its own is set aside
 *   (kept, counted, logged) only if other records of the same batch were
 *   accepted: when every part is refused, the endpoint is at fault, and the
 *   batch counts as an endpoint failure.
 * - A failure of the queue itself (a Deno KV error) is logged, counted and
 *   backed off like an endpoint failure; the loop never dies of it.
 *
 * This file is the schedule (intervals, backoff, stop, flush) and what a
 * batch's outcome does to the queue; posting a batch and splitting it is
 * batch_send.ts.
 *
 * @module
 */

import type { UsageFormat } from "../config/mod.ts";
import type { Logger } from "../log/logger.ts";
import { type Clock, realClock, type TimerId } from "../util/clock.ts";
import { backoffDelayMs } from "../worker/backoff.ts";
import type { SendFailureKind } from "./answers.ts";
import {
  BatchSender,
  type EndpointFailure,
  type SendLimits,
} from "./batch_send.ts";
import type { UsageRecord } from "./record.ts";

export type { SendFailureKind } from "./answers.ts";

/** What the reporter needs of the usage queue. */
export interface ReporterQueue {
  readonly depth: number;
  peek(limit: number): Promise<UsageRecord[]>;
  ack(ids: string[]): Promise<void>;
  setAside(record: UsageRecord, status: number, reason: string): Promise<void>;
}

/** Options of {@link BillingReporter}. */
export interface ReporterOptions {
  endpoint: string;
  format: UsageFormat;
  instance: string;
  batchIntervalMs: number;
  batchMaxRecords: number;
  requestTimeoutMs: number;
  queue: ReporterQueue;
  logger: Logger;
  /** Timers and deadlines; the process clock by default. */
  clock?: Clock;
  /** Jitter source in [0, 1); `Math.random` by default. */
  random?: () => number;
  /** The HTTP client; the global `fetch` by default. */
  fetch?: typeof fetch;
  /** Observability hooks. */
  onSent?: (records: number) => void;
  onFailure?: (kind: SendFailureKind) => void;
  onSetAside?: (records: number) => void;
}

// Backoff after failed sends: the first retry comes after one second, and
// no wait is longer than a minute, so a recovered billing service is used
// within a minute.
// A Retry-After is honoured up to the same minute.
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_MAX_MS = 60_000;

/** Outcome of sending the oldest batch. */
type SendOutcome = "sent" | "empty" | "failed" | "stopped";

/** The background sender. */
export class BillingReporter {
  #o: ReporterOptions;
  #clock: Clock;
  #sender: BatchSender;
  #stopped = false;
  // Aborted by stop(): the loop's request in flight is abandoned with it.
  #stop = new AbortController();
  #wake: (() => void) | null = null;
  #failures = 0;
  #retryAfterMs: number | null = null;
  #loop: Promise<void> | null = null;

  constructor(options: ReporterOptions) {
    this.#o = options;
    this.#clock = options.clock ?? realClock;
    this.#sender = new BatchSender({
      endpoint: options.endpoint,
      format: options.format,
      instance: options.instance,
      requestTimeoutMs: options.requestTimeoutMs,
      clock: this.#clock,
      fetch: options.fetch ?? fetch,
      accepted: (records) => options.queue.ack(records.map((r) => r.id)),
      onSent: options.onSent,
      onFailure: options.onFailure,
    });
  }

  /** Consecutive failed sends (0 when the last one worked). */
  get failures(): number {
    return this.#failures;
  }

  /** Starts the background loop. */
  start(): void {
    this.#loop = this.#run();
  }

  /** Sends now rather than at the next interval (a batch is full). */
  nudge(): void {
    if (this.#failures === 0) this.#wake?.();
  }

  /**
   * Stops the loop: a request in flight is abandoned at once (its records
   * stay queued, and are sent again later under the same ids).
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stop.abort(
      new DOMException("the reporter was stopped", "AbortError"),
    );
    this.#wake?.();
    await this.#loop;
  }

  /**
   * Tries to send everything pending, all within `timeoutMs` (each request
   * is cut short at that deadline); returns how many records were still
   * pending afterwards.
   */
  async flush(timeoutMs: number): Promise<number> {
    const until = this.#clock.now() + timeoutMs;
    try {
      while (this.#o.queue.depth > 0 && this.#clock.now() < until) {
        if (await this.#sendOldest({ deadline: until }) !== "sent") break;
      }
    } catch (err) {
      this.#queueFailed(err);
    }
    return this.#o.queue.depth;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      await this.#sleep(this.#nextDelayMs());
      if (this.#stopped) break;

      // Drain the backlog batch by batch while sends succeed.
      try {
        while (!this.#stopped && this.#o.queue.depth > 0) {
          const outcome = await this.#sendOldest({
            deadline: Infinity,
            stop: this.#stop.signal,
          });
          if (outcome !== "sent") break;
          if (this.#o.queue.depth < this.#o.batchMaxRecords) break;
        }
      } catch (err) {
        this.#queueFailed(err);
      }
    }
  }

  #nextDelayMs(): number {
    if (this.#retryAfterMs !== null) {
      // The endpoint said when to come back: that replaces the backoff.
      const ms = Math.min(this.#retryAfterMs, BACKOFF_MAX_MS);
      this.#retryAfterMs = null;
      return ms;
    }
    if (this.#failures > 0) {
      return backoffDelayMs(this.#failures, {
        baseDelayMs: BACKOFF_BASE_MS,
        maxDelayMs: BACKOFF_MAX_MS,
        random: this.#o.random,
      });
    }
    return this.#o.queue.depth >= this.#o.batchMaxRecords
      ? 0
      : this.#o.batchIntervalMs;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: TimerId | null = null;
      const done = () => {
        if (timer !== null) this.#clock.clearTimeout(timer);
        timer = null;
        this.#wake = null;
        resolve();
      };
      this.#wake = done;
      timer = this.#clock.setTimeout(done, ms);
    });
  }

  #queueFailed(err: unknown): void {
    this.#failures++;
    this.#o.onFailure?.("queue");
    this.#o.logger.error("usage queue failed; backing off", {
      error: err,
      consecutive_failures: this.#failures,
    });
  }

  /** Sends the oldest batch within `limits`. Queue errors are thrown. */
  async #sendOldest(limits: SendLimits): Promise<SendOutcome> {
    const records = await this.#o.queue.peek(this.#o.batchMaxRecords);
    if (records.length === 0) return "empty";

    const d = await this.#sender.deliver(records, limits);
    if (d.stopped) return "stopped";

    if (d.failure === null && d.refused.length > 0 && d.accepted === 0) {
      d.failure = {
        action: "endpoint_failure",
        kind: "http_4xx",
        detail: `every part of a batch of ${records.length} was refused: ${
          d.refused[0].detail
        }`,
      };
    }
    if (d.failure !== null) {
      // Refused records are kept too: with the endpoint failing, their
      // refusal proves nothing against them.
      this.#endpointFailed(d.failure, records.length);
      return "failed";
    }

    for (const r of d.refused) {
      await this.#o.queue.setAside(r.record, r.status, r.detail);
      this.#o.onSetAside?.(1);
      this.#o.logger.error("billing refused a usage record; set aside", {
        record_id: r.record.id,
        request_id: r.record.request_id,
        status: r.status,
        detail: r.detail,
        accepted_in_batch: d.accepted,
      });
    }
    if (this.#failures > 0) {
      this.#o.logger.info("billing endpoint reachable again", {
        after_failures: this.#failures,
      });
    }
    this.#failures = 0;
    return "sent";
  }

  #endpointFailed(failure: EndpointFailure, records: number): void {
    this.#failures++;
    this.#retryAfterMs = failure.retryAfterMs ?? null;
    this.#o.logger.warn("usage batch not delivered; will retry", {
      kind: failure.kind,
      detail: failure.detail,
      records,
      queue_depth: this.#o.queue.depth,
      consecutive_failures: this.#failures,
      retry_after_ms: failure.retryAfterMs,
    });
  }
}
