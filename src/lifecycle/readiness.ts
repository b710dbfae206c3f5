/**
 * Whether the sidecar takes new generations, decided in one place. gRPC
 * health (`Check`, `Watch`), `/readyz`, the `sidecar_ready` gauge and the
 * `detail` of `GetStatus` all read {@link decideServing}, so they cannot
 * disagree. What each signal means: docs/deployment.md, "Health signals".
 *
 * @module
 */

import { type Clock, realClock, type TimerId } from "../util/clock.ts";
import type { WorkerState } from "../worker/state.ts";

/** Why new generations are not taken; several can hold at once. */
export type NotServingReason =
  | "shutting_down"
  | "worker_not_ready"
  | "metering_refusing";

/** The inputs of the decision, read at one instant. */
export interface ServingInputs {
  /** The worker connection's state. */
  worker: WorkerState;
  /** The worker client still takes new generations (false once it refuses them for shutdown). */
  workerAccepting: boolean;
  /** Shutdown has begun. */
  shuttingDown: boolean;
  /** The meter refuses new generations (e.g. the usage queue is full). */
  meterRefusing: boolean;
}

/** The decision: serving, or every reason it is not. */
export interface ServingVerdict {
  serving: boolean;
  /** Empty exactly when `serving` is true; in a fixed order. */
  reasons: NotServingReason[];
}

/**
 * The one rule: serving while the worker is ready and the client accepts
 * work, shutdown has not begun, and the meter admits new generations.
 */
export function decideServing(inputs: ServingInputs): ServingVerdict {
  const ready = inputs.worker.state === "ready";
  const reasons: NotServingReason[] = [];
  // The worker client stops accepting only when the sidecar shuts down.
  if (inputs.shuttingDown || (ready && !inputs.workerAccepting)) {
    reasons.push("shutting_down");
  }
  if (!ready) reasons.push("worker_not_ready");
  if (inputs.meterRefusing) reasons.push("metering_refusing");
  return { serving: reasons.length === 0, reasons };
}

const REASON_TEXT: Record<NotServingReason, string> = {
  shutting_down: "the sidecar is shutting down",
  worker_not_ready: "the worker is not ready",
  metering_refusing:
    "the usage queue is full or the usage database cannot be written",
};

/** A sentence for people: why no new generations are taken (empty when serving). */
export function describeVerdict(verdict: ServingVerdict): string {
  if (verdict.serving) return "";
  return `not taking new generations: ${
    verdict.reasons.map((r) => REASON_TEXT[r]).join("; ")
  }`;
}

/** What readiness needs from the worker client. */
export interface WorkerView {
  readonly state: WorkerState;
  readonly accepting: boolean;
  onStateChange(listener: (s: WorkerState) => void): void;
}

/** Options of {@link Readiness}. */
export interface ReadinessOptions {
  worker: WorkerView;
  /**
   * True while the meter refuses new generations. Must be free of side
   * effects (it is read on every probe and poll) and cover every reason
   * the meter's `admit()` refuses.
   */
  meterRefusing: () => boolean;
  /**
   * Optional push from the meter: subscribes a listener the meter calls
   * whenever its admit state may have changed, so `Watch` hears it at once
   * rather than at the next poll. The poll runs either way.
   */
  meterChanges?: (listener: () => void) => void;
  /**
   * How often the meter is re-read for `onChange` listeners (health
   * `Watch`), in ms. Default {@link METER_POLL_MS}.
   */
  meterPollMs?: number;
  clock?: Clock;
}

/**
 * Default meter poll interval. `Check` and `/readyz` read the meter at
 * once; only `Watch` streams wait for a poll, so a quarter second is quick
 * enough for a gateway to move traffic and costs four cheap reads a second.
 */
export const METER_POLL_MS = 250;

/**
 * The live decision for a running sidecar: {@link verdict} on demand, and
 * `onChange` listeners told when serving flips. Worker state changes and
 * shutdown are pushed; the meter is polled, and pushed too where it offers
 * `meterChanges`.
 */
export class Readiness {
  #o: ReadinessOptions;
  #clock: Clock;
  #pollMs: number;
  #shuttingDown = false;
  #lastServing: boolean;
  #listeners = new Set<(v: ServingVerdict) => void>();
  #timer: TimerId | null = null;

  constructor(options: ReadinessOptions) {
    const pollMs = options.meterPollMs ?? METER_POLL_MS;
    if (!(pollMs > 0) || !Number.isFinite(pollMs)) {
      throw new RangeError(
        `Cannot create Readiness: meterPollMs must be a positive number of ms, got ${pollMs}`,
      );
    }
    this.#o = options;
    this.#clock = options.clock ?? realClock;
    this.#pollMs = pollMs;
    this.#lastServing = this.verdict.serving;
    options.worker.onStateChange(() => this.recheck());
    options.meterChanges?.(() => this.recheck());
  }

  /** The decision now. */
  get verdict(): ServingVerdict {
    const w = this.#o.worker;
    return decideServing({
      worker: w.state,
      workerAccepting: w.accepting,
      shuttingDown: this.#shuttingDown,
      meterRefusing: this.#o.meterRefusing(),
    });
  }

  /** True once {@link beginShutdown} was called. */
  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** Marks the start of shutdown; listeners hear NOT_SERVING at once. */
  beginShutdown(): void {
    this.#shuttingDown = true;
    this.recheck();
  }

  /**
   * Re-reads every input and tells listeners if serving flipped. Called
   * on worker state changes, by the poll, and by anyone whose admit state
   * just changed (e.g. the meter).
   */
  recheck(): void {
    const v = this.verdict;
    if (v.serving === this.#lastServing) return;
    this.#lastServing = v.serving;
    for (const l of [...this.#listeners]) l(v);
  }

  /** Calls `listener` each time serving flips; returns the unsubscribe. */
  onChange(listener: (v: ServingVerdict) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Starts polling the meter. */
  start(): void {
    if (this.#timer !== null) return;
    const tick = () => {
      this.recheck();
      this.#timer = this.#clock.setTimeout(tick, this.#pollMs);
    };
    this.#timer = this.#clock.setTimeout(tick, this.#pollMs);
  }

  /** Stops polling (listeners stay; pushed changes still reach them). */
  stop(): void {
    if (this.#timer !== null) this.#clock.clearTimeout(this.#timer);
    this.#timer = null;
  }
}
