/**
 * Reconnect delays: exponential from a base, capped, with full jitter on the
 * upper half so that many sidecars restarted together do not reconnect in
 * lock-step, while a single sidecar still retries promptly.
 *
 * @module
 */

/** Options of {@link backoffDelayMs}. */
export interface BackoffOptions {
  /** Delay before the first retry, in milliseconds. */
  baseDelayMs: number;
  /** Upper bound of any delay, in milliseconds. */
  maxDelayMs: number;
  /** Source of randomness in [0, 1); default `Math.random`. */
  random?: () => number;
}

/**
 * Delay before reconnect attempt number `attempt` (1 for the first retry).
 * The result lies in [d/2, d] where d = min(max, base * 2^(attempt-1)).
 *
 * @throws {RangeError} if `attempt` is below 1.
 */
export function backoffDelayMs(
  attempt: number,
  options: BackoffOptions,
): number {
  if (!Number.isInteger(attempt) || attempt < 1) {
    throw new RangeError(
      `Cannot compute backoff: attempt must be an integer >= 1, got ${attempt}`,
    );
  }
  const random = options.random ?? Math.random;
  const exp = Math.min(attempt - 1, 30);
  const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** exp);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
