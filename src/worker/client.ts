/**
 * The sidecar's side of the worker protocol: keeps one connection to the
 * worker, reconnects with backoff, sends heartbeats, admits generations up to
 * the worker's concurrency limit (with a bounded wait), holds them during a
 * reload, and routes each frame to its generation.
 *
 * States and transitions are described in `state.ts`.
 *
 * @module
 */

import { retryHint, SidecarError } from "../errors.ts";
import type { Logger } from "../log/logger.ts";
import { silentLogger } from "../log/logger.ts";
import { type Clock, realClock, type TimerId } from "../util/clock.ts";
import { backoffDelayMs } from "./backoff.ts";
import {
  type CloseKind,
  type ConnectOptions,
  FrameTooLargeError,
  WorkerConnection,
  WorkerConnectionError,
} from "./connection.ts";
import {
  Exchange,
  type GenerationHandle,
  type GenerationRequest,
  type GenerationSink,
} from "./exchange.ts";
import type {
  CancelReason,
  StatusMsg,
  WelcomeMsg,
  WorkerMessage,
} from "./messages.ts";
import type { WorkerInfo, WorkerState } from "./state.ts";

/** Options of {@link WorkerClient}. */
export interface WorkerClientOptions {
  socketPath: string;
  maxFrameBytes: number;
  handshakeTimeoutMs: number;
  /** A ping goes out this often. */
  checkIntervalMs: number;
  /** A ping not answered within this is a hung worker. */
  heartbeatTimeoutMs: number;
  reconnectDelayMs: number;
  reconnectMaxDelayMs: number;
  /** A generation with credit and no frame for this long fails. */
  requestIdleTimeoutMs: number;
  /** Per-generation flow-control window, in chunks. */
  streamCreditChunks: number;
  /** Generations that may wait for a slot (0: fail at once). */
  maxQueuedRequests: number;
  queueTimeoutMs: number;
  /** Held requests wait at most the reload ETA plus this. */
  reloadGraceMs: number;
  /**
   * Cap on holding one request during a reload, counted from when it was
   * first held; a worker announcing new ETAs cannot move it.
   */
  maxHoldMs: number;
  maxHeldRequests: number;
  /** Announced in the handshake. */
  agent: string;
  logger?: Logger;
  clock?: Clock;
  /** Called for every connection failure, with a fixed-set kind. */
  onConnectionError?: (kind: CloseKind) => void;
  /** Overrides how connections are made (tests). */
  connect?: (options: ConnectOptions) => Promise<WorkerConnection>;
}

/** Result of {@link WorkerClient.submit}. */
export type SubmitResult =
  | { ok: true; handle: GenerationHandle }
  | { ok: false; error: SidecarError };

// How often deadlines of waiting and idle generations are checked: a bound
// on how late a queue timeout or idle timeout can fire, at the cost of one
// pass over the in-flight map per tick.
const SWEEP_INTERVAL_MS = 250;

// While a reload is in progress and the worker's socket is gone, the new
// process is polled this often, so held requests resume promptly.
const RELOAD_POLL_MS = 250;

// Ids of generations given up on while cancelling; a late frame for one of
// these is dropped rather than treated as a protocol error. The bound keeps
// a worker that never ends its cancelled generations from growing the set;
// a frame for an id older than the last 1024 is a protocol error again.
const FORGOTTEN_IDS_KEPT = 1024;

// Pushback for requests refused or failed because the sidecar is shutting
// down: the gateway should go to another instance, which it can do at once;
// one second lets its endpoint list drop this pod first.
const SHUTDOWN_RETRY_MS = 1000;

// At shutdown, the `cancel` frames for what is still running get this long
// to reach the worker before the connection is closed.
const STOP_FLUSH_MS = 500;

/** Connects to the worker and carries generations to it. */
export class WorkerClient {
  #o: WorkerClientOptions;
  #log: Logger;
  #clock: Clock;
  #state: WorkerState;
  #conn: WorkerConnection | null = null;
  #active = new Map<string, Exchange>();
  #waiting: Exchange[] = [];
  #forgotten = new Set<string>();
  #listeners: ((s: WorkerState) => void)[] = [];
  #retryTimer: TimerId | null = null;
  #sweepTimer: TimerId | null = null;
  #pingTimer: TimerId | null = null;
  #pongTimer: TimerId | null = null;
  #pingSeq = 0;
  #draining = false;

