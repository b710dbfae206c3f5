/**
 * Reconnect delays: the first retry comes exactly after the base delay (the
 * figure an operator configured), each later one doubles the step, capped,
 * with jitter inside the step so that sidecars that failed together drift
 * apart instead of retrying in lock-step.
 *
 * @module
 */

/** Options of {@link backoffDelayMs}. */
export interface BackoffOptions {
  /** Delay before the first retry, in milliseconds; > 0. */
  baseDelayMs: number;
  /** Upper bound of any delay, in milliseconds; >= `baseDelayMs`. */
  maxDelayMs: number;
  /** Source of randomness in [0, 1); default `Math.random`. */
  random?: () => number;
}

/**
 * Delay before reconnect attempt number `attempt` (1 for the first retry).
 *
 * Attempt 1 waits exactly `baseDelayMs`. Attempt n > 1 waits a uniformly
 * random time in [max(base, d/2), d], where d = min(max, base * 2^(n-1)):
 * never less than the configured delay, never more than the cap, and on
 * average about double the previous wait until the cap is reached.
 *
 * @throws {RangeError} if `attempt` is not an integer >= 1, or the delays
 *   are not finite with 0 < baseDelayMs <= maxDelayMs.
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
  const { baseDelayMs: base, maxDelayMs: max } = options;
  if (!Number.isFinite(base) || base <= 0) {
    throw new RangeError(
      `Cannot compute backoff: baseDelayMs must be a finite number > 0, got ${base}`,
    );
  }
  if (!Number.isFinite(max) || max < base) {
    throw new RangeError(
      `Cannot compute backoff: maxDelayMs must be finite and >= baseDelayMs (${base}), got ${max}`,
    );
  }
  if (attempt === 1) return Math.round(base);

  // 2^30 steps already exceed any cap a finite config allows.
  const exp = Math.min(attempt - 1, 30);
  const ceiling = Math.min(max, base * 2 ** exp);
  const floor = Math.max(base, ceiling / 2);
  const random = options.random ?? Math.random;
  return Math.round(floor + random() * (ceiling - floor));
}
