/**
 * One connection to the worker's Unix socket: the handshake, a read loop
 * that turns frames into validated messages, and a writer that coalesces
 * frames queued in the same tick into one socket write.
 *
 * The connection reports what it reads and why it closed; what a message
 * means for generations and for the worker's state is decided by
 * {@link WorkerClient}.
 *
 * @module
 */

import { encodeFrame, FrameDecoder, type FrameErrorKind } from "./framing.ts";
import {
  decodeWorkerMessage,
  PROTOCOL_VERSIONS,
  type SidecarMessage,
  type WelcomeMsg,
  type WorkerMessage,
} from "./messages.ts";

/** Why a connection ended, in a small fixed set usable as a metric label. */
export type CloseKind =
  | "refused" // nothing listens on the socket, or it does not exist
  | "handshake" // the worker did not complete the handshake
  | "protocol" // the worker sent something malformed
  | "eof" // the worker closed the socket
  | "io" // a socket read or write failed
  | "heartbeat" // the worker stopped answering pings
  | "local"; // the sidecar closed it

/** The error a connection ends with. */
export class WorkerConnectionError extends Error {
  readonly kind: CloseKind;
  /** For `protocol`: the frame-level failure kind. */
  readonly frameKind?: FrameErrorKind;

  constructor(kind: CloseKind, message: string, frameKind?: FrameErrorKind) {
    super(message);
    this.name = "WorkerConnectionError";
    this.kind = kind;
    this.frameKind = frameKind;
  }
}

/** Options of {@link WorkerConnection.open}. */
export interface ConnectOptions {
  socketPath: string;
  /** Largest frame payload the sidecar accepts. */
  maxFrameBytes: number;
  /** Announced in `hello` so the worker can notice a vanished sidecar. */
  heartbeatIntervalMs: number;
  /** How long the worker has to answer `hello`. */
  handshakeTimeoutMs: number;
  /** Name and version announced in `hello`. */
  agent: string;
}

/** An open, handshaken connection. */
export class WorkerConnection {
  /** The worker's `welcome`. */
  readonly welcome: WelcomeMsg;
  #conn: Deno.UnixConn;
  #decoder: FrameDecoder;
  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #flushing = false;
  #closed: WorkerConnectionError | null = null;
  #onClose: ((err: WorkerConnectionError) => void) | null = null;
  #peerMaxFrameBytes: number;

  private constructor(
    conn: Deno.UnixConn,
    decoder: FrameDecoder,
    welcome: WelcomeMsg,
  ) {
    this.#conn = conn;
    this.#decoder = decoder;
    this.welcome = welcome;
    this.#peerMaxFrameBytes = welcome.max_frame_bytes;
  }

