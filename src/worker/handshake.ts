/**
 * Opening a worker connection: connect to the socket, send `hello`, read
 * the `welcome`, all within the handshake timeout. A protocol error found
 * on the way is reported to the worker in an `error` frame before the
 * socket is shut.
 *
 * @module
 */

import type { AbandonedSockets } from "./abandoned.ts";
import { type Clock, realClock } from "../util/clock.ts";
import { WorkerConnectionError } from "./connection_errors.ts";
import { encodeFrame, FrameDecoder } from "./framing.ts";
import {
  PROTOCOL_VERSIONS,
  type SidecarMessage,
  type WelcomeMsg,
  type WorkerMessage,
} from "./messages.ts";
import {
  errorFrame,
  MIN_PEER_FRAME_BYTES,
  nextMessage,
  PROTOCOL_ERROR_FLUSH_MS,
  shut,
  withTimeout,
  writeAll,
} from "./socket_io.ts";

/** Options of {@link openHandshake} (and `WorkerConnection.open`). */
export interface ConnectOptions {
  socketPath: string;
  /** Largest frame payload the sidecar accepts, in bytes. */
  maxFrameBytes: number;
  /** Announced in `hello` so the worker can notice a vanished sidecar. */
  heartbeatIntervalMs: number;
  /** How long the worker has to answer `hello`, in milliseconds. */
  handshakeTimeoutMs: number;
  /** Name and version announced in `hello`. */
  agent: string;
  /** Timers of the handshake and of closing; default the process clock. */
  clock?: Clock;
  /**
   * Where a socket given up on with an operation still pending (a read
   * left at the timeout) is recorded; default: not recorded.
   */
  abandoned?: AbandonedSockets;
}

/** A socket that completed the handshake. */
export interface Handshaken {
  conn: Deno.UnixConn;
  /** Holds whatever arrived after the `welcome`. */
  decoder: FrameDecoder;
  welcome: WelcomeMsg;
  clock: Clock;
}

/**
 * Connects and performs the handshake. A worker that has not answered
 * `hello` within `handshakeTimeoutMs` (connecting included) fails it with
 * `handshake`; the read left pending then goes to `options.abandoned`.
 *
 * @throws {WorkerConnectionError} `refused`, `handshake`, `protocol` or `io`.
 */
export async function openHandshake(
  options: ConnectOptions,
): Promise<Handshaken> {
  const clock = options.clock ?? realClock;
  const ms = options.handshakeTimeoutMs;
  // One deadline for the whole handshake. It covers connecting too: a
  // stopped worker whose listen backlog is full makes connect wait.
  const deadline = clock.now() + ms;
  const conn = await connectBy(options, deadline, clock);

  // In Deno 2.8 closing a socket does not end a read pending on it, so a
  // silent worker cannot be timed out by closing: the exchange races the
  // deadline instead, and what it leaves pending is handed over as
  // abandoned. It settles once the worker closes its end (it sees
  // end-of-file from `shut`) or dies.
  const decoder = new FrameDecoder({ maxFrameBytes: options.maxFrameBytes });
  const hello = exchangeHello(conn, decoder, options);
  hello.catch(() => {});
  try {
    const welcome = await withTimeout(hello, deadline - clock.now(), clock)
      .catch((err) => {
        throw err instanceof Deno.errors.TimedOut
          ? new WorkerConnectionError(
            "handshake",
            `worker did not answer hello within ${ms} ms`,
          )
          : err;
      });
    return { conn, decoder, welcome, clock };
  } catch (err) {
    const e = err instanceof WorkerConnectionError
      ? err
      : new WorkerConnectionError(
        "handshake",
        `handshake failed: ${(err as Error).message}`,
      );
    let notice: Promise<void> = Promise.resolve();
    if (e.notifyWorker) {
      // The worker's limit is not known yet: fit the smallest allowed.
      notice = writeAll(conn, errorFrame(e.message, MIN_PEER_FRAME_BYTES));
      await withTimeout(notice, PROTOCOL_ERROR_FLUSH_MS, clock).catch(() => {});
    }
    shut(conn);
    // Whatever is still pending on the socket keeps its descriptor open.
    options.abandoned?.add(Promise.allSettled([hello, notice]));
    throw e;
  }
}

/** Connects to the worker's socket, or fails once `deadline` has passed. */
async function connectBy(
  options: ConnectOptions,
  deadline: number,
  clock: Clock,
): Promise<Deno.UnixConn> {
  const path = options.socketPath;
  const connecting = Deno.connect({ transport: "unix", path });
  try {
    return await withTimeout(connecting, deadline - clock.now(), clock);
  } catch (err) {
    if (err instanceof Deno.errors.TimedOut) {
      // Should the connection still come, nobody wants it.
      const late = connecting.then(shut, () => {});
      options.abandoned?.add(late);
      throw new WorkerConnectionError(
        "handshake",
        `worker did not accept the connection within ${options.handshakeTimeoutMs} ms`,
      );
    }
    if (err instanceof Deno.errors.PermissionDenied) throw err;
    throw new WorkerConnectionError(
      "refused",
      `cannot connect to ${path}: ${(err as Error).message}`,
    );
  }
}

/** Sends `hello` and reads the worker's answer, which must be `welcome`. */
async function exchangeHello(
  conn: Deno.UnixConn,
  decoder: FrameDecoder,
  options: ConnectOptions,
): Promise<WelcomeMsg> {
  await writeAll(
    conn,
    encodeFrame(
      {
        type: "hello",
        versions: [...PROTOCOL_VERSIONS],
        sidecar: options.agent,
        max_frame_bytes: options.maxFrameBytes,
        heartbeat_interval_ms: options.heartbeatIntervalMs,
      } satisfies SidecarMessage,
    ),
  );
  const first = await readMessage(conn, decoder);
  if (first === null) {
    throw new WorkerConnectionError(
      "handshake",
      "worker closed the connection during the handshake",
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
  return first;
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
