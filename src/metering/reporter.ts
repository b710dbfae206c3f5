/**
 * Sends the usage queue to the billing endpoint in batches.
 *
 * - Every `batchIntervalMs`, or as soon as a full batch is waiting, the
 *   oldest records are posted.
 * - 2xx: the records leave the queue.
 * - Network errors, timeouts, 5xx, 408 and 429: the same batch is retried
 *   with capped exponential backoff and jitter (honouring `Retry-After`).
 * - Any other 4xx: the batch is split in halves and retried until the
 *   refused record stands alone; it is then set aside (kept, counted,
 *   logged), and the rest goes through.
 *
 * @module
 */

import type { UsageFormat } from "../config/mod.ts";
import type { Logger } from "../log/logger.ts";
import { backoffDelayMs } from "../worker/backoff.ts";
import { encodeBatch } from "./format.ts";
import type { UsageQueue } from "./queue.ts";
import type { UsageRecord } from "./record.ts";

/** Options of {@link BillingReporter}. */
export interface ReporterOptions {
  endpoint: string;
  format: UsageFormat;
  instance: string;
  batchIntervalMs: number;
  batchMaxRecords: number;
  requestTimeoutMs: number;
  queue: UsageQueue;
  logger: Logger;
  /** Observability hooks. */
  onSent?: (records: number) => void;
  onFailure?: (kind: SendFailureKind) => void;
  onSetAside?: (records: number) => void;
}

/** Why a send failed, as a metric label. */
export type SendFailureKind =
  | "network"
  | "timeout"
  | "http_4xx"
  | "http_5xx"
  | "http_429";

type SendResult =
  | { ok: true }
  | {
    ok: false;
    retry: true;
    kind: SendFailureKind;
    retryAfterMs?: number;
    detail: string;
  }
  | { ok: false; retry: false; status: number; detail: string };

// Backoff after failed sends: starts at one second, and never waits longer
// than a minute, so a recovered billing service is used within a minute.
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_MAX_MS = 60_000;

/** The background sender. */
export class BillingReporter {
  #o: ReporterOptions;
  #stopped = false;
  #wake: (() => void) | null = null;
  #failures = 0;
  #loop: Promise<void> | null = null;

  constructor(options: ReporterOptions) {
    this.#o = options;
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

  /** Stops the loop after the send in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#loop;
  }

  /**
   * Tries to send everything pending once, within `timeoutMs`; returns how
   * many records were still pending afterwards.
   */
  async flush(timeoutMs: number): Promise<number> {
    const until = Date.now() + timeoutMs;
    while (this.#o.queue.depth > 0 && Date.now() < until) {
      const sent = await this.#sendOldest(Math.max(1, until - Date.now()));
      if (!sent) break;
    }
    return this.#o.queue.depth;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      const delay = this.#failures > 0
        ? backoffDelayMs(this.#failures, {
          baseDelayMs: BACKOFF_BASE_MS,
          maxDelayMs: BACKOFF_MAX_MS,
        })
        : this.#o.queue.depth >= this.#o.batchMaxRecords
        ? 0
        : this.#o.batchIntervalMs;
      await this.#sleep(delay);
      if (this.#stopped) break;

      // Drain the backlog batch by batch while sends succeed.
      while (!this.#stopped && this.#o.queue.depth > 0) {
        if (!await this.#sendOldest(this.#o.requestTimeoutMs)) break;
        if (this.#o.queue.depth < this.#o.batchMaxRecords) break;
      }
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = () => {
        this.#wake = null;
        done();
      };
    });
  }

  /** Sends the oldest batch; true when it left the queue. */
  async #sendOldest(timeoutMs: number): Promise<boolean> {
    let records: UsageRecord[];
    try {
      records = await this.#o.queue.peek(this.#o.batchMaxRecords);
    } catch (err) {
      this.#o.logger.error("cannot read the usage queue", { error: err });
      return false;
    }
    if (records.length === 0) return true;
    return await this.#deliver(records, timeoutMs);
  }

  /** Delivers `records`, splitting on refusals; false to retry later. */
  async #deliver(records: UsageRecord[], timeoutMs: number): Promise<boolean> {
    const result = await this.#post(records, timeoutMs);
    if (result.ok) {
      await this.#o.queue.ack(records.map((r) => r.id));
      this.#o.onSent?.(records.length);
      if (this.#failures > 0) {
        this.#o.logger.info("billing endpoint reachable again", {
          after_failures: this.#failures,
        });
      }
      this.#failures = 0;
      return true;
    }

    if (result.retry) {
      this.#failures++;
      this.#o.onFailure?.(result.kind);
      this.#o.logger.warn("usage batch not delivered; will retry", {
        kind: result.kind,
        detail: result.detail,
        records: records.length,
        queue_depth: this.#o.queue.depth,
        consecutive_failures: this.#failures,
      });
      if (result.retryAfterMs !== undefined) {
        await this.#sleep(Math.min(result.retryAfterMs, BACKOFF_MAX_MS));
      }
      return false;
    }

    this.#o.onFailure?.("http_4xx");
    if (records.length === 1) {
      await this.#o.queue.setAside(records[0], result.status, result.detail);
      this.#o.onSetAside?.(1);
      this.#o.logger.error("billing refused a usage record; set aside", {
        record_id: records[0].id,
        request_id: records[0].request_id,
        status: result.status,
        detail: result.detail,
      });
      return true;
    }
    const half = Math.ceil(records.length / 2);
    return await this.#deliver(records.slice(0, half), timeoutMs) &&
      await this.#deliver(records.slice(half), timeoutMs);
  }

  async #post(records: UsageRecord[], timeoutMs: number): Promise<SendResult> {
    const { contentType, body } = encodeBatch(
      this.#o.format,
      records,
      this.#o.instance,
    );
    let res: Response;
    try {
      res = await fetch(this.#o.endpoint, {
        method: "POST",
        headers: { "content-type": contentType },
        body,
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const timeout = err instanceof DOMException &&
        err.name === "TimeoutError";
      return {
        ok: false,
        retry: true,
        kind: timeout ? "timeout" : "network",
        detail: String((err as Error).message),
      };
    }
    const text = (await res.text().catch(() => "")).slice(0, 500);
    if (res.ok) return { ok: true };
    if (res.status >= 500 || res.status === 408 || res.status === 429) {
      const after = Number(res.headers.get("retry-after"));
      return {
        ok: false,
        retry: true,
        kind: res.status === 429 ? "http_429" : "http_5xx",
        retryAfterMs: Number.isFinite(after) && after > 0
          ? after * 1000
          : undefined,
        detail: `HTTP ${res.status} ${text}`,
      };
    }
    return {
      ok: false,
      retry: false,
      status: res.status,
      detail: `HTTP ${res.status} ${text}`,
    };
  }
}
