/**
 * Small socket helpers shared by the handshake and the open connection:
 * writing a whole buffer, shutting a socket so the peer sees end-of-file,
 * decoding the next message, bounding a wait, and the `error` frame the
 * sidecar sends before closing over a protocol error.
 *
 * @module
 */

import type { Clock, TimerId } from "../util/clock.ts";
import { WorkerConnectionError } from "./connection_errors.ts";
import { encodeFrame, type FrameDecoder, HEADER_BYTES } from "./framing.ts";
import {
  decodeWorkerMessage,
  PROTOCOL_ERROR_CODE,
  type SidecarMessage,
  type WorkerMessage,
} from "./messages.ts";

// The `error` frame sent before closing over a protocol error gets this
// long to leave: enough for one small write to a local socket, short enough
// that a worker that has stopped reading does not delay the reconnect.
export const PROTOCOL_ERROR_FLUSH_MS = 250;

// After that frame the sidecar closes only its sending side, and reads (and
// drops) what the worker still sends until the worker closes its end, for
// at most this long. Closing at once would make a worker that is still
// writing fail its write (EPIPE) before it reads the frame, and asyncio,
// for one, then drops the connection with the frame unread.
export const PROTOCOL_ERROR_LINGER_MS = 500;

/** The smallest `max_frame_bytes` a peer may announce: every `error` frame fits. */
export const MIN_PEER_FRAME_BYTES = 1024;

// The worker logs the message; the whole text is in the sidecar's own log.
// Longer messages are cut so that the frame fits any peer's limit.
const MAX_ERROR_MESSAGE_CHARS = 512;

/** Writes all of `bytes`, however many writes it takes. */
export async function writeAll(
  conn: Deno.UnixConn,
  bytes: Uint8Array,
): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    written += await conn.write(bytes.subarray(written));
  }
}

/**
 * Closes a socket so that the peer sees end-of-file at once. In Deno 2.8,
 * `close()` alone leaves the descriptor open while a read is pending on it,
 * so the write side is shut down first; the pending read then ends when
 * the worker closes its side.
 */
export function shut(conn: Deno.UnixConn): void {
  try {
    // A promise: a socket closed already rejects it, asynchronously.
    conn.closeWrite().catch(() => {});
  } catch { /* not connected any more */ }
  try {
    conn.close();
  } catch { /* already closed */ }
}

/**
 * The frame `{"type":"error","code":"protocol","message":...}` with the
 * message cut (marked "...") until the payload fits `maxPayloadBytes`.
 */
export function errorFrame(
  message: string,
  maxPayloadBytes: number,
): Uint8Array {
  let text = message.length > MAX_ERROR_MESSAGE_CHARS
    ? message.slice(0, MAX_ERROR_MESSAGE_CHARS) + "..."
    : message;
  for (;;) {
    const frame = encodeFrame(
      {
        type: "error",
        code: PROTOCOL_ERROR_CODE,
        message: text,
      } satisfies SidecarMessage,
    );
    if (frame.length - HEADER_BYTES <= maxPayloadBytes || text.length <= 3) {
      return frame;
    }
    text = text.slice(0, Math.floor(text.length / 2)) + "...";
  }
}

/**
 * The next message in `decoder`, or null when it needs more bytes.
 *
 * @throws {WorkerConnectionError} `protocol` for a bad frame or message.
 */
export function nextMessage(decoder: FrameDecoder): WorkerMessage | null {
  const frame = decoder.next();
  if (!frame.ok) {
    throw new WorkerConnectionError("protocol", frame.message);
  }
  if (frame.payload === null) return null;
  const msg = decodeWorkerMessage(frame.payload);
  if (!msg.ok) {
    throw new WorkerConnectionError("protocol", msg.message);
  }
  return msg.value;
}

/**
 * `promise`, or a rejection once `ms` have passed on `clock`. The promise
 * itself is left to run: the caller decides what to do with it.
 *
 * @throws {Deno.errors.TimedOut} once `ms` have passed first.
 */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  clock: Clock,
): Promise<T> {
  let timer: TimerId | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = clock.setTimeout(
      () => reject(new Deno.errors.TimedOut(`timed out after ${ms} ms`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    if (timer !== undefined) clock.clearTimeout(timer);
  }
}