  /**
   * Connects and performs the handshake.
   *
   * @throws {WorkerConnectionError} `refused`, `handshake`, `protocol` or `io`.
   */
  static async open(options: ConnectOptions): Promise<WorkerConnection> {
    let conn: Deno.UnixConn;
    try {
      conn = await Deno.connect({
        transport: "unix",
        path: options.socketPath,
      });
    } catch (err) {
      if (err instanceof Deno.errors.PermissionDenied) throw err;
      throw new WorkerConnectionError(
        "refused",
        `cannot connect to ${options.socketPath}: ${(err as Error).message}`,
      );
    }

    const decoder = new FrameDecoder({ maxFrameBytes: options.maxFrameBytes });
    const timer = setTimeout(() => shut(conn), options.handshakeTimeoutMs);

    try {
      await conn.write(encodeFrame(
        {
          type: "hello",
          versions: [...PROTOCOL_VERSIONS],
          sidecar: options.agent,
          max_frame_bytes: options.maxFrameBytes,
          heartbeat_interval_ms: options.heartbeatIntervalMs,
        } satisfies SidecarMessage,
      ));
      const first = await readMessage(conn, decoder);
      if (first === null) {
        throw new WorkerConnectionError(
          "handshake",
          `worker closed the connection during the handshake (or did not answer within ${options.handshakeTimeoutMs} ms)`,
        );
      }
      if (first.type === "error") {
        throw new WorkerConnectionError(
          "handshake",
          `worker refused the handshake: ${first.code}: ${first.message}`,
        );
      }
      if (first.type !== "welcome") {
        throw new WorkerConnectionError(
          "protocol",
          `expected "welcome" as the first frame, got "${first.type}"`,
        );
      }
      if (!(PROTOCOL_VERSIONS as readonly number[]).includes(first.version)) {
        throw new WorkerConnectionError(
          "protocol",
          `worker chose protocol version ${first.version}, offered ${
            PROTOCOL_VERSIONS.join(",")
          }`,
        );
      }
      return new WorkerConnection(conn, decoder, first);
    } catch (err) {
      shut(conn);
      if (err instanceof WorkerConnectionError) throw err;
      throw new WorkerConnectionError(
        "handshake",
        `handshake failed: ${(err as Error).message}`,
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whether the connection has ended. */
  get closed(): boolean {
    return this.#closed !== null;
  }

  /** Bytes queued but not yet written to the socket. */
  get queuedBytes(): number {
    return this.#queuedBytes;
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
    });
  }

  /**
   * Queues a message. Frames queued in the same tick go out in one write.
   * Returns false if the connection is closed (the message is dropped).
   */
  send(message: SidecarMessage): boolean {
    if (this.#closed) return false;
    const frame = encodeFrame(message);
    if (frame.length - 4 > this.#peerMaxFrameBytes) {
      // A generate with an enormous prompt: refuse locally rather than
      // have the worker drop the connection and every stream with it.
      throw new RangeError(
        `Cannot send ${message.type}: ${
          frame.length - 4
        } bytes exceed the worker's max_frame_bytes ${this.#peerMaxFrameBytes}`,
      );
    }
    this.#queue.push(frame);
    this.#queuedBytes += frame.length;
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => this.#flush());
    }
    return true;
  }

  /** Ends the connection; `onClose` gets `reason` (default: local close). */
  close(reason?: WorkerConnectionError): void {
    if (this.#closed) return;
    this.#closed = reason ??
      new WorkerConnectionError("local", "closed by the sidecar");
    shut(this.#conn);
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#onClose?.(this.#closed);
  }

  async #flush(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const frames = this.#queue;
        const total = this.#queuedBytes;
        this.#queue = [];
        this.#queuedBytes = 0;
        const bytes = frames.length === 1 ? frames[0] : concat(frames, total);
        let written = 0;
        while (written < bytes.length) {
          written += await this.#conn.write(bytes.subarray(written));
        }
      }
    } catch (err) {
      this.close(
        new WorkerConnectionError(
          "io",
          `write failed: ${(err as Error).message}`,
        ),
      );
    } finally {
      this.#flushing = false;
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

/**
 * Closes a socket so that the peer sees end-of-file at once. In Deno 2.8,
 * `close()` alone leaves the descriptor open while a read is pending on it,
 * so the write side is shut down first; the pending read then ends when
 * the worker closes its side.
 */
function shut(conn: Deno.UnixConn): void {
  try {
    conn.closeWrite();
  } catch { /* not connected any more */ }
  try {
    conn.close();
  } catch { /* already closed */ }
}

function nextMessage(decoder: FrameDecoder): WorkerMessage | null {
  const frame = decoder.next();
  if (!frame.ok) {
    throw new WorkerConnectionError("protocol", frame.message, frame.kind);
  }
  if (frame.payload === null) return null;
  const msg = decodeWorkerMessage(frame.payload);
  if (!msg.ok) {
    throw new WorkerConnectionError("protocol", msg.message, msg.kind);
  }
  return msg.value;
}

async function readMessage(
  conn: Deno.UnixConn,
  decoder: FrameDecoder,
): Promise<WorkerMessage | null> {
  for (;;) {
    const msg = nextMessage(decoder);
    if (msg !== null) return msg;
    const n = await conn.read(decoder.space());
    if (n === null) return null;
    decoder.commit(n);
  }
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
