/**
 * Sends the usage queue to the billing endpoint in batches.
 *
 * - Every `batchIntervalMs`, or as soon as a full batch is waiting, the
 *   oldest records are posted.
 * - 2xx, and 409 (the endpoint already has those ids): the records leave
 *   the queue.
 * - An endpoint failure (network error, timeout, 408, 429, 5xx, or a 4xx
 *   that says the endpoint or its configuration is wrong, answers.ts): the
 *   records stay, and the batch is retried after a capped exponential
 *   backoff with jitter, or after the `Retry-After` the endpoint asked for.
 * - Any other 4xx, and 413: the batch is split in halves, and the halves
 *   sent, down to single records. A record refused on its own is set aside
 *   (kept, counted, logged) only if other records of the same batch were
 *   accepted: when every part is refused, the endpoint is at fault, and the
 *   batch counts as an endpoint failure.
 * - A failure of the queue itself (a Deno KV error) is logged, counted and
 *   backed off like an endpoint failure; the loop never dies of it.
 *
 * @module
 */

import type { UsageFormat } from "../config/mod.ts";
import type { Logger } from "../log/logger.ts";
import { type Clock, realClock, type TimerId } from "../util/clock.ts";
import { backoffDelayMs } from "../worker/backoff.ts";
import {
  type Answer,
  classifyAnswer,
  type SendFailureKind,
} from "./answers.ts";
import { encodeBatch } from "./format.ts";
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

// Backoff after failed sends: starts at one second, and never waits longer
// than a minute, so a recovered billing service is used within a minute.
// A Retry-After is honoured up to the same minute.
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_MAX_MS = 60_000;

// Splitting a refused batch of n records costs up to 2n - 1 requests when
// the endpoint refuses everything. After this many refused requests with
// none accepted, the endpoint is taken to be at fault; a few bad records
// among good ones are isolated long before.
const MAX_REFUSED_POSTS = 64;

/** Why a post was abandoned by `stop()`, told apart from a timeout. */
class Stopped extends Error {
  constructor() {
    super("the reporter was stopped");
    this.name = "Stopped";
  }
}

type PostAnswer = Answer | { action: "stopped" };

interface PostOptions {
  /** Clock time by which every request of this send must end. */
  deadline: number;
  /** Whether `stop()` abandons the request (the loop's, not the flush's). */
  stoppable: boolean;
}

/** What one batch's delivery, splits included, came to. */
interface Delivery {
  accepted: number;
  refused: { record: UsageRecord; status: number; detail: string }[];
  refusedPosts: number;
  failure: Extract<Answer, { action: "endpoint_failure" }> | null;
  stopped: boolean;
}

/** Outcome of sending the oldest batch. */
type SendOutcome = "sent" | "empty" | "failed" | "stopped";

/** The background sender. */
export class BillingReporter {
  #o: ReporterOptions;
  #clock: Clock;
  #fetch: typeof fetch;
  #stopped = false;
  #wake: (() => void) | null = null;
  #failures = 0;
  #retryAfterMs: number | null = null;
  #inFlight: AbortController | null = null;
  #loop: Promise<void> | null = null;

  constructor(options: ReporterOptions) {
    this.#o = options;
    this.#clock = options.clock ?? realClock;
    this.#fetch = options.fetch ?? fetch;
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
    this.#inFlight?.abort(new Stopped());
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
        if (await this.#sendOldest(until, false) !== "sent") break;
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
          const outcome = await this.#sendOldest(Infinity, true);
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

  /**
   * Sends the oldest batch, each request ending by `deadline` (clock time);
   * `stoppable` requests are abandoned by `stop()`. Queue errors are thrown.
   */
  async #sendOldest(
    deadline: number,
    stoppable: boolean,
  ): Promise<SendOutcome> {
    const records = await this.#o.queue.peek(this.#o.batchMaxRecords);
    if (records.length === 0) return "empty";

    const d: Delivery = {
      accepted: 0,
      refused: [],
      refusedPosts: 0,
      failure: null,
      stopped: false,
    };
    await this.#deliver(records, { deadline, stoppable }, d);
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

  #endpointFailed(
    failure: Extract<Answer, { action: "endpoint_failure" }>,
    records: number,
  ): void {
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

  /** Posts `records`, splitting refused batches; tallies into `d`. */
  async #deliver(
    records: UsageRecord[],
    how: PostOptions,
    d: Delivery,
  ): Promise<void> {
    if (d.failure !== null || d.stopped) return;
    if (d.accepted === 0 && d.refusedPosts >= MAX_REFUSED_POSTS) return;

    const answer = await this.#post(records, how);
    switch (answer.action) {
      case "stopped":
        d.stopped = true;
        return;
      case "accepted":
        await this.#o.queue.ack(records.map((r) => r.id));
        this.#o.onSent?.(records.length);
        d.accepted += records.length;
        return;
      case "endpoint_failure":
        this.#o.onFailure?.(answer.kind);
        d.failure = answer;
        return;
      case "refused": {
        this.#o.onFailure?.("http_4xx");
        d.refusedPosts++;
        if (records.length === 1) {
          d.refused.push({
            record: records[0],
            status: answer.status,
            detail: answer.detail,
          });
          return;
        }
        const half = Math.ceil(records.length / 2);
        await this.#deliver(records.slice(0, half), how, d);
        await this.#deliver(records.slice(half), how, d);
      }
    }
  }

  async #post(records: UsageRecord[], how: PostOptions): Promise<PostAnswer> {
    if (how.stoppable && this.#stopped) return { action: "stopped" };
    const timeoutMs = Math.min(
      this.#o.requestTimeoutMs,
      how.deadline - this.#clock.now(),
    );
    if (timeoutMs <= 0) {
      return {
        action: "endpoint_failure",
        kind: "timeout",
        detail: "no time left",
      };
    }
    const { contentType, body } = encodeBatch(
      this.#o.format,
      records,
      this.#o.instance,
    );

    const controller = new AbortController();
    if (how.stoppable) this.#inFlight = controller;
    const timer = this.#clock.setTimeout(
      () =>
        controller.abort(
          new DOMException(`no answer within ${timeoutMs} ms`, "TimeoutError"),
        ),
      timeoutMs,
    );
    try {
      const res = await this.#fetch(this.#o.endpoint, {
        method: "POST",
        headers: { "content-type": contentType },
        body,
        signal: controller.signal,
      });
      const text = (await res.text()).slice(0, 500);
      return classifyAnswer(
        res.status,
        res.headers.get("retry-after"),
        `HTTP ${res.status} ${text}`,
      );
    } catch (err) {
      const reason = controller.signal.reason;
      if (controller.signal.aborted && reason instanceof Stopped) {
        return { action: "stopped" };
      }
      const timeout = controller.signal.aborted ||
        (err instanceof DOMException && err.name === "TimeoutError");
      return {
        action: "endpoint_failure",
        kind: timeout ? "timeout" : "network",
        detail: String((err as Error)?.message ?? err),
      };
    } finally {
      this.#clock.clearTimeout(timer);
      if (this.#inFlight === controller) this.#inFlight = null;
    }
  }
}
