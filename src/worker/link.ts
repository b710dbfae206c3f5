/**
 * The link to the worker: one connection at a time and the state it is
 * in. It opens connections through the reconnect loop, applies what the
 * worker announces (`welcome`, `status`), keeps the heartbeat, routes each
 * frame, and when the connection is lost decides between polling for a
 * reloading worker and backing off.
 *
 * The states and their transitions are documented in `state.ts`; what
 * each transition does to generations is {@link Generations}' part.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";
import type { Clock } from "../util/clock.ts";
import { backoffDelayMs } from "./backoff.ts";
import { WorkerConnection, WorkerConnectionError } from "./connection.ts";
import { connectionLost } from "./generation_errors.ts";
import type { Generations } from "./generations.ts";
import { Heartbeat } from "./heartbeat.ts";
import { reloadingState } from "./holds.ts";
import type { StatusMsg, WorkerMessage } from "./messages.ts";
import type { LinkOptions } from "./options.ts";
import { Reconnector } from "./reconnect.ts";
import { transitionLog, type WorkerInfo, type WorkerState } from "./state.ts";

// While a reload is in progress and the worker's socket is gone, the new
// process is polled this often, so held requests resume promptly.
const RELOAD_POLL_MS = 250;

/** One worker connection at a time, and the state it is in. */
export class WorkerLink {
  #o: LinkOptions;
  #log: Logger;
  #clock: Clock;
  #gens: Generations;
  #state: WorkerState;
  #conn: WorkerConnection | null = null;
  #listeners: ((s: WorkerState) => void)[] = [];
  #heartbeat: Heartbeat | null = null;
  #reconnect: Reconnector;
  /** The number of the attempt under way (0 for the first after a loss). */
  #attempt = 0;