  constructor(options: WorkerClientOptions) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    this.#clock = options.clock ?? realClock;
    this.#state = { state: "connecting", since: this.#clock.now(), attempt: 0 };
  }

  /** The current state. */
  get state(): WorkerState {
    return this.#state;
  }

  /** Generations sent to the worker and not yet finished (slots in use). */
  get inFlight(): number {
    return this.#active.size;
  }

  /** Generations waiting for a slot or held during a reload. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** True while new generations are taken: the worker is ready and the sidecar is not shutting down. */
  get accepting(): boolean {
    return this.#state.state === "ready" && !this.#draining;
  }

  /**
   * Refuses new generations from now on (shutdown); those in flight go on.
   * Listeners are told, so health checks turn NOT_SERVING at once.
   */
  refuseNew(): void {
    this.#draining = true;
    for (const l of this.#listeners) l(this.#state);
  }

  /** Calls `listener` on every state change. */
  onStateChange(listener: (s: WorkerState) => void): void {
    this.#listeners.push(listener);
  }

  /** Starts connecting and the periodic checks. */
  start(): void {
    this.#scheduleSweep();
    void this.#connect();
  }

  /**
   * Admits a generation: sends it now, queues it for a slot, holds it
   * during a reload, or refuses it at once with the reason.
   */
  submit(request: GenerationRequest, sink: GenerationSink): SubmitResult {
    const refusal = this.#refusal(request);
    if (refusal) return { ok: false, error: refusal };

    const ex = new Exchange(request, sink);
    const s = this.#state;
    if (s.state === "ready" && this.#active.size < s.info.maxConcurrency) {
      this.#dispatch(ex);
    } else if (s.state === "reloading") {
      this.#waiting.push(ex);
      this.#announceHold(ex, s);
      ex.waitUntil = this.#holdDeadline(ex, s);
    } else {
      ex.waitUntil = this.#clock.now() + this.#o.queueTimeoutMs;
      this.#waiting.push(ex);
    }
    return { ok: true, handle: this.#handle(ex) };
  }

  /**
   * Fails everything still running or waiting (UNAVAILABLE with a retry
   * hint), tells the worker to cancel what it was running, and stops the
   * timers. The connection closes once those `cancel` frames are written,
   * after at most 500 ms; the promise resolves then.
   */
  async stop(): Promise<void> {
    this.#draining = true;
    const conn = this.#conn;
    // From here on, nothing the worker sends is routed anywhere.
    this.#conn = null;
    const err = () =>
      new SidecarError(
        "shutting_down",
        "sidecar is shutting down; retry on another instance",
        { retryAfterMs: SHUTDOWN_RETRY_MS },
      );
    for (const ex of [...this.#active.values()]) {
      if (ex.phase === "active") {
        conn?.send({
          type: "cancel",
          id: ex.request.id,
          reason: "shutdown",
        });
        this.#end(ex);
        ex.sink.fail(err());
      }
    }
    this.#active.clear();
    for (const ex of this.#waiting.splice(0)) {
      ex.phase = "ended";
      ex.sink.fail(err());
    }
    for (
      const t of [
        this.#retryTimer,
        this.#sweepTimer,
        this.#pingTimer,
        this.#pongTimer,
      ]
    ) {
      if (t !== null) this.#clock.clearTimeout(t);
    }
    this.#setState({ state: "stopped", since: this.#clock.now() });
    await conn?.closeAfterFlush(STOP_FLUSH_MS);
  }

  // ---- admission ----

  #refusal(request: GenerationRequest): SidecarError | null {
    if (this.#draining || this.#state.state === "stopped") {
      return new SidecarError(
        "shutting_down",
        "sidecar is shutting down; retry on another instance",
        { retryAfterMs: SHUTDOWN_RETRY_MS },
      );
    }
    if (
      this.#active.has(request.id) ||
      this.#waiting.some((w) => w.request.id === request.id)
    ) {
      return new SidecarError(
        "duplicate_request",
        `request_id ${JSON.stringify(request.id)} is already in flight`,
      );
    }
    if (this.#forgotten.has(request.id)) {
      // The worker never ended the cancelled generation of that id; a new
      // generate with it would be a duplicate id on the worker's side.
      return new SidecarError(
        "duplicate_request",
        `request_id ${
          JSON.stringify(request.id)
        } was cancelled and the worker has not ended it yet`,
      );
    }

    const s = this.#state;
    const now = this.#clock.now();
    switch (s.state) {
      case "ready":
        if (this.#active.size < s.info.maxConcurrency) return null;
        if (this.#waiting.length < this.#o.maxQueuedRequests) return null;
        return new SidecarError(
          "worker_overloaded",
          `worker is at its limit of ${s.info.maxConcurrency} generations and ${this.#o.maxQueuedRequests} are waiting; ${
            retryHint(1000)
          }`,
          { retryAfterMs: 1000 },
        );
      case "reloading": {
        const left = s.holdUntil - now;
        if (left <= 0) {
          return new SidecarError(
            "worker_unavailable",
            `Worker is reloading and overran its ETA, please ${
              retryHint(this.#o.reloadGraceMs)
            }`,
            { retryAfterMs: this.#o.reloadGraceMs },
          );
        }
        if (this.#waiting.length >= this.#o.maxHeldRequests) {
          return new SidecarError(
            "worker_unavailable",
            `Worker is reloading and ${this.#o.maxHeldRequests} requests are already held, please ${
              retryHint(left)
            }`,
            { retryAfterMs: left },
          );
        }
        return null;
      }
      case "draining":
        return new SidecarError(
          "worker_unavailable",
          `Worker is shutting down, please ${
            retryHint(this.#o.reconnectDelayMs)
          }`,
          { retryAfterMs: this.#o.reconnectDelayMs },
        );
      case "connecting":
      case "disconnected": {
        const retryAt = s.state === "disconnected" ? s.retryAt : now;
        const wait = Math.max(retryAt - now, 0) +
          this.#o.handshakeTimeoutMs / 5;
        return new SidecarError(
          "worker_unavailable",
          `Worker is restarting, please ${retryHint(wait)}`,
          {
            retryAfterMs: Math.ceil(wait),
          },
        );
      }
    }
    return null;
  }

  #dispatch(ex: Exchange): void {
    const s = this.#state;
    if (s.state !== "ready" || !this.#conn) {
      throw new Error("dispatch while not ready");
    }
    const req = ex.request;
    if (req.modelId !== "" && req.modelId !== s.info.modelId) {
      ex.phase = "ended";
      ex.sink.fail(
        new SidecarError(
          "model_mismatch",
          `model_id ${
            JSON.stringify(req.modelId)
          } is not served here; the worker serves ${
            JSON.stringify(s.info.modelId)
          }`,
        ),
      );
      return;
    }

    try {
      this.#conn.send({
        type: "generate",
        id: req.id,
        session_id: req.sessionId,
        model_id: req.modelId,
        ...(req.messages !== undefined
          ? { messages: req.messages }
          : { prompt: req.prompt ?? "" }),
        sampling: req.sampling,
        credit: this.#o.streamCreditChunks,
      });
    } catch (err) {
      if (!(err instanceof FrameTooLargeError)) throw err;
      ex.phase = "ended";
      ex.sink.fail(tooLargeForWorker(req, err));
      return;
    }

    ex.phase = "active";
    ex.credit = this.#o.streamCreditChunks;
    ex.lastActivity = this.#clock.now();
    this.#active.set(req.id, ex);
    if (ex.held) {
      ex.sink.system(
        "resumed",
        `[System] Model ${s.info.modelId} is ready, resuming.`,
        0,
      );
    }
  }

  /** Sends waiting generations while slots are free. */
  #pump(): void {
    const s = this.#state;
    if (s.state !== "ready") return;
    while (
      this.#waiting.length > 0 && this.#active.size < s.info.maxConcurrency
    ) {
      this.#dispatch(this.#waiting.shift()!);
    }
  }

  #announceHold(
    ex: Exchange,
    s: Extract<WorkerState, { state: "reloading" }>,
  ): void {
    if (ex.held) return;
    ex.held = true;
    ex.heldSince = this.#clock.now();
    const eta = Math.max(0, s.etaMs - (this.#clock.now() - s.since));
    ex.sink.system(
      "reloading",
      `[System] Loading new model, ETA ${Math.ceil(eta / 1000)}s...`,
      Math.round(eta),
    );
  }

  /**
   * When a held request gives up: the reload's ETA plus grace, as last
   * announced, but never later than max_hold after the request was held.
   */
  #holdDeadline(
    ex: Exchange,
    s: Extract<WorkerState, { state: "reloading" }>,
  ): number {
    return Math.min(s.holdUntil, ex.heldSince + this.#o.maxHoldMs);
  }

  #handle(ex: Exchange): GenerationHandle {
    return {
      grant: (chunks) => {
        if (ex.phase !== "active") return;
        ex.pendingGrant += chunks;
        // Batch credit: one frame per half window keeps the worker busy
        // without a frame per token.
        if (
          ex.pendingGrant * 2 >= this.#o.streamCreditChunks || ex.credit === 0
        ) {
          ex.credit += ex.pendingGrant;
          this.#conn?.send({
            type: "credit",
            id: ex.request.id,
            chunks: ex.pendingGrant,
          });
          ex.pendingGrant = 0;
        }
      },
      cancel: (reason) => this.#cancel(ex, reason),
    };
  }

  #cancel(ex: Exchange, reason: CancelReason): void {
    if (ex.phase === "waiting") {
      ex.phase = "ended";
      this.#waiting = this.#waiting.filter((w) => w !== ex);
      return;
    }
    if (ex.phase !== "active") return;
    ex.phase = "cancelling";
    ex.lastActivity = this.#clock.now();
    this.#conn?.send({ type: "cancel", id: ex.request.id, reason });
  }

  #end(ex: Exchange): void {
    ex.phase = "ended";
    this.#active.delete(ex.request.id);
  }

  // ---- frames from the worker ----

  #onMessage(conn: WorkerConnection, msg: WorkerMessage): void {
    // A connection being closed (at shutdown, while its last frames are
    // written) may still deliver what it had read: nothing routes it.
    if (conn !== this.#conn) return;
    switch (msg.type) {
      case "chunk": {
        const ex = this.#exchangeFor(conn, msg.id);
        if (!ex || ex.phase !== "active") return;
        ex.lastActivity = this.#clock.now();
        if (ex.credit === 0) {
          this.#cancel(ex, "protocol");
          ex.sink.fail(
            new SidecarError(
              "worker_protocol",
              "worker sent a chunk without flow-control credit",
            ),
          );
          return;
        }
        ex.credit--;
        ex.sink.chunk(msg.text, msg.token_ids, msg.prompt_tokens);
        return;
      }
      case "done":
      case "error": {
        if (msg.type === "error" && msg.id === undefined) {
          // The worker found the problem and is closing: no `error` back.
          conn.close(
            new WorkerConnectionError(
              "protocol",
              `worker reported ${msg.code}: ${msg.message}`,
              { notifyWorker: false },
            ),
          );
          return;
        }
        const ex = this.#exchangeFor(conn, msg.id!);
        if (!ex) {
          // The worker ended a generation whose slot was freed already:
          // its id may be used again.
          this.#forgotten.delete(msg.id!);
          return;
        }
        const wasActive = ex.phase === "active";
        this.#end(ex);
        if (wasActive) {
          if (msg.type === "done") {
            ex.sink.done({
              finishReason: msg.finish_reason,
              usage: msg.usage,
              modelId: this.#modelId(),
            });
          } else {
            ex.sink.fail(
              msg.code === "overloaded"
                ? new SidecarError("worker_overloaded", msg.message, {
                  retryAfterMs: 1000,
                })
                : new SidecarError("worker_error", msg.message, {
                  workerCode: msg.code,
                }),
            );
          }
        }
        this.#pump();
        return;
      }
      case "pong":
        if (msg.seq === this.#pingSeq && this.#pongTimer !== null) {
          this.#clock.clearTimeout(this.#pongTimer);
          this.#pongTimer = null;
        }
        return;
      case "status":
        this.#onStatus(msg);
        return;
      case "welcome":
        conn.close(
          new WorkerConnectionError("protocol", "unexpected second welcome"),
        );
        return;
    }
  }

  /** The generation a frame names; an unknown id is a protocol error. */
  #exchangeFor(conn: WorkerConnection, id: string): Exchange | undefined {
    const ex = this.#active.get(id);
    if (ex) return ex;
    if (this.#forgotten.has(id)) return undefined;
    conn.close(
      new WorkerConnectionError(
        "protocol",
        `worker sent a frame for ${JSON.stringify(id)}, which is not in flight`,
      ),
    );
    return undefined;
  }

  #onStatus(msg: StatusMsg): void {
    const s = this.#state;
    if (
      s.state !== "ready" && s.state !== "reloading" && s.state !== "draining"
    ) return;
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
    if (announced === "ready") {
      this.#setState({ state: "ready", since: now, info });
      this.#pump();
      return;
    }
    if (announced === "draining") {
      this.#setState({ state: "draining", since: now, info });
      this.#failWaiting(
        () =>
          new SidecarError(
            "worker_unavailable",
            `Worker is shutting down, please ${
              retryHint(this.#o.reconnectDelayMs)
            }`,
            {
              retryAfterMs: this.#o.reconnectDelayMs,
            },
          ),
      );
      return;
    }
    const holdMs = Math.min(etaMs + this.#o.reloadGraceMs, this.#o.maxHoldMs);
    const next: WorkerState = {
      state: "reloading",
      since: now,
      info,
      etaMs,
      holdUntil: now + holdMs,
      connected: this.#conn !== null,
      message,
    };
    this.#setState(next);
    for (const ex of this.#waiting) {
      this.#announceHold(ex, next);
      ex.waitUntil = this.#holdDeadline(ex, next);
    }
  }

  // ---- connection lifecycle ----

  async #connect(): Promise<void> {
    this.#retryTimer = null;
    const prev = this.#state;
    if (prev.state === "stopped") return;
    const attempt = prev.state === "disconnected" ? prev.attempt : 0;
    if (prev.state !== "reloading") {
      this.#setState({
        state: "connecting",
        since: this.#clock.now(),
        attempt,
      });
    }

    let conn: WorkerConnection;
    try {
      conn = await (this.#o.connect ?? WorkerConnection.open)({
        socketPath: this.#o.socketPath,
        maxFrameBytes: this.#o.maxFrameBytes,
        heartbeatIntervalMs: this.#o.checkIntervalMs,
        handshakeTimeoutMs: this.#o.handshakeTimeoutMs,
        agent: this.#o.agent,
        clock: this.#clock,
      });
    } catch (err) {
      if (this.#state.state === "stopped") return;
      const e = err instanceof WorkerConnectionError
        ? err
        : new WorkerConnectionError(
          "io",
          String((err as Error)?.message ?? err),
        );
      this.#o.onConnectionError?.(e.kind);
      // A socket nobody listens on is the normal sight while the worker
      // restarts; a worker that accepts and then fails the handshake is not.
      const level = e.kind === "refused" ? "debug" : "warn";
      this.#log[level]("worker connect failed", {
        error: e.message,
        kind: e.kind,
        attempt,
      });
      this.#disconnected(e, attempt + 1);
      return;
    }
    if (this.#state.state === "stopped") {
      conn.close();
      return;
    }

    this.#conn = conn;
    const w: WelcomeMsg = conn.welcome;
    this.#log.info("worker connected", {
      model_id: w.model_id,
      max_concurrency: w.max_concurrency,
      protocol_version: w.version,
      worker: w.worker,
      worker_state: w.state,
    });
    conn.start(
      (msg) => this.#onMessage(conn, msg),
      (err) => this.#onClose(conn, err),
    );
    this.#schedulePing();
    this.#enter(
      w.state,
      {
        modelId: w.model_id,
        maxConcurrency: w.max_concurrency,
        protocolVersion: w.version,
        worker: w.worker,
      },
      w.eta_ms,
    );
  }

  #onClose(conn: WorkerConnection, err: WorkerConnectionError): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    // Late frames can only come on the connection that is gone.
    this.#forgotten.clear();
    if (this.#pongTimer !== null) this.#clock.clearTimeout(this.#pongTimer);
    if (this.#pingTimer !== null) this.#clock.clearTimeout(this.#pingTimer);
    this.#pongTimer = this.#pingTimer = null;
    if (this.#state.state === "stopped") return;

    if (err.kind !== "local") this.#o.onConnectionError?.(err.kind);
    this.#log.warn("worker connection lost", {
      kind: err.kind,
      error: err.message,
      in_flight: this.#active.size,
    });

    const retryAfterMs = this.#o.reconnectDelayMs;
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
    for (const ex of [...this.#active.values()]) {
      const wasActive = ex.phase === "active";
      this.#end(ex);
      if (wasActive) {
        ex.sink.fail(new SidecarError(kind, what, { retryAfterMs }));
      }
    }

    this.#disconnected(err, 1);
  }

  #disconnected(err: WorkerConnectionError, attempt: number): void {
    const s = this.#state;
    const now = this.#clock.now();
    if (s.state === "reloading" && now < s.holdUntil) {
      // The worker is restarting to load a model: poll for the new process
      // instead of backing off, and keep holding.
      if (s.connected) this.#setState({ ...s, connected: false });
      this.#retryTimer = this.#clock.setTimeout(
        () => void this.#connect(),
        RELOAD_POLL_MS,
      );
      return;
    }

    const delay = backoffDelayMs(attempt, {
      baseDelayMs: this.#o.reconnectDelayMs,
      maxDelayMs: this.#o.reconnectMaxDelayMs,
    });
    this.#setState({
      state: "disconnected",
      since: now,
      attempt,
      retryAt: now + delay,
      lastError: err.message,
    });
    this.#failWaiting(() =>
      new SidecarError(
        "worker_unavailable",
        `Worker is restarting, please ${retryHint(delay)}`,
        {
          retryAfterMs: delay,
        },
      )
    );
    this.#retryTimer = this.#clock.setTimeout(
      () => void this.#connect(),
      delay,
    );
  }

  #failWaiting(error: () => SidecarError): void {
    for (const ex of this.#waiting.splice(0)) {
      ex.phase = "ended";
      ex.sink.fail(error());
    }
  }

  #setState(next: WorkerState): void {
    const prev = this.#state;
    this.#state = next;
    if (prev.state !== next.state) {
      // Reconnect attempts flip through "connecting" every few seconds
      // while the worker is down; only the lasting states are news.
      const quiet = prev.state === "connecting" || next.state === "connecting";
      this.#log[quiet ? "debug" : "info"]("worker state changed", {
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
      });
    }
    for (const l of this.#listeners) l(next);
  }

  #modelId(): string {
    const s = this.#state;
    return "info" in s ? s.info.modelId : "";
  }

  // ---- timers ----

  #schedulePing(): void {
    this.#pingTimer = this.#clock.setTimeout(() => {
      this.#pingTimer = null;
      const conn = this.#conn;
      if (!conn) return;
      // While a ping is unanswered its own timer decides. A second ping
      // would replace that timer without clearing it, and the orphaned
      // timer would close the connection even after its pong arrived (when
      // heartbeat_timeout_secs exceeds check_interval_secs).
      if (this.#pongTimer === null) {
        const seq = ++this.#pingSeq;
        conn.send({ type: "ping", seq });
        this.#pongTimer = this.#clock.setTimeout(() => {
          this.#pongTimer = null;
          conn.close(
            new WorkerConnectionError(
              "heartbeat",
              `worker did not answer ping ${seq} within ${this.#o.heartbeatTimeoutMs} ms`,
            ),
          );
        }, this.#o.heartbeatTimeoutMs);
      }
      this.#schedulePing();
    }, this.#o.checkIntervalMs);
  }

  #scheduleSweep(): void {
    this.#sweepTimer = this.#clock.setTimeout(() => {
      this.#sweep();
      this.#scheduleSweep();
    }, SWEEP_INTERVAL_MS);
  }

  /** Fails waits that ran out and generations the worker stopped answering. */
  #sweep(): void {
    const now = this.#clock.now();
    const s = this.#state;

    if (
      this.#waiting.length > 0 &&
      this.#waiting.some((ex) => ex.waitUntil <= now)
    ) {
      const [expired, kept] = partition(
        this.#waiting,
        (ex) => ex.waitUntil <= now,
      );
      this.#waiting = kept;
      for (const ex of expired) {
        ex.phase = "ended";
        ex.sink.fail(
          ex.held ? this.#holdOver(ex) : new SidecarError(
            "worker_overloaded",
            `no worker slot became free within ${this.#o.queueTimeoutMs} ms, please ${
              retryHint(1000)
            }`,
            {
              retryAfterMs: 1000,
            },
          ),
        );
      }
    }
    if (s.state === "reloading" && !s.connected && now >= s.holdUntil) {
      // The reload overran its hold and no worker is there: the worker is down.
      if (this.#retryTimer !== null) this.#clock.clearTimeout(this.#retryTimer);
      this.#disconnected(
        new WorkerConnectionError(
          "eof",
          "worker did not come back from its reload in time",
        ),
        1,
      );
    }

    const idle = this.#o.requestIdleTimeoutMs;
    for (const ex of this.#active.values()) {
      if (now - ex.lastActivity < idle) continue;
      if (ex.phase === "cancelling") {
        this.#log.warn(
          "worker never ended a cancelled generation; slot freed",
          { request_id: ex.request.id },
        );
        this.#end(ex);
        this.#forget(ex.request.id);
      } else if (ex.phase === "active" && ex.credit > 0) {
        this.#cancel(ex, "idle_timeout");
        ex.sink.fail(
          new SidecarError(
            "worker_hung",
            `worker sent nothing for request ${
              JSON.stringify(ex.request.id)
            } in ${idle} ms`,
            {
              retryAfterMs: 1000,
            },
          ),
        );
      }
    }
    this.#pump();
  }

  /** The failure of a held request whose hold ran out. */
  #holdOver(ex: Exchange): SidecarError {
    const retryAfterMs = this.#o.reloadGraceMs;
    const capped = ex.waitUntil >= ex.heldSince + this.#o.maxHoldMs;
    return new SidecarError(
      "worker_unavailable",
      capped
        ? `Worker is still reloading after holding this request for ${
          Math.round(this.#o.maxHoldMs / 1000)
        }s (health.max_hold_secs), please ${retryHint(retryAfterMs)}`
        : `Worker reload is taking longer than announced, please ${
          retryHint(retryAfterMs)
        }`,
      { retryAfterMs },
    );
  }

  #forget(id: string): void {
    this.#forgotten.add(id);
    if (this.#forgotten.size > FORGOTTEN_IDS_KEPT) {
      this.#forgotten.delete(this.#forgotten.values().next().value!);
    }
  }
}

function partition<T>(items: T[], pred: (t: T) => boolean): [T[], T[]] {
  const yes: T[] = [];
  const no: T[] = [];
  for (const t of items) (pred(t) ? yes : no).push(t);
  return [yes, no];
}

/** INVALID_ARGUMENT for a request whose generate frame the worker cannot take. */
function tooLargeForWorker(
  req: GenerationRequest,
  err: FrameTooLargeError,
): SidecarError {
  const bytes = (v: unknown) =>
    new TextEncoder().encode(JSON.stringify(v)).length;
  // Name the member that makes the frame large: almost always the text.
  const [field, size] = req.messages !== undefined
    ? ["messages", bytes(req.messages)]
    : ["prompt", new TextEncoder().encode(req.prompt ?? "").length];
  const stop = req.sampling.stop ? bytes(req.sampling.stop) : 0;
  const [name, fieldBytes] = stop > size
    ? ["sampling.stop", stop]
    : [field, size];
  return new SidecarError(
    "invalid_request",
    `${name}: ${fieldBytes} bytes is too large for the worker: the generate frame would be ${err.frameBytes} bytes, over the worker's max_frame_bytes of ${err.maxFrameBytes}`,
  );
}
