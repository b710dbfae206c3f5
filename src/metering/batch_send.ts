/**
 * Delivering one batch of usage records to the billing endpoint: the HTTP
 * request and its timeout, what the answer means (answers.ts), and the
 * splitting of a refused batch in halves, down to single records, to find
 * the records at fault. The schedule around it (intervals, backoff, stop
 * and flush) is the reporter's (reporter.ts).
 *
 * @module
 */

import type { UsageFormat } from "../config/mod.ts";
import type { Clock } from "../util/clock.ts";
import {
  type Answer,
  classifyAnswer,
  type SendFailureKind,
} from "./answers.ts";
import { encodeBatch } from "./format.ts";
import type { UsageRecord } from "./record.ts";

// Splitting a refused batch of n records costs up to 2n - 1 requests when
// the endpoint refuses everything. After this many refused requests with
// none accepted, the endpoint is taken to be at fault; a few bad records
// among good ones are isolated long before.
const MAX_REFUSED_POSTS = 64;

/** An endpoint failure, as {@link classifyAnswer} describes it. */
export type EndpointFailure = Extract<Answer, { action: "endpoint_failure" }>;

/** Options of {@link BatchSender}. */
export interface BatchSenderOptions {
  endpoint: string;
  format: UsageFormat;
  /** Written into the JSON envelope as `sidecar_instance`. */
  instance: string;
  /** Longest wait for one request's answer, in ms. */
  requestTimeoutMs: number;
  clock: Clock;
  fetch: typeof fetch;
  /** Removes accepted records from the queue; its errors are thrown on. */
  accepted: (records: UsageRecord[]) => Promise<void>;
  onSent?: (records: number) => void;
  onFailure?: (kind: SendFailureKind) => void;
}

/** How long one delivery may take, and what abandons it. */
export interface SendLimits {
  /** Clock time by which every request of this delivery must end. */
  deadline: number;
  /**
   * Once aborted, a request in flight is abandoned at once and no further
   * request starts; the delivery ends `stopped`.
   */
  stop?: AbortSignal;
}

/** What one batch's delivery, splits included, came to. */
export interface Delivery {
  /** Records accepted (and removed from the queue). */
  accepted: number;
  /** Records refused on their own. */
  refused: { record: UsageRecord; status: number; detail: string }[];
  /** Refused requests, splits included. */
  refusedPosts: number;
  /** The endpoint failure that ended the delivery, if one did. */
  failure: EndpointFailure | null;
  /** The delivery was abandoned by {@link SendLimits.stop}. */
  stopped: boolean;
}

type PostAnswer = Answer | { action: "stopped" };

/** Posts batches to the billing endpoint, splitting refused ones. */
export class BatchSender {
  #o: BatchSenderOptions;

  constructor(options: BatchSenderOptions) {
    this.#o = options;
  }

  /** Delivers `records` within `limits`; queue errors are thrown. */
  async deliver(records: UsageRecord[], limits: SendLimits): Promise<Delivery> {
    const d: Delivery = {
      accepted: 0,
      refused: [],
      refusedPosts: 0,
      failure: null,
      stopped: false,
    };
    await this.#deliver(records, limits, d);
    return d;
  }

  async #deliver(
    records: UsageRecord[],
    limits: SendLimits,
    d: Delivery,
  ): Promise<void> {
    if (d.failure !== null || d.stopped) return;
    if (d.accepted === 0 && d.refusedPosts >= MAX_REFUSED_POSTS) return;

    const answer = await this.#post(records, limits);
    switch (answer.action) {
      case "stopped":
        d.stopped = true;
        return;
      case "accepted":
        await this.#o.accepted(records);
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
        await this.#deliver(records.slice(0, half), limits, d);
        await this.#deliver(records.slice(half), limits, d);
      }
    }
  }

  async #post(
    records: UsageRecord[],
    limits: SendLimits,
  ): Promise<PostAnswer> {
    if (limits.stop?.aborted) return { action: "stopped" };
    const clock = this.#o.clock;
    const timeoutMs = Math.min(
      this.#o.requestTimeoutMs,
      limits.deadline - clock.now(),
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
    const stop = () => controller.abort(limits.stop?.reason);
    limits.stop?.addEventListener("abort", stop, { once: true });
    const timer = clock.setTimeout(
      () =>
        controller.abort(
          new DOMException(`no answer within ${timeoutMs} ms`, "TimeoutError"),
        ),
      timeoutMs,
    );
    try {
      const res = await this.#o.fetch(this.#o.endpoint, {
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
      // Abandoned: its records stay queued, and are sent again later.
      if (limits.stop?.aborted) return { action: "stopped" };
      const timeout = controller.signal.aborted ||
        (err instanceof DOMException && err.name === "TimeoutError");
      return {
        action: "endpoint_failure",
        kind: timeout ? "timeout" : "network",
        detail: String((err as Error)?.message ?? err),
      };
    } finally {
      clock.clearTimeout(timer);
      limits.stop?.removeEventListener("abort", stop);
    }
  }
}
