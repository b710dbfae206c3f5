/**
 * Every error the worker client gives a generation it refuses or fails, in
 * one place: each says why in words for people, and carries a retry
 * pushback (`retryAfterMs`, a whole number: it is sent as a uint32) where
 * waiting helps.
 *
 * @module
 */

import { retryHint, SidecarError } from "../errors.ts";
import { utf8Length } from "../util/utf8.ts";
import type {
  FrameTooLargeError,
  WorkerConnectionError,
} from "./connection_errors.ts";
import type { Exchange, GenerationRequest } from "./exchange.ts";
import type { HoldLimits } from "./holds.ts";

// Pushback for requests refused or failed because the sidecar is shutting
// down: the gateway should go to another instance, which it can do at once;
// one second lets its endpoint list drop this pod first.
const SHUTDOWN_RETRY_MS = 1000;

// Pushback when the worker is at its limit or stopped feeding a generation:
// about the time a slot takes to free up under load, short enough to keep
// the gateway busy.
const BUSY_RETRY_MS = 1000;

/** UNAVAILABLE for a request refused or failed by the sidecar's shutdown. */
export function shuttingDown(): SidecarError {
  return new SidecarError(
    "shutting_down",
    "sidecar is shutting down; retry on another instance",
    { retryAfterMs: SHUTDOWN_RETRY_MS },
  );
}

/**
 * ALREADY_EXISTS for a request whose id is in flight, or (`cancelled`) was
 * cancelled and not yet ended by the worker: a new generate with it would
 * be a duplicate id on the worker's side.
 */
export function duplicateId(id: string, cancelled: boolean): SidecarError {
  return new SidecarError(
    "duplicate_request",
    cancelled
      ? `request_id ${
        JSON.stringify(id)
      } was cancelled and the worker has not ended it yet`
      : `request_id ${JSON.stringify(id)} is already in flight`,
  );
}

/** UNAVAILABLE while the worker is away, retrying after `waitMs`. */
export function workerRestarting(waitMs: number): SidecarError {
  return new SidecarError(
    "worker_unavailable",
    `Worker is restarting, please ${retryHint(waitMs)}`,
    { retryAfterMs: Math.ceil(waitMs) },
  );
}

/** UNAVAILABLE while the worker announces it is shutting down. */
export function workerDraining(reconnectDelayMs: number): SidecarError {
  return new SidecarError(
    "worker_unavailable",
    `Worker is shutting down, please ${retryHint(reconnectDelayMs)}`,
    { retryAfterMs: reconnectDelayMs },
  );
}

/** RESOURCE_EXHAUSTED: every slot is taken and `maxQueued` requests wait. */
export function queueFull(
  maxConcurrency: number,
  maxQueued: number,
): SidecarError {
  return new SidecarError(
    "worker_overloaded",
    `worker is at its limit of ${maxConcurrency} generations and ${maxQueued} are waiting; ${
      retryHint(BUSY_RETRY_MS)
    }`,
    { retryAfterMs: BUSY_RETRY_MS },
  );
}

/** RESOURCE_EXHAUSTED for a request that waited `queueTimeoutMs` for a slot. */
export function queueTimedOut(queueTimeoutMs: number): SidecarError {
  return new SidecarError(
    "worker_overloaded",
    `no worker slot became free within ${queueTimeoutMs} ms, please ${
      retryHint(BUSY_RETRY_MS)
    }`,
    { retryAfterMs: BUSY_RETRY_MS },
  );
}

/** UNAVAILABLE for a request arriving after the reload overran its hold. */
export function reloadOverran(limits: HoldLimits): SidecarError {
  return new SidecarError(
    "worker_unavailable",
    `Worker is reloading and overran its ETA, please ${
      retryHint(limits.reloadGraceMs)
    }`,
    { retryAfterMs: limits.reloadGraceMs },
  );
}

/** UNAVAILABLE: `maxHeld` are held already, with `leftMs` of the hold to go. */
export function tooManyHeld(maxHeld: number, leftMs: number): SidecarError {
  return new SidecarError(
    "worker_unavailable",
    `Worker is reloading and ${maxHeld} requests are already held, please ${
      retryHint(leftMs)
    }`,
    { retryAfterMs: Math.ceil(leftMs) },
  );
}

/** UNAVAILABLE for a held request whose hold ran out. */
export function holdOver(ex: Exchange, limits: HoldLimits): SidecarError {
  const retryAfterMs = limits.reloadGraceMs;
  const capped = ex.waitUntil >= ex.heldSince + limits.maxHoldMs;
  return new SidecarError(
    "worker_unavailable",
    capped
      ? `Worker is still reloading after holding this request for ${
        Math.round(limits.maxHoldMs / 1000)
      }s (health.max_hold_secs), please ${retryHint(retryAfterMs)}`
      : `Worker reload is taking longer than announced, please ${
        retryHint(retryAfterMs)
      }`,
    { retryAfterMs },
  );
}

/** The failure of a generation whose connection ended with `err`. */
export function connectionLost(
  err: WorkerConnectionError,
  retryAfterMs: number,
): SidecarError {
  const kind = err.kind === "heartbeat"
    ? "worker_hung"
    : err.kind === "protocol"
    ? "worker_protocol"
    : "worker_unavailable";
  const what = err.kind === "protocol"
    ? `worker protocol error: ${err.message}`
    : `worker connection lost mid-stream (${err.message}), please ${
      retryHint(retryAfterMs)
    }`;
  return new SidecarError(kind, what, { retryAfterMs });
}

/** UNAVAILABLE for a generation the worker sent nothing for in `idleMs`. */
export function generationIdle(id: string, idleMs: number): SidecarError {
  return new SidecarError(
    "worker_hung",
    `worker sent nothing for request ${JSON.stringify(id)} in ${idleMs} ms`,
    { retryAfterMs: BUSY_RETRY_MS },
  );
}

/** INTERNAL for a generation the worker sent a chunk without credit. */
export function chunkWithoutCredit(): SidecarError {
  return new SidecarError(
    "worker_protocol",
    "worker sent a chunk without flow-control credit",
  );
}

/** The failure of a generation the worker ended with an `error` frame. */
export function workerFailed(code: string, message: string): SidecarError {
  return code === "overloaded"
    ? new SidecarError("worker_overloaded", message, {
      retryAfterMs: BUSY_RETRY_MS,
    })
    : new SidecarError("worker_error", message, { workerCode: code });
}

/** FAILED_PRECONDITION for a request naming a model the worker does not serve. */
export function modelMismatch(wanted: string, served: string): SidecarError {
  return new SidecarError(
    "model_mismatch",
    `model_id ${JSON.stringify(wanted)} is not served here; the worker serves ${
      JSON.stringify(served)
    }`,
  );
}

/** INVALID_ARGUMENT for a request whose generate frame the worker cannot take. */
export function tooLargeForWorker(
  req: GenerationRequest,
  err: FrameTooLargeError,
): SidecarError {
  const bytes = (v: unknown) => utf8Length(JSON.stringify(v));
  // Name the member that makes the frame large: almost always the text.
  const [field, size] = req.messages !== undefined
    ? ["messages", bytes(req.messages)]
    : ["prompt", utf8Length(req.prompt ?? "")];
  const stop = req.sampling.stop ? bytes(req.sampling.stop) : 0;
  const [name, fieldBytes] = stop > size
    ? ["sampling.stop", stop]
    : [field, size];
  return new SidecarError(
    "invalid_request",
    `${name}: ${fieldBytes} bytes is too large for the worker: the generate frame would be ${err.frameBytes} bytes, over the worker's max_frame_bytes of ${err.maxFrameBytes}`,
  );
}
