/**
 * One open connection to the worker's Unix socket: a read loop that turns
 * frames into validated messages, and a writer that coalesces frames
 * queued in the same tick into one socket write. Opening it (the
 * handshake) is `handshake.ts`.
 *
 * Credit is granted through {@link WorkerConnection.grant}: on protocol
 * version 2 the grants made one after another in a tick leave as one
 * `credits` frame (a lone grant as `credit`), so that a worker parses one
 * frame for a decode step's worth of grants rather than one per
 * generation. Any other frame sent meanwhile goes after the grants before
 * it, so frames keep the order in which they were sent.
 *
 * The connection reports what it reads and why it closed; what a message
 * means for generations and for the worker's state is decided by
 * {@link WorkerClient}.
 *
 * @module
 */

import type { Clock, TimerId } from "../util/clock.ts";
import {
  FrameTooLargeError,
  WorkerConnectionError,
} from "./connection_errors.ts";
import {
  encodeFrame,
  type FrameDecoder,
  HEADER_BYTES,
  textFrame,
} from "./framing.ts";
import { type ConnectOptions, openHandshake } from "./handshake.ts";
import type { SidecarMessage, WelcomeMsg, WorkerMessage } from "./messages.ts";
import {
  errorFrame,
  nextMessage,
  PROTOCOL_ERROR_FLUSH_MS,
  PROTOCOL_ERROR_LINGER_MS,
  shut,
  withTimeout,
  writeAll,
} from "./socket_io.ts";
import { concatBytes } from "../util/bytes.ts";

export {
  type CloseKind,
  FrameTooLargeError,
  WorkerConnectionError,
  type WorkerConnectionErrorOptions,
} from "./connection_errors.ts";
export type { ConnectOptions } from "./handshake.ts";

/** An open, handshaken connection. */
export class WorkerConnection {
  /** The worker's `welcome`. */
  readonly welcome: WelcomeMsg;
  #conn: Deno.UnixConn;
  #decoder: FrameDecoder;
  #clock: Clock;
  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #flushing = false;
  /** Set once the connection ends: nothing more is sent or delivered. */
  #closed: WorkerConnectionError | null = null;
  /** Set once the socket itself is shut (possibly after a last flush). */
  #shut = false;
  #flushWaiters: (() => void)[] = [];
  #onClose: ((err: WorkerConnectionError) => void) | null = null;
  #peerMaxFrameBytes: number;
  /** Version 2: grants by generation id, queued before the next frame. */
  #grants = new Map<string, number>();
  /**
   * Set when an `error` frame told the worker why the connection ends:
   * the socket then lingers half-closed, read and dropped, until the
   * worker closes its end or the linger ends (see PROTOCOL_ERROR_LINGER_MS).
   */
  #lingering = false;
  #lingerTimer: TimerId | null = null;

  private constructor(
    conn: Deno.UnixConn,
    decoder: FrameDecoder,
    welcome: WelcomeMsg,
    clock: Clock,
  ) {
    this.#conn = conn;
    this.#decoder = decoder;
    this.welcome = welcome;
    this.#clock = clock;
    this.#peerMaxFrameBytes = welcome.max_frame_bytes;
  }

  /**
   * Connects and performs the handshake. A worker that has not answered
   * `hello` within `handshakeTimeoutMs` (connecting included) fails it
   * with `handshake`.
   *
   * @throws {WorkerConnectionError} `refused`, `handshake`, `protocol` or `io`.
   */
  static async open(options: ConnectOptions): Promise<WorkerConnection> {
    const { conn, decoder, welcome, clock } = await openHandshake(options);
    return new WorkerConnection(conn, decoder, welcome, clock);
  }

  /** Whether the connection has ended. */
  get closed(): boolean {
    return this.#closed !== null;
  }

