/**
 * What a billing endpoint's answer to a usage batch means for the sidecar:
 * one table, from HTTP status to action (docs/metering.md, "Answers").
 *
 * @module
 */

/** Why a send failed, as a metric label. */
export type SendFailureKind =
  | "network"
  | "timeout"
  | "http_4xx"
  | "http_5xx"
  | "http_429"
  | "http_other"
  | "queue";

/** What to do with a batch after the endpoint answered. */
export type Answer =
  /** The batch's records leave the queue. */
  | { action: "accepted" }
  /** The endpoint (or its configuration) failed: keep, back off, retry. */
  | {
    action: "endpoint_failure";
    kind: SendFailureKind;
    retryAfterMs?: number;
    detail: string;
  }
  /**
   * The endpoint refused the batch (any other 4xx, 413 included): split it,
   * to find out whether some of its records are the problem, or to make
   * each request smaller.
   */
  | { action: "refused"; status: number; detail: string };

// Answers that say the endpoint, or the way it is reached, is wrong: no
// record can be at fault, so no record is ever set aside for them.
const ENDPOINT_STATUSES = new Set([
  401, // credentials missing or wrong
  403, // not allowed
  404, // wrong URL
  405, // wrong method for that URL
  407, // a proxy wants credentials
  410, // the endpoint was removed
  415, // it does not take this content type (metering.format)
  421, // misdirected
  426, // it wants another protocol
]);

/** The action for an HTTP answer; `retryAfter` is the header's value. */
export function classifyAnswer(
  status: number,
  retryAfter: string | null,
  detail: string,
  nowMs: number = Date.now(),
): Answer {
  // 409: the billing service already holds a record with this id (an
  // earlier send whose acknowledgement was lost): it has the usage.
  if ((status >= 200 && status < 300) || status === 409) {
    return { action: "accepted" };
  }
  if (status === 408) {
    return { action: "endpoint_failure", kind: "timeout", detail };
  }
  if (status === 429 || status >= 500) {
    return {
      action: "endpoint_failure",
      kind: status === 429 ? "http_429" : "http_5xx",
      retryAfterMs: parseRetryAfter(retryAfter, nowMs),
      detail,
    };
  }
  if (ENDPOINT_STATUSES.has(status)) {
    return { action: "endpoint_failure", kind: "http_4xx", detail };
  }
  if (status >= 400) {
    return { action: "refused", status, detail };
  }
  // 1xx and 3xx that were not followed: nothing was taken.
  return { action: "endpoint_failure", kind: "http_other", detail };
}

/**
 * A `Retry-After` header as a delay in milliseconds: either delay-seconds
 * or an HTTP-date (RFC 9110, 10.2.3). Undefined when absent, malformed or
 * not in the future.
 */
export function parseRetryAfter(
  value: string | null,
  nowMs: number = Date.now(),
): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) {
    const secs = Number(text);
    return secs > 0 ? secs * 1000 : undefined;
  }
  const at = Date.parse(text);
  if (!Number.isFinite(at) || at <= nowMs) return undefined;
  return at - nowMs;
}
