/**
 * The worker connection's state machine, in one place.
 *
 * ```
 *            connect ok, welcome "ready"
 * connecting ─────────────────────────────▶ ready ◀──────────┐
 *   │  ▲  │  connect ok, welcome "reloading"  │ status        │ status "ready"
 *   │  │  └──────────────────────────▶ reloading ◀────────────┤ (same or new
 *   │  │ retry timer                  │  ▲  status          │  connection)
 *   │  │                              │  └──"reloading"─ ready
 *   ▼  │  connect failed /            │ connection lost: stay reloading,
 * disconnected ◀── connection lost ───┘ reconnect quickly until the hold ends
 *   ▲            (from ready, draining)
 *   └──────────────── draining ◀── status "draining" (from ready)
 * ```
 *
 * As a circuit breaker: `ready` is closed (requests flow), `disconnected` is
 * open (requests fail at once with a retry hint), `connecting` is half-open
 * (one reconnect attempt; its handshake closes the circuit). `reloading`
 * holds requests instead of failing them; `draining` fails them at once.
 * `stopped` is final: the sidecar is shutting down.
 *
 * A retry that falls due while the socket of a timed-out handshake is still
 * held open (a stopped worker never closes it) waits in `disconnected` (or
 * `reloading`) until that socket is released; see `reconnect.ts`. The
 * transitions are made by `link.ts`.
 *
 * @module
 */

/** What the worker told us about itself. */
export interface WorkerInfo {
  modelId: string;
  maxConcurrency: number;
  protocolVersion: number;
  worker: string;
}

/** The connection state; `since` is a {@link Clock} reading in ms. */
export type WorkerState =
  | { state: "connecting"; since: number; attempt: number }
  | {
    state: "disconnected";
    since: number;
    attempt: number;
    retryAt: number;
    lastError: string;
  }
  | { state: "ready"; since: number; info: WorkerInfo }
  | {
    state: "reloading";
    since: number;
    info: WorkerInfo;
    etaMs: number;
    /**
     * End of the reload's hold (ETA plus grace, capped by max_hold, from
     * the latest announcement): new requests are refused after it, and a
     * held request gives up by then, or earlier at its own max_hold cap.
     */
    holdUntil: number;
    message: string;
  }
  | { state: "draining"; since: number; info: WorkerInfo }
  | { state: "stopped"; since: number };

/** Values of `sidecar_worker_connection_status{status}`. */
export type StatusLabel =
  | "connected"
  | "disconnected"
  | "reloading"
  | "draining";

/** All label values, so every series exists from start-up. */
export const STATUS_LABELS: readonly StatusLabel[] = [
  "connected",
  "disconnected",
  "reloading",
  "draining",
];

/** The metric label for a state. */
export function statusLabel(s: WorkerState): StatusLabel {
  switch (s.state) {
    case "ready":
      return "connected";
    case "reloading":
      return "reloading";
    case "draining":
      return "draining";
    case "connecting":
    case "disconnected":
    case "stopped":
      return "disconnected";
  }
}

/** How a state change is logged: a level and the fields of the line. */
export interface TransitionLog {
  level: "debug" | "info";
  fields: Record<string, unknown>;
}

/**
 * How the change from `prev` to `next` is logged, or null when the state
 * name stays (a reload re-announced, a reconnect while reloading).
 */
export function transitionLog(
  prev: WorkerState,
  next: WorkerState,
): TransitionLog | null {
  if (prev.state === next.state) return null;
  // Reconnect attempts flip through "connecting" every few seconds while
  // the worker is down; only the lasting states are news.
  const quiet = prev.state === "connecting" || next.state === "connecting";
  return {
    level: quiet ? "debug" : "info",
    fields: {
      from: prev.state,
      to: next.state,
      ...("info" in next ? { model_id: next.info.modelId } : {}),
      ...(next.state === "reloading" ? { eta_ms: next.etaMs } : {}),
      ...(next.state === "disconnected"
        ? {
          error: next.lastError,
          retry_in_ms: Math.round(next.retryAt - next.since),
        }
        : {}),
    },
  };
}