  /**
   * Runs the read loop, calling `onMessage` for each message, until the
   * connection ends; then calls `onClose` once with the reason.
   */
  start(
    onMessage: (msg: WorkerMessage) => void,
    onClose: (err: WorkerConnectionError) => void,
  ): void {
    this.#onClose = onClose;
    this.#readLoop(onMessage).catch((err) => {
      this.close(
        err instanceof WorkerConnectionError ? err : new WorkerConnectionError(
          "io",
          `read failed: ${(err as Error).message}`,
        ),
      );
    }).then(() => this.#drain());
  }

  /**
   * Queues a message. Frames queued in the same tick go out in one write.
   * Returns false if the connection is closed (the message is dropped).
   *
   * @throws {FrameTooLargeError} if the message exceeds the worker's
   *   `max_frame_bytes`; nothing is queued.
   */
  send(message: SidecarMessage): boolean {
    if (this.#closed) return false;
    const frame = encodeFrame(message);
    const payloadBytes = frame.length - HEADER_BYTES;
    if (payloadBytes > this.#peerMaxFrameBytes) {
      // A generate with an enormous prompt: refuse locally rather than
      // have the worker drop the connection and every stream with it.
      throw new FrameTooLargeError(
        message.type,
        payloadBytes,
        this.#peerMaxFrameBytes,
      );
    }
    // Grants gathered so far leave before this frame, as they would one
    // by one on version 1: a generate reusing the id of a generation that
    // just ended must not receive that generation's credit. A cancel's own
    // generation gets no more credit at all.
    if (this.#grants.size > 0) {
      if (message.type === "cancel") this.#grants.delete(message.id);
      this.#queueGrants();
    }
    this.#enqueue(frame);
    return true;
  }

  /**
   * Adds `chunks` to a generation's credit at the worker. On version 1 a
   * `credit` frame is queued now; on version 2 grants are gathered until
   * the next other frame or the tick's write. Returns false if the
   * connection is closed (the grant is dropped).
   */
  grant(id: string, chunks: number): boolean {
    if (this.#closed) return false;
    if (this.welcome.version < 2) {
      return this.send({ type: "credit", id, chunks });
    }
    this.#grants.set(id, (this.#grants.get(id) ?? 0) + chunks);
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => this.#flush());
    }
    return true;
  }

  /**
   * Queues the gathered grants: one `credit` frame for a lone grant,
   * otherwise `credits` frames of as many items as the worker's frame
   * limit allows. Ids are printable ASCII (the gateway checks them), so a
   * string's length is its size in bytes.
   */
  #queueGrants(): void {
    if (this.#grants.size === 0) return;
    const grants = this.#grants;
    this.#grants = new Map();
    if (grants.size === 1) {
      const [[id, chunks]] = grants;
      this.#enqueue(encodeFrame({ type: "credit", id, chunks }));
      return;
    }
    const head = '{"type":"credits","items":[';
    const limit = this.#peerMaxFrameBytes - head.length - 2;
    let items: string[] = [];
    // The items' lengths; joining n of them adds n - 1 commas.
    let size = 0;
    for (const [id, chunks] of grants) {
      const item = `{"id":${JSON.stringify(id)},"chunks":${chunks}}`;
      if (items.length > 0 && size + item.length + items.length > limit) {
        this.#enqueue(textFrame(head + items.join(",") + "]}"));
        items = [];
        size = 0;
      }
      size += item.length;
      items.push(item);
    }
    this.#enqueue(textFrame(head + items.join(",") + "]}"));
  }

  /**
   * Ends the connection; `onClose` gets `reason` (default: local close).
   * When the reason says so (a protocol error the sidecar found), the
   * worker is first sent an `error` frame, given a short while to leave.
   */
  close(reason?: WorkerConnectionError): void {
    if (this.#closed) return;
    const why = reason ??
      new WorkerConnectionError("local", "closed by the sidecar");
    this.#closed = why;
    if (why.notifyWorker && !this.#shut) {
      this.#enqueue(errorFrame(why.message, this.#peerMaxFrameBytes));
      this.#lingering = true;
      void this.#lingerAfterFlush();
    } else {
      this.#shutNow();
    }
    this.#onClose?.(why);
  }

  /**
   * Ends the connection after writing what is already queued, waiting at
   * most `timeoutMs` for it; `onClose` gets a local close. Resolves once
   * the socket is shut.
   */
  async closeAfterFlush(timeoutMs: number): Promise<void> {
    if (this.#closed) {
      await this.#shutAfterFlush(timeoutMs);
      return;
    }
    const why = new WorkerConnectionError("local", "closed by the sidecar");
    this.#closed = why;
    const done = this.#shutAfterFlush(timeoutMs);
    this.#onClose?.(why);
    await done;
  }

  #enqueue(frame: Uint8Array): void {
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => this.#flush());
    }
  }

  async #shutAfterFlush(timeoutMs: number): Promise<void> {
    await this.#flushed(timeoutMs);
    this.#shutNow();
  }

  /** Waits at most `timeoutMs` for what is queued to be written. */
  async #flushed(timeoutMs: number): Promise<void> {
    if (!this.#shut && (this.#flushing || this.#queue.length > 0)) {
      const flushed = new Promise<void>((r) => this.#flushWaiters.push(r));
      await withTimeout(flushed, timeoutMs, this.#clock).catch(() => {});
    }
  }

  /**
   * After the `error` frame: closes the sending side only, and shuts the
   * socket once the worker has closed its end (see {@link #drain}) or the
   * linger is over.
   */
  async #lingerAfterFlush(): Promise<void> {
    await this.#flushed(PROTOCOL_ERROR_FLUSH_MS);
    if (this.#shut) return;
    this.#lingerTimer = this.#clock.setTimeout(
      () => this.#shutNow(),
      PROTOCOL_ERROR_LINGER_MS,
    );
    try {
      await this.#conn.closeWrite();
    } catch {
      this.#shutNow();
    }
  }

  /**
   * Once the read loop has ended on a connection that lingers: reads and
   * drops what the worker still sends, and shuts the socket when the
   * worker closes its end.
   */
  async #drain(): Promise<void> {
    if (!this.#lingering) return;
    const scratch = new Uint8Array(16 * 1024);
    try {
      while (!this.#shut) {
        if (await this.#conn.read(scratch) === null) break;
      }
    } catch { /* shut meanwhile, or reset by the worker */ }
    this.#shutNow();
  }

  #shutNow(): void {
    if (this.#lingerTimer !== null) {
      this.#clock.clearTimeout(this.#lingerTimer);
      this.#lingerTimer = null;
    }
    if (this.#shut) return;
    this.#shut = true;
    shut(this.#conn);
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#grants.clear();
    this.#wakeFlushWaiters();
  }

  #wakeFlushWaiters(): void {
    for (const w of this.#flushWaiters.splice(0)) w();
  }

  async #flush(): Promise<void> {
    try {
      for (;;) {
        if (!this.#closed) this.#queueGrants();
        if (this.#queue.length === 0 || this.#shut) break;
        const frames = this.#queue;
        const total = this.#queuedBytes;
        this.#queue = [];
        this.#queuedBytes = 0;
        await writeAll(
          this.#conn,
          frames.length === 1 ? frames[0] : concatBytes(frames, total),
        );
      }
    } catch (err) {
      const failed = new WorkerConnectionError(
        "io",
        `write failed: ${(err as Error).message}`,
      );
      if (this.#closed) this.#shutNow();
      else this.close(failed);
    } finally {
      this.#flushing = false;
      this.#wakeFlushWaiters();
    }
  }

  async #readLoop(onMessage: (msg: WorkerMessage) => void): Promise<void> {
    // Frames that arrived with the welcome are already in the decoder.
    for (;;) {
      for (;;) {
        const msg = nextMessage(this.#decoder);
        if (msg === null) break;
        if (this.#closed) return;
        onMessage(msg);
      }
      if (this.#closed) return;
      let n: number | null;
      try {
        n = await this.#conn.read(this.#decoder.space());
      } catch (err) {
        if (this.#closed) return;
        throw new WorkerConnectionError(
          "io",
          `read failed: ${(err as Error).message}`,
        );
      }
      if (n === null) {
        if (this.#closed) return;
        const tail = this.#decoder.buffered;
        throw new WorkerConnectionError(
          "eof",
          tail > 0
            ? `worker closed the connection in the middle of a frame (${tail} bytes pending)`
            : "worker closed the connection",
        );
      }
      this.#decoder.commit(n);
    }
  }
}