  constructor(
    options: LinkOptions & { clock: Clock; logger: Logger },
    gens: Generations,
  ) {
    this.#o = options;
    this.#log = options.logger;
    this.#clock = options.clock;
    this.#gens = gens;
    this.#state = { state: "connecting", since: this.#clock.now(), attempt: 0 };
    this.#reconnect = new Reconnector({
      clock: this.#clock,
      open: (abandoned) =>
        (options.connect ?? WorkerConnection.open)({
          socketPath: options.socketPath,
          maxFrameBytes: options.maxFrameBytes,
          heartbeatIntervalMs: options.checkIntervalMs,
          handshakeTimeoutMs: options.handshakeTimeoutMs,
          agent: options.agent,
          clock: this.#clock,
          abandoned,
        }),
      due: () => this.#due(),
      connected: (conn) => this.#connected(conn),
      failed: (err) => this.#failed(err),
      waiting: (pending) =>
        this.#log.debug(
          "worker connect waits until an abandoned handshake socket closes",
          { pending },
        ),
    });
  }

  /** The current state. */
  get state(): WorkerState {
    return this.#state;
  }

  /** The open connection, or null while there is none. */
  get conn(): WorkerConnection | null {
    return this.#conn;
  }

  /** Calls `listener` on every state change (and on {@link notify}). */
  onStateChange(listener: (s: WorkerState) => void): void {
    this.#listeners.push(listener);
  }

  /** Tells the listeners the state again: something they derive changed. */
  notify(): void {
    for (const l of this.#listeners) l(this.#state);
  }

  /** Makes the first connection attempt. */
  start(): void {
    this.#reconnect.now();
  }

  /**
   * Enters `stopped` and makes no further attempt. Returns the connection
   * it had, detached: nothing the worker sends is routed from here on, and
   * closing it is the caller's.
   */
  stop(): WorkerConnection | null {
    const conn = this.#conn;
    this.#conn = null;
    this.#heartbeat?.stop();
    this.#heartbeat = null;
    this.#reconnect.stop();
    this.#setState({ state: "stopped", since: this.#clock.now() });
    return conn;
  }

  /** Gives up on a reload that overran its hold with no worker there. */
  checkReload(now: number): void {
    const s = this.#state;
    if (s.state === "reloading" && this.#conn === null && now >= s.holdUntil) {
      this.#disconnected(
        new WorkerConnectionError(
          "eof",
          "worker did not come back from its reload in time",
        ),
        1,
      );
    }
  }

  /** An attempt is due: enters `connecting`, unless there is nothing to do. */
  #due(): boolean {
    const prev = this.#state;
    // A retry left scheduled while another attempt succeeded has nothing to do.
    if (prev.state === "stopped" || this.#conn !== null) return false;
    this.#attempt = prev.state === "disconnected" ? prev.attempt : 0;
    if (prev.state !== "reloading") {
      this.#setState({
        state: "connecting",
        since: this.#clock.now(),
        attempt: this.#attempt,
      });
    }
    return true;
  }

  #failed(e: WorkerConnectionError): void {
    this.#o.onConnectionError?.(e.kind);
    // A socket nobody listens on is the normal sight while the worker
    // restarts; a worker that accepts and then fails the handshake is not.
    const level = e.kind === "refused" ? "debug" : "warn";
    this.#log[level]("worker connect failed", {
      error: e.message,
      kind: e.kind,
      attempt: this.#attempt,
    });
    this.#disconnected(e, this.#attempt + 1);
  }

  #connected(conn: WorkerConnection): void {
    this.#conn = conn;
    const w = conn.welcome;
    this.#log.info("worker connected", {
      model_id: w.model_id,
      max_concurrency: w.max_concurrency,
      protocol_version: w.version,
      worker: w.worker,
      worker_state: w.state,
    });
    this.#heartbeat = new Heartbeat(conn, {
      clock: this.#clock,
      intervalMs: this.#o.checkIntervalMs,
      timeoutMs: this.#o.heartbeatTimeoutMs,
    });

    // The welcome's state first: frames that came with it are read next.
    const info = {
      modelId: w.model_id,
      maxConcurrency: w.max_concurrency,
      protocolVersion: w.version,
      worker: w.worker,
    };
    this.#enter(w.state, info, w.eta_ms);
    conn.start(
      (msg) => this.#onMessage(conn, msg),
      (err) => this.#onClose(conn, err),
    );
  }

  #onMessage(conn: WorkerConnection, msg: WorkerMessage): void {
    // A connection being closed (at shutdown, while its last frames are
    // written) may still deliver what it had read: nothing routes it.
    if (conn !== this.#conn) return;
    switch (msg.type) {
      case "chunk":
        return this.#gens.onChunk(conn, msg);
      case "chunks":
        if (conn.welcome.version < 2) {
          return conn.close(
            new WorkerConnectionError(
              "protocol",
              `"chunks" on protocol version ${conn.welcome.version}`,
            ),
          );
        }
        for (const item of msg.items) {
          // A chunk can close the connection (a protocol error): the rest
          // of the frame is then dropped, as later frames would be.
          if (conn.closed) return;
          this.#gens.onChunk(conn, item);
        }
        return;
      case "done":
        return this.#gens.onEnd(conn, msg.id, msg);
      case "error":
        if (msg.id !== undefined) return this.#gens.onEnd(conn, msg.id, msg);
        // The worker found the problem and is closing: no `error` back.
        return conn.close(
          new WorkerConnectionError(
            "protocol",
            `worker reported ${msg.code}: ${msg.message}`,
            { notifyWorker: false },
          ),
        );
      case "pong":
        return this.#heartbeat?.pong(msg.seq);
      case "status":
        return this.#onStatus(msg);
      case "welcome":
        return conn.close(
          new WorkerConnectionError("protocol", "unexpected second welcome"),
        );
    }
  }

  #onStatus(msg: StatusMsg): void {
    const s = this.#state;
    if (!("info" in s)) return;
    const info: WorkerInfo = {
      ...s.info,
      modelId: msg.model_id ?? s.info.modelId,
      maxConcurrency: msg.max_concurrency ?? s.info.maxConcurrency,
    };
    this.#enter(msg.state, info, msg.eta_ms, msg.message);
  }

  /** Moves to the state the worker announced. */
  #enter(
    announced: "ready" | "reloading" | "draining",
    info: WorkerInfo,
    etaMs = 0,
    message = "",
  ): void {
    const now = this.#clock.now();
    const next: WorkerState = announced === "reloading"
      ? reloadingState({ now, info, etaMs, message }, this.#o)
      : { state: announced, since: now, info };
    this.#setState(next);
    this.#gens.follow(next);
  }

  #onClose(conn: WorkerConnection, err: WorkerConnectionError): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    // Late frames can only come on the connection that is gone.
    this.#gens.forgotten.clear();
    this.#heartbeat?.stop();
    this.#heartbeat = null;
    if (this.#state.state === "stopped") return;

    if (err.kind !== "local") this.#o.onConnectionError?.(err.kind);
    this.#log.warn("worker connection lost", {
      kind: err.kind,
      error: err.message,
      in_flight: this.#gens.active.size,
    });
    this.#gens.endActive(() => connectionLost(err, this.#o.reconnectDelayMs));
    this.#disconnected(err, 1);
  }

  #disconnected(err: WorkerConnectionError, attempt: number): void {
    const s = this.#state;
    const now = this.#clock.now();
    if (s.state === "reloading" && now < s.holdUntil) {
      // The worker is restarting to load a model: poll for the new process
      // instead of backing off, and keep holding.
      this.#reconnect.retryIn(RELOAD_POLL_MS);
      return;
    }

    const delay = backoffDelayMs(attempt, {
      baseDelayMs: this.#o.reconnectDelayMs,
      maxDelayMs: this.#o.reconnectMaxDelayMs,
    });
    const next: WorkerState = {
      state: "disconnected",
      since: now,
      attempt,
      retryAt: now + delay,
      lastError: err.message,
    };
    this.#setState(next);
    this.#gens.follow(next);
    this.#reconnect.retryIn(delay);
  }

  #setState(next: WorkerState): void {
    const prev = this.#state;
    this.#state = next;
    const log = transitionLog(prev, next);
    if (log) this.#log[log.level]("worker state changed", log.fields);
    this.notify();
  }
}
