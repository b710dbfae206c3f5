/**
 * The generations a worker client carries: sends each to the worker while
 * slots are free, queues or holds the rest, passes flow-control credit,
 * routes the worker's frames for a generation to its sink, and ends it.
 *
 * The connection and the worker's state belong to the client (a
 * {@link Link}); this only reads them. A frame that breaks the protocol
 * closes the connection, and the client's close handling fails the rest.
 *
 * @module
 */

import type { SidecarError } from "../errors.ts";
import type { Clock } from "../util/clock.ts";
import {
  FrameTooLargeError,
  type WorkerConnection,
  WorkerConnectionError,
} from "./connection.ts";
import {
  Exchange,
  type GenerationHandle,
  type GenerationRequest,
  type GenerationSink,
} from "./exchange.ts";
import { ForgottenIds } from "./forgotten_ids.ts";
import {
  chunkWithoutCredit,
  modelMismatch,
  tooLargeForWorker,
  workerDraining,
  workerFailed,
  workerRestarting,
} from "./generation_errors.ts";
import { hold, type HoldLimits } from "./holds.ts";
import type { CancelReason, ChunkItem, DoneMsg, ErrorMsg } from "./messages.ts";
import type { WorkerState } from "./state.ts";

/** What {@link Generations} reads of the client that owns it. */
export interface Link {
  /** The worker's state now. */
  state(): WorkerState;
  /** The open connection, or null while there is none. */
  conn(): WorkerConnection | null;
}

/** Options of {@link Generations}. */
export interface GenerationsOptions extends HoldLimits {
  clock: Clock;
  /** Per-generation flow-control window, in chunks. */
  streamCreditChunks: number;
  /** How long a generation may wait for a slot, in milliseconds. */
  queueTimeoutMs: number;
  /** The pushback while the worker announces it is draining, in milliseconds. */
  reconnectDelayMs: number;
}

/** The generation table of one client. */
export class Generations {
  /** Sent to the worker and not yet ended (slots in use), by id. */
  readonly active = new Map<string, Exchange>();
  /** Waiting for a slot or held during a reload, oldest first. */
  waiting: Exchange[] = [];
  /** Ids given up on while the worker had not ended them. */
  readonly forgotten = new ForgottenIds();
  #link: Link;
  #o: GenerationsOptions;

  constructor(link: Link, options: GenerationsOptions) {
    this.#link = link;
    this.#o = options;
  }

  /** Where `id` is in use, if anywhere. */
  idInUse(id: string): "in_flight" | "forgotten" | null {
    if (this.active.has(id) || this.waiting.some((w) => w.request.id === id)) {
      return "in_flight";
    }
    return this.forgotten.has(id) ? "forgotten" : null;
  }

