/**
 * Whether a new generation is taken now. Deciding only reads the client's
 * state; the errors themselves are in `generation_errors.ts`.
 *
 * @module
 */

import type { SidecarError } from "../errors.ts";
import type { GenerationRequest } from "./exchange.ts";
import {
  duplicateId,
  queueFull,
  reloadOverran,
  shuttingDown,
  tooManyHeld,
  workerDraining,
  workerRestarting,
} from "./generation_errors.ts";
import type { HoldLimits } from "./holds.ts";
import type { WorkerState } from "./state.ts";

/** Limits admission checks against, in requests and milliseconds. */
export interface AdmissionLimits extends HoldLimits {
  maxQueuedRequests: number;
  maxHeldRequests: number;
  reconnectDelayMs: number;
  handshakeTimeoutMs: number;
}

/** What admission reads of the client at the moment of a request. */
export interface AdmissionView {
  state: WorkerState;
  /** The sidecar is shutting down. */
  draining: boolean;
  /** Generations on the worker (slots in use). */
  inFlight: number;
  /** Generations waiting for a slot or held. */
  waiting: number;
  /** Where the request's id already is, if anywhere. */
  idInUse: "in_flight" | "forgotten" | null;
  now: number;
}

/**
 * Why `request` cannot be taken now, or null if it can: it is then sent at
 * once, queued for a slot (state `ready`) or held (state `reloading`).
 */
export function refusal(
  request: GenerationRequest,
  view: AdmissionView,
  limits: AdmissionLimits,
): SidecarError | null {
  const s = view.state;
  if (view.draining || s.state === "stopped") return shuttingDown();
  if (view.idInUse !== null) {
    return duplicateId(request.id, view.idInUse === "forgotten");
  }

  switch (s.state) {
    case "ready":
      if (view.inFlight < s.info.maxConcurrency) return null;
      if (view.waiting < limits.maxQueuedRequests) return null;
      return queueFull(s.info.maxConcurrency, limits.maxQueuedRequests);
    case "reloading": {
      const left = s.holdUntil - view.now;
      if (left <= 0) return reloadOverran(limits);
      if (view.waiting >= limits.maxHeldRequests) {
        return tooManyHeld(limits.maxHeldRequests, left);
      }
      return null;
    }
    case "draining":
      return workerDraining(limits.reconnectDelayMs);
    case "connecting":
    case "disconnected": {
      const retryAt = s.state === "disconnected" ? s.retryAt : view.now;
      // A margin for the attempt itself: most handshakes take far less
      // than their timeout.
      const wait = Math.max(retryAt - view.now, 0) +
        limits.handshakeTimeoutMs / 5;
      return workerRestarting(wait);
    }
  }
}
