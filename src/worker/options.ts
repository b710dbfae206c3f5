/**
 * Options of the worker client, in one place: what each bounds, with its
 * unit. The sidecar's configuration (`src/config/`) fills them.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";
import type { Clock } from "../util/clock.ts";
import type {
  CloseKind,
  ConnectOptions,
  WorkerConnection,
} from "./connection.ts";
import type { HoldLimits } from "./holds.ts";

/** Options of the link to the worker; durations in milliseconds. */
export interface LinkOptions extends
  HoldLimits,
  Pick<
    ConnectOptions,
    "socketPath" | "maxFrameBytes" | "handshakeTimeoutMs" | "agent"
  > {
  /** A ping goes out this often (announced in the handshake). */
  checkIntervalMs: number;
  /** A ping not answered within this is a hung worker. */
  heartbeatTimeoutMs: number;
  /** First wait before reconnecting; see `backoff.ts`. */
  reconnectDelayMs: number;
  /** Cap on the reconnect wait as it backs off. */
  reconnectMaxDelayMs: number;
  /** Called for every connection failure, with a fixed-set kind. */
  onConnectionError?: (kind: CloseKind) => void;
  /** Overrides how connections are made (tests). */
  connect?: (options: ConnectOptions) => Promise<WorkerConnection>;
}

/** Options of `WorkerClient`; durations in milliseconds. */
export interface WorkerClientOptions extends LinkOptions {
  /** A generation with credit and no frame for this long fails. */
  requestIdleTimeoutMs: number;
  /** Per-generation flow-control window, in chunks. */
  streamCreditChunks: number;
  /** Generations that may wait for a slot (0: fail at once). */
  maxQueuedRequests: number;
  /** How long a generation may wait for a slot. */
  queueTimeoutMs: number;
  /** Requests held at once during a reload (0: fail at once). */
  maxHeldRequests: number;
  /** Where the link logs its state changes; default: silent. */
  logger?: Logger;
  /** Timers and time; default the process clock. */
  clock?: Clock;
}