  /**
   * Takes an admitted generation: sends it now if a slot is free, holds it
   * during a reload, or queues it for a slot.
   */
  admit(request: GenerationRequest, sink: GenerationSink): GenerationHandle {
    const ex = new Exchange(request, sink);
    const s = this.#link.state();
    const now = this.#o.clock.now();
    if (s.state === "ready" && this.active.size < s.info.maxConcurrency) {
      this.#dispatch(ex);
    } else if (s.state === "reloading") {
      this.waiting.push(ex);
      hold(ex, s, now, this.#o);
    } else {
      ex.waitUntil = now + this.#o.queueTimeoutMs;
      this.waiting.push(ex);
    }
    return this.#handle(ex);
  }

  /** Sends waiting generations while the worker is ready and slots are free. */
  pump(): void {
    const s = this.#link.state();
    if (s.state !== "ready") return;
    while (
      this.waiting.length > 0 && this.active.size < s.info.maxConcurrency
    ) {
      this.#dispatch(this.waiting.shift()!);
    }
  }

  /** What the worker's new state `s` means for the waiting generations. */
  follow(s: WorkerState): void {
    switch (s.state) {
      case "ready": {
        this.pump();
        // The hold is over: requests still without a slot wait for one as
        // any other would, from now.
        const until = this.#o.clock.now() + this.#o.queueTimeoutMs;
        for (const ex of this.waiting) if (ex.held) ex.waitUntil = until;
        return;
      }
      case "reloading": {
        const now = this.#o.clock.now();
        for (const ex of this.waiting) hold(ex, s, now, this.#o);
        return;
      }
      case "draining":
        return this.failWaiting(() => workerDraining(this.#o.reconnectDelayMs));
      case "disconnected":
        return this.failWaiting(() => workerRestarting(s.retryAt - s.since));
    }
  }

  /** Fails every waiting generation with `error()`. */
  failWaiting(error: () => SidecarError): void {
    for (const ex of this.waiting.splice(0)) {
      ex.phase = "ended";
      ex.sink.fail(error());
    }
  }

  /**
   * Ends every generation on the worker, failing those still streaming
   * with `error()`; with `conn`, each is first cancelled on the worker
   * (reason `shutdown`).
   */
  endActive(error: () => SidecarError, conn?: WorkerConnection): void {
    for (const ex of [...this.active.values()]) {
      const wasActive = ex.phase === "active";
      if (wasActive) {
        conn?.send({ type: "cancel", id: ex.request.id, reason: "shutdown" });
      }
      this.end(ex);
      if (wasActive) ex.sink.fail(error());
    }
  }

  /** Stops a generation; the sink gets no further call from the worker's side. */
  cancel(ex: Exchange, reason: CancelReason): void {
    if (ex.phase === "waiting") {
      ex.phase = "ended";
      this.waiting = this.waiting.filter((w) => w !== ex);
      return;
    }
    if (ex.phase !== "active") return;
    ex.phase = "cancelling";
    ex.lastActivity = this.#o.clock.now();
    this.#link.conn()?.send({ type: "cancel", id: ex.request.id, reason });
  }

  /** Frees a generation's slot. */
  end(ex: Exchange): void {
    ex.phase = "ended";
    this.active.delete(ex.request.id);
  }

  /** A `chunk` from the worker, or one item of its `chunks`. */
  onChunk(conn: WorkerConnection, msg: ChunkItem): void {
    const ex = this.#exchangeFor(conn, msg.id);
    if (!ex || ex.phase !== "active") return;
    ex.lastActivity = this.#o.clock.now();
    if (ex.credit === 0) {
      this.cancel(ex, "protocol");
      ex.sink.fail(chunkWithoutCredit());
      return;
    }
    ex.credit--;
    ex.sink.chunk(msg.text, msg.token_ids, msg.prompt_tokens);
  }

  /** A `done`, or an `error` naming generation `id`, from the worker. */
  onEnd(conn: WorkerConnection, id: string, msg: DoneMsg | ErrorMsg): void {
    const ex = this.#exchangeFor(conn, id);
    if (!ex) {
      // The worker ended a generation whose slot was freed already: its id
      // may be used again.
      this.forgotten.delete(id);
      return;
    }

    const wasActive = ex.phase === "active";
    this.end(ex);
    if (wasActive) {
      const s = this.#link.state();
      if (msg.type === "done") {
        ex.sink.done({
          finishReason: msg.finish_reason,
          usage: msg.usage,
          modelId: "info" in s ? s.info.modelId : "",
        });
      } else {
        ex.sink.fail(workerFailed(msg.code, msg.message));
      }
    }
    this.pump();
  }

  #dispatch(ex: Exchange): void {
    const s = this.#link.state();
    const conn = this.#link.conn();
    if (s.state !== "ready" || !conn) {
      throw new Error("Cannot dispatch a generation: the worker is not ready");
    }
    const req = ex.request;
    if (req.modelId !== "" && req.modelId !== s.info.modelId) {
      ex.phase = "ended";
      ex.sink.fail(modelMismatch(req.modelId, s.info.modelId));
      return;
    }

    try {
      conn.send({
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
    ex.lastActivity = this.#o.clock.now();
    this.active.set(req.id, ex);
    if (ex.held) {
      ex.sink.system(
        "resumed",
        `[System] Model ${s.info.modelId} is ready, resuming.`,
        0,
      );
    }
  }

  #handle(ex: Exchange): GenerationHandle {
    return {
      grant: (chunks) => {
        if (ex.phase !== "active") return;
        ex.pendingGrant += chunks;
        // Batch credit: one grant per half window keeps the worker busy
        // without one per token; on version 2 the grants of one tick also
        // share a frame (connection.ts).
        if (
          ex.pendingGrant * 2 >= this.#o.streamCreditChunks || ex.credit === 0
        ) {
          ex.credit += ex.pendingGrant;
          this.#link.conn()?.grant(ex.request.id, ex.pendingGrant);
          ex.pendingGrant = 0;
        }
      },
      cancel: (reason) => this.cancel(ex, reason),
    };
  }

  /** The generation a frame names; an unknown id is a protocol error. */
  #exchangeFor(conn: WorkerConnection, id: string): Exchange | undefined {
    const ex = this.active.get(id);
    if (ex) return ex;
    if (this.forgotten.has(id)) return undefined;
    conn.close(
      new WorkerConnectionError(
        "protocol",
        `worker sent a frame for ${JSON.stringify(id)}, which is not in flight`,
      ),
    );
    return undefined;
  }
}
