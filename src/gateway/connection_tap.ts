/**
 * Counts, per HTTP/2 stream, the DATA bytes a gateway connection has really
 * sent: the ground truth of what was delivered.
 *
 * `node:http2` offers no such count. On Deno 2.8 its session writes what
 * nghttp2 serializes by calling `getOutgoingChunk()` on the session's native
 * handle until it returns nothing, and writes each chunk to the socket.
 * The tap wraps that method on the handle and reads the frame headers of
 * every chunk as it passes: a DATA frame's payload leaves the sidecar only
 * when nghttp2 has window for it, so its length, credited to its stream,
 * is what the gateway was sent. Nothing is copied or changed.
 *
 * When the handle does not look as expected (another Deno), {@link tapSession}
 * returns null and callers fall back to counting at hand-off.
 *
 * @module
 */

/** Receives the DATA bytes sent on one stream. */
export interface StreamSink {
  sent(bytes: number): void;
}

const FRAME_HEADER_BYTES = 9;
const TYPE_DATA = 0;
const FLAG_PADDED = 0x8;

const taps = new WeakMap<object, ConnectionTap | null>();

/**
 * The tap of an HTTP/2 session, installed on first use; null when the
 * session's handle cannot be tapped.
 */
export function tapSession(
  session: object | null | undefined,
): ConnectionTap | null {
  if (!session) return null;
  let tap = taps.get(session);
  if (tap === undefined) {
    tap = ConnectionTap.install(session);
    taps.set(session, tap);
  }
  return tap;
}

/** A streaming parser of the frames one session sends. */
export class ConnectionTap {
  #sinks = new Map<number, StreamSink>();
  #header = new Uint8Array(FRAME_HEADER_BYTES);
  #headerFill = 0;
  /** Payload bytes of the current frame not yet seen. */
  #left = 0;
  #stream = 0;
  #data = false;
  /** A padded DATA frame whose pad length byte has not been seen yet. */
  #needPad = false;

  /** Wraps the session handle's `getOutgoingChunk`; null when it has none. */
  static install(session: object): ConnectionTap | null {
    const key = Object.getOwnPropertySymbols(session).find((s) =>
      s.description === "kHandle"
    );
    const handle = key
      ? (session as Record<symbol, unknown>)[key] as
        | Record<string, unknown>
        | undefined
      : undefined;
    const next = handle?.getOutgoingChunk;
    if (!handle || typeof next !== "function") return null;

    const tap = new ConnectionTap();
    handle.getOutgoingChunk = function (this: unknown, ...args: unknown[]) {
      const chunk = next.apply(handle, args);
      if (chunk instanceof Uint8Array && chunk.byteLength > 0) tap.feed(chunk);
      return chunk;
    };
    return tap;
  }

  /** Credits stream `id`'s DATA bytes to `sink` until {@link forget}. */
  watch(id: number, sink: StreamSink): void {
    this.#sinks.set(id, sink);
  }

  forget(id: number): void {
    this.#sinks.delete(id);
  }

  /** Reads the frames in `chunk`, which may start or end mid-frame. */
  feed(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.#left === 0 && !this.#needPad) {
        // A frame header, possibly split across chunks.
        const n = Math.min(
          FRAME_HEADER_BYTES - this.#headerFill,
          chunk.length - i,
        );
        this.#header.set(chunk.subarray(i, i + n), this.#headerFill);
        this.#headerFill += n;
        i += n;
        if (this.#headerFill < FRAME_HEADER_BYTES) return;
        this.#headerFill = 0;
        this.#startFrame();
        continue;
      }
      if (this.#needPad) {
        // The pad length byte, then the data and the padding.
        this.#needPad = false;
        const pad = chunk[i++];
        this.#left--;
        this.#credit(this.#left - pad);
        continue;
      }
      const n = Math.min(this.#left, chunk.length - i);
      this.#left -= n;
      i += n;
    }
  }

  #startFrame(): void {
    const h = this.#header;
    const length = (h[0] << 16) | (h[1] << 8) | h[2];
    this.#data = h[3] === TYPE_DATA;
    this.#stream = ((h[5] & 0x7f) << 24) | (h[6] << 16) | (h[7] << 8) | h[8];
    this.#left = length;
    if (!this.#data || length === 0) return;
    if (h[4] & FLAG_PADDED) this.#needPad = true;
    else this.#credit(length);
  }

  #credit(bytes: number): void {
    if (bytes > 0) this.#sinks.get(this.#stream)?.sent(bytes);
  }
}
