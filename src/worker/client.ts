/**
 * The sidecar's side of the worker protocol, as the gateway uses it: submit
 * a generation, get its events, stop. Its parts, each in its own file:
 *
 * - `link.ts`: the connection and the worker's state (documented in
 *   `state.ts`), with `reconnect.ts`, `heartbeat.ts` and `handshake.ts`;
 * - `admission.ts`: whether a new generation is taken;
 * - `generations.ts`: sending, queueing and holding generations (holds in
 *   `holds.ts`), routing the worker's frames to them;
 * - `sweep.ts`: deadlines of waiting and idle generations;
 * - `generation_errors.ts`: every error a generation can get here;
 * - `options.ts`: the options, with their units.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";
import { silentLogger } from "../log/logger.ts";
import type { SidecarError } from "../errors.ts";
import { type Clock, realClock, type TimerId } from "../util/clock.ts";
import { refusal } from "./admission.ts";
import type {
  GenerationHandle,
  GenerationRequest,
  GenerationSink,
} from "./exchange.ts";
import { shuttingDown } from "./generation_errors.ts";
import { Generations } from "./generations.ts";
import { WorkerLink } from "./link.ts";
import type { WorkerClientOptions } from "./options.ts";
import type { WorkerState } from "./state.ts";
import { expireIdle, expireWaits, SWEEP_INTERVAL_MS } from "./sweep.ts";

export type { WorkerClientOptions } from "./options.ts";

/** Result of {@link WorkerClient.submit}. */
export type SubmitResult =
  | { ok: true; handle: GenerationHandle }
  | { ok: false; error: SidecarError };

// At shutdown, the `cancel` frames for what is still running get this long
// to reach the worker before the connection is closed.
const STOP_FLUSH_MS = 500;

/** Connects to the worker and carries generations to it. */
export class WorkerClient {
  #o: WorkerClientOptions;
  #log: Logger;
  #clock: Clock;
  #link: WorkerLink;
  #gens: Generations;
  #sweepTimer: TimerId | null = null;
  #draining = false;

  constructor(options: WorkerClientOptions) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    this.#clock = options.clock ?? realClock;
    this.#gens = new Generations(
      { state: () => this.#link.state, conn: () => this.#link.conn },
      { ...options, clock: this.#clock },
    );
    this.#link = new WorkerLink(
      { ...options, clock: this.#clock, logger: this.#log },
      this.#gens,
    );
  }

  /** The current state. */
  get state(): WorkerState {
    return this.#link.state;
  }

  /** Generations sent to the worker and not yet finished (slots in use). */
  get inFlight(): number {
    return this.#gens.active.size;
  }

  /** Generations waiting for a slot or held during a reload. */
  get waiting(): number {
    return this.#gens.waiting.length;
  }

  /** True while new generations are taken: the worker is ready and the sidecar is not shutting down. */
  get accepting(): boolean {
    return this.#link.state.state === "ready" && !this.#draining;
  }

  /**
   * Refuses new generations from now on (shutdown); those in flight go on.
   * Listeners are told, so health checks turn NOT_SERVING at once.
   */
  refuseNew(): void {
    this.#draining = true;
    this.#link.notify();
  }

  /** Calls `listener` on every state change. */
  onStateChange(listener: (s: WorkerState) => void): void {
    this.#link.onStateChange(listener);
  }

  /** Starts connecting and the periodic checks. */
  start(): void {
    this.#scheduleSweep();
    this.#link.start();
  }

  /**
   * Admits a generation: sends it now, queues it for a slot, holds it
   * during a reload, or refuses it at once with the reason.
   */
  submit(request: GenerationRequest, sink: GenerationSink): SubmitResult {
    const error = refusal(request, {
      state: this.#link.state,
      draining: this.#draining,
      inFlight: this.#gens.active.size,
      waiting: this.#gens.waiting.length,
      idInUse: this.#gens.idInUse(request.id),
      now: this.#clock.now(),
    }, this.#o);
    if (error) return { ok: false, error };
    return { ok: true, handle: this.#gens.admit(request, sink) };
  }

  /**
   * Fails everything still running or waiting (UNAVAILABLE with a retry
   * hint), tells the worker to cancel what it was running, and stops the
   * timers. The connection closes once those `cancel` frames are written,
   * after at most 500 ms; the promise resolves then.
   */
  async stop(): Promise<void> {
    this.#draining = true;
    if (this.#sweepTimer !== null) this.#clock.clearTimeout(this.#sweepTimer);
    this.#sweepTimer = null;
    // From here on, nothing the worker sends is routed anywhere.
    const conn = this.#link.stop();

    this.#gens.endActive(shuttingDown, conn ?? undefined);
    this.#gens.failWaiting(shuttingDown);
    await conn?.closeAfterFlush(STOP_FLUSH_MS);
  }

  #scheduleSweep(): void {
    this.#sweepTimer = this.#clock.setTimeout(() => {
      this.#sweep();
      this.#scheduleSweep();
    }, SWEEP_INTERVAL_MS);
  }

  #sweep(): void {
    const now = this.#clock.now();
    expireWaits(
      this.#gens,
      now,
      this.#o,
      this.#link.state.state === "reloading",
    );
    this.#link.checkReload(now);
    expireIdle(this.#gens, now, this.#o, this.#log);
    this.#gens.pump();
  }
}
