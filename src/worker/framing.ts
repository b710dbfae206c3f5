/**
 * Length-prefixed framing of the worker protocol (docs/worker-protocol.md):
 * a 4-byte big-endian payload length, then that many bytes of UTF-8 JSON.
 *
 * The decoder owns one growable buffer that the socket reads straight into,
 * so a frame's bytes are copied once at most. An announced length above the
 * limit is rejected before any of its payload is read.
 *
 * @module
 */

/** Why a byte stream could not be decoded into a message. */
export type FrameErrorKind =
  | "zero_length"
  | "oversized"
  | "bad_utf8"
  | "bad_json"
  | "not_object"
  | "missing_type"
  | "unknown_type"
  | "bad_field";

/** A described decoding failure. */
export interface FrameFailure {
  ok: false;
  kind: FrameErrorKind;
  message: string;
}

/** Bytes of the length prefix. */
export const HEADER_BYTES = 4;

/** Result of {@link FrameDecoder.next}. */
export type NextFrame =
  | { ok: true; payload: Uint8Array }
  | { ok: true; payload: null }
  | FrameFailure;

// A read buffer of this size holds many token frames at once; it grows only
// for frames larger than this, and never beyond maxFrameBytes + header.
const INITIAL_BUFFER_BYTES = 64 * 1024;

/** Splits a byte stream into frame payloads. */
export class FrameDecoder {
  readonly maxFrameBytes: number;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;

  /** @throws {RangeError} if `maxFrameBytes` is not a positive integer. */
  constructor(options: { maxFrameBytes: number }) {
    const max = options.maxFrameBytes;
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(
        `Cannot create decoder: maxFrameBytes must be a positive integer, got ${max}`,
      );
    }
    this.maxFrameBytes = max;
    this.#buf = new Uint8Array(
      Math.min(INITIAL_BUFFER_BYTES, max + HEADER_BYTES),
    );
  }

  /** Bytes received but not yet returned as frames. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /**
   * Free space to read into; call {@link commit} with the count read.
   * Makes room by compacting, or by growing when a frame needs it.
   */
  space(): Uint8Array {
    if (this.#start > 0 && this.#end === this.#start) {
      this.#start = this.#end = 0;
    }
    if (this.#end === this.#buf.length) {
      const need = this.#needed();
      if (this.#start > 0 && need <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      } else {
        const grown = new Uint8Array(Math.max(need, this.#buf.length * 2));
        grown.set(this.#buf.subarray(this.#start, this.#end));
        this.#end -= this.#start;
        this.#start = 0;
        this.#buf = grown;
      }
    }
    return this.#buf.subarray(this.#end);
  }

  /** Records that `n` bytes were written into the last {@link space}. */
  commit(n: number): void {
    this.#end += n;
  }

  /** Appends bytes (for callers that do not read into {@link space}). */
  push(bytes: Uint8Array): void {
    let offset = 0;
    while (offset < bytes.length) {
      const room = this.space();
      const n = Math.min(room.length, bytes.length - offset);
      room.set(bytes.subarray(offset, offset + n));
      this.commit(n);
      offset += n;
    }
  }

  /**
   * The next whole frame's payload, `null` when more bytes are needed, or a
   * failure. The payload is a view valid until the next call.
   */
  next(): NextFrame {
    const available = this.#end - this.#start;
    if (available < HEADER_BYTES) return { ok: true, payload: null };
    const length = this.#length();
    if (length === 0) {
      return { ok: false, kind: "zero_length", message: "frame length is 0" };
    }
    if (length > this.maxFrameBytes) {
      return {
        ok: false,
        kind: "oversized",
        message:
          `frame of ${length} bytes exceeds max_frame_bytes ${this.maxFrameBytes}`,
      };
    }
    if (available < HEADER_BYTES + length) return { ok: true, payload: null };
    const from = this.#start + HEADER_BYTES;
    this.#start = from + length;
    return { ok: true, payload: this.#buf.subarray(from, from + length) };
  }

  #length(): number {
    const b = this.#buf;
    const i = this.#start;
    return ((b[i] << 24) >>> 0) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3];
  }

  // Bytes the buffer must hold to complete the frame at #start.
  #needed(): number {
    if (this.#end - this.#start < HEADER_BYTES) return HEADER_BYTES;
    return HEADER_BYTES + Math.min(this.#length(), this.maxFrameBytes);
  }
}

const encoder = new TextEncoder();

/** Encodes one message as a frame: length prefix and JSON payload. */
export function encodeFrame(message: unknown): Uint8Array {
  return textFrame(JSON.stringify(message));
}

/** Frames a payload already written as JSON text. */
export function textFrame(json: string): Uint8Array {
  const payload = encoder.encode(json);
  const frame = new Uint8Array(HEADER_BYTES + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length);
  frame.set(payload, HEADER_BYTES);
  return frame;
}

// Deno decodes UTF-8 about 3x faster without `fatal`. A payload is decoded
// that way first; only one whose text then holds U+FFFD, which is either in
// the payload or stands for an invalid sequence, is decoded again strictly.
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Parses a payload into a JSON object with a string `type`. */
export function parsePayload(
  payload: Uint8Array,
):
  | { ok: true; value: Record<string, unknown> & { type: string } }
  | FrameFailure {
  let text = utf8.decode(payload);
  if (text.includes("\uFFFD")) {
    try {
      text = strictUtf8.decode(payload);
    } catch {
      return {
        ok: false,
        kind: "bad_utf8",
        message: "payload is not valid UTF-8",
      };
    }
  }

  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return {
      ok: false,
      kind: "bad_json",
      message: `payload is not valid JSON: ${(err as Error).message}`,
    };
  }

  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return {
      ok: false,
      kind: "not_object",
      message: "payload is not a JSON object",
    };
  }
  const type = (value as Record<string, unknown>).type;
  if (typeof type !== "string") {
    return {
      ok: false,
      kind: "missing_type",
      message: 'payload has no string member "type"',
    };
  }
  return {
    ok: true,
    value: value as Record<string, unknown> & { type: string },
  };
}
