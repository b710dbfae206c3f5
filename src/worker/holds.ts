/**
 * Holding requests while the worker reloads its model: how long a reload
 * holds them, and what their callers are told.
 *
 * A reload holds new requests until its ETA plus `reloadGraceMs`, as last
 * announced, but one request never longer than `maxHoldMs` after it was
 * first held: a worker announcing new ETAs again and again cannot keep a
 * caller waiting without end. How a hold that runs out fails is
 * `holdOver` in `generation_errors.ts`.
 *
 * @module
 */

import type { Exchange } from "./exchange.ts";
import { UINT32_MAX } from "./messages.ts";
import type { WorkerInfo, WorkerState } from "./state.ts";

/** The `reloading` state. */
export type Reloading = Extract<WorkerState, { state: "reloading" }>;

/** Bounds of holding, in milliseconds. */
export interface HoldLimits {
  /** Held requests wait at most the reload ETA plus this. */
  reloadGraceMs: number;
  /**
   * Cap on holding one request, counted from when it was first held; a
   * worker announcing new ETAs cannot move it.
   */
  maxHoldMs: number;
}

/** The state entered when the worker announces a reload at `now`. */
export function reloadingState(
  announced: {
    now: number;
    info: WorkerInfo;
    etaMs: number;
    message: string;
  },
  limits: HoldLimits,
): Reloading {
  const { now, etaMs } = announced;
  const holdMs = Math.min(etaMs + limits.reloadGraceMs, limits.maxHoldMs);
  return {
    state: "reloading",
    since: now,
    info: announced.info,
    etaMs,
    holdUntil: now + holdMs,
    message: announced.message,
  };
}

/**
 * Holds a waiting request during the reload `s`: its caller is told the
 * remaining ETA the first time, and its deadline follows the latest
 * announcement within its own cap.
 */
export function hold(
  ex: Exchange,
  s: Reloading,
  now: number,
  limits: HoldLimits,
): void {
  if (!ex.held) {
    ex.held = true;
    ex.heldSince = now;
    const leftMs = Math.max(0, s.etaMs - (now - s.since));
    ex.sink.system(
      "reloading",
      `[System] Loading new model, ETA ${Math.ceil(leftMs / 1000)}s...`,
      // A uint32 field of the gateway's event. The worker's ETA is
      // validated to fit; the clamp keeps it so should that ever change.
      Math.min(Math.round(leftMs), UINT32_MAX),
    );
  }
  ex.waitUntil = Math.min(s.holdUntil, ex.heldSince + limits.maxHoldMs);
}
