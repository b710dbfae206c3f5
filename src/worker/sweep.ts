/**
 * The periodic pass over a client's generations that enforces their
 * deadlines: waits that ran out (queue timeout, or the end of a reload
 * hold) and generations the worker stopped answering.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";
import {
  generationIdle,
  holdOver,
  queueTimedOut,
} from "./generation_errors.ts";
import type { Generations } from "./generations.ts";
import type { HoldLimits } from "./holds.ts";

/**
 * How often deadlines of waiting and idle generations are checked: a bound
 * on how late a queue timeout or idle timeout can fire, at the cost of one
 * pass over the in-flight map per tick.
 */
export const SWEEP_INTERVAL_MS = 250;

/** Deadlines the sweep enforces, in milliseconds. */
export interface SweepLimits extends HoldLimits {
  queueTimeoutMs: number;
  /** A generation with credit and no frame for this long fails. */
  requestIdleTimeoutMs: number;
}

/**
 * Fails the waiting generations whose wait ended by `now`: as a hold that
 * overran while the worker is `reloading`, as a queue timeout otherwise.
 */
export function expireWaits(
  gens: Generations,
  now: number,
  limits: SweepLimits,
  reloading: boolean,
): void {
  if (!gens.waiting.some((ex) => ex.waitUntil <= now)) return;
  const expired = gens.waiting.filter((ex) => ex.waitUntil <= now);
  gens.waiting = gens.waiting.filter((ex) => ex.waitUntil > now);
  for (const ex of expired) {
    ex.phase = "ended";
    ex.sink.fail(
      ex.held && reloading
        ? holdOver(ex, limits)
        : queueTimedOut(limits.queueTimeoutMs),
    );
  }
}

/**
 * Ends the generations the worker has sent nothing for within the idle
 * timeout: one that has credit is cancelled and fails as hung; one already
 * cancelled that the worker never ended has its slot freed and its id
 * remembered, so that a late frame for it is dropped.
 */
export function expireIdle(
  gens: Generations,
  now: number,
  limits: SweepLimits,
  log: Logger,
): void {
  const idle = limits.requestIdleTimeoutMs;
  for (const ex of gens.active.values()) {
    if (now - ex.lastActivity < idle) continue;
    if (ex.phase === "cancelling") {
      log.warn(
        "worker never ended a cancelled generation; slot freed",
        { request_id: ex.request.id },
      );
      gens.end(ex);
      gens.forgotten.add(ex.request.id);
    } else if (ex.phase === "active" && ex.credit > 0) {
      gens.cancel(ex, "idle_timeout");
      ex.sink.fail(generationIdle(ex.request.id, idle));
    }
  }
}
