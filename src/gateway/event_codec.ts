/**
 * Encodes `GenerateEvent` messages (proto/cy/sidecar/v1/sidecar.proto) as
 * gRPC length-prefixed messages, by hand.
 *
 * Every token crosses this function, so it measures each field once, then
 * writes into a buffer of the exact size, instead of the generic encoder's
 * object walk and growing writer. Fields at their default value are left
 * out (canonical proto3), except `usage`, which `done` and `error` always
 * carry; repeated `token_ids` are packed. Strings are written as well-formed
 * UTF-8: a lone surrogate (JSON from the worker may carry one) becomes
 * U+FFFD, as proto3 requires of a string, where the generic encoder would
 * write bytes that strict decoders (Go, Python) reject. Otherwise the
 * output decodes to the same message as the generic encoder's:
 * event_codec_test.ts checks every event shape against protobufjs.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { utf8Length } from "../util/utf8.ts";
import type { GenerateEventPb, UsagePb } from "./types.ts";

/** Bytes of the gRPC message prefix: a compressed flag and a length. */
export const GRPC_PREFIX_BYTES = 5;

const SYSTEM_KINDS: Record<string, number> = { RELOADING: 1, RESUMED: 2 };
const UINT32_MAX = 0xffffffff;

const utf8 = new TextEncoder();

function varintBytes(v: number): number {
  // uint32 values only: at most five bytes.
  return v < 0x80
    ? 1
    : v < 0x4000
    ? 2
    : v < 0x200000
    ? 3
    : v < 0x10000000
    ? 4
    : 5;
}

/**
 * A hint (an ETA, a retry delay) as a uint32: rounded and clamped, since a
 * hint a millisecond off is still a hint, and no event may fail for one.
 */
function hint(v: number): number {
  return Number.isFinite(v)
    ? Math.min(UINT32_MAX, Math.max(0, Math.round(v)))
    : 0;
}

function uint32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > UINT32_MAX) {
    throw new RangeError(
      `Cannot encode GenerateEvent: ${what} must be a uint32, got ${v}`,
    );
  }
  return v;
}

/** Size of a length-delimited field (one-byte tag, length, body). */
function delimited(bodyBytes: number): number {
  return 1 + varintBytes(bodyBytes) + bodyBytes;
}

function uintField(v: number): number {
  return v === 0 ? 0 : 1 + varintBytes(v);
}

function usageBody(u: UsagePb): number {
  return uintField(uint32(u.prompt_tokens, "prompt_tokens")) +
    uintField(uint32(u.completion_tokens, "completion_tokens"));
}

// ---- writing: each function writes at `pos` and returns the next one ----

function writeVarint(buf: Uint8Array, pos: number, v: number): number {
  while (v > 0x7f) {
    buf[pos++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  buf[pos++] = v;
  return pos;
}

/** A string field whose UTF-8 size `n` is already known (0: left out). */
function writeString(
  buf: Uint8Array,
  pos: number,
  field: number,
  s: string,
  n: number,
): number {
  if (n === 0) return pos;
  buf[pos++] = (field << 3) | 2;
  pos = writeVarint(buf, pos, n);
  if (n === s.length) {
    // All ASCII (the common case for ids and one token's text).
    for (let i = 0; i < n; i++) buf[pos++] = s.charCodeAt(i);
    return pos;
  }
  utf8.encodeInto(s, buf.subarray(pos, pos + n));
  return pos + n;
}

function writeUint(
  buf: Uint8Array,
  pos: number,
  field: number,
  v: number,
): number {
  if (v === 0) return pos;
  buf[pos++] = field << 3;
  return writeVarint(buf, pos, v);
}

function writeUsage(
  buf: Uint8Array,
  pos: number,
  field: number,
  u: UsagePb,
): number {
  buf[pos++] = (field << 3) | 2;
  pos = writeVarint(buf, pos, usageBody(u));
  pos = writeUint(buf, pos, 1, u.prompt_tokens);
  return writeUint(buf, pos, 2, u.completion_tokens);
}

function allocate(size: number): Uint8Array {
  const buf = new Uint8Array(GRPC_PREFIX_BYTES + size);
  buf[0] = 0;
  buf[1] = size >>> 24;
  buf[2] = (size >>> 16) & 0xff;
  buf[3] = (size >>> 8) & 0xff;
  buf[4] = size & 0xff;
  return buf;
}

/** A `chunk` event: the one every token takes. */
function encodeChunk(
  id: string,
  text: string,
  ids: readonly number[],
): Uint8Array {
  const idBytes = utf8Length(id);
  const textBytes = utf8Length(text);
  let idsBytes = 0;
  for (let i = 0; i < ids.length; i++) {
    idsBytes += varintBytes(uint32(ids[i], "token id"));
  }
  const body = (textBytes === 0 ? 0 : delimited(textBytes)) +
    (idsBytes === 0 ? 0 : delimited(idsBytes));
  const buf = allocate(
    (idBytes === 0 ? 0 : delimited(idBytes)) + delimited(body),
  );

  let pos = writeString(buf, GRPC_PREFIX_BYTES, 1, id, idBytes);
  buf[pos++] = (2 << 3) | 2;
  pos = writeVarint(buf, pos, body);
  pos = writeString(buf, pos, 1, text, textBytes);
  if (idsBytes > 0) {
    buf[pos++] = (2 << 3) | 2;
    pos = writeVarint(buf, pos, idsBytes);
    for (let i = 0; i < ids.length; i++) pos = writeVarint(buf, pos, ids[i]);
  }
  return buf;
}

/** Any other event: rare (a few per generation), so kept simple. */
function encodeOther(
  ev: Exclude<GenerateEventPb, { chunk: unknown }>,
): Uint8Array {
  const idBytes = utf8Length(ev.request_id);
  let field: number;
  let body: number;
  let strings: [number, string, number][];
  if ("system" in ev) {
    const s = ev.system;
    field = 3;
    strings = [[2, s.text, utf8Length(s.text)]];
    body = uintField(SYSTEM_KINDS[s.kind] ?? 0) +
      uintField(hint(s.eta_ms));
  } else if ("done" in ev) {
    const d = ev.done;
    field = 4;
    strings = [
      [1, d.finish_reason, utf8Length(d.finish_reason)],
      [3, d.model_id, utf8Length(d.model_id)],
    ];
    body = delimited(usageBody(d.usage));
  } else {
    const e = ev.error;
    field = 5;
    strings = [[2, e.message, utf8Length(e.message)]];
    body = uintField(uint32(e.code, "code")) +
      uintField(hint(e.retry_after_ms)) +
      delimited(usageBody(e.usage));
  }
  for (const [, , n] of strings) body += n === 0 ? 0 : delimited(n);
  const buf = allocate(
    (idBytes === 0 ? 0 : delimited(idBytes)) + delimited(body),
  );

  let pos = writeString(buf, GRPC_PREFIX_BYTES, 1, ev.request_id, idBytes);
  buf[pos++] = (field << 3) | 2;
  pos = writeVarint(buf, pos, body);
  const str = (i: number) => {
    const [f, s, n] = strings[i];
    pos = writeString(buf, pos, f, s, n);
  };
  if ("system" in ev) {
    pos = writeUint(buf, pos, 1, SYSTEM_KINDS[ev.system.kind] ?? 0);
    str(0);
    pos = writeUint(buf, pos, 3, hint(ev.system.eta_ms));
  } else if ("done" in ev) {
    str(0);
    pos = writeUsage(buf, pos, 2, ev.done.usage);
    str(1);
  } else {
    pos = writeUint(buf, pos, 1, ev.error.code);
    str(0);
    pos = writeUint(buf, pos, 3, hint(ev.error.retry_after_ms));
    pos = writeUsage(buf, pos, 4, ev.error.usage);
  }
  return buf;
}

/**
 * Encodes `ev` as one gRPC message: the 5-byte prefix (uncompressed, big
 * endian length) and the protobuf bytes.
 *
 * @throws {RangeError} if a number does not fit its uint32 field.
 */
export function encodeEventMessage(ev: GenerateEventPb): Uint8Array {
  if ("chunk" in ev) {
    return encodeChunk(ev.request_id, ev.chunk.text, ev.chunk.token_ids);
  }
  return encodeOther(ev);
}

/**
 * A serializer for grpc-js (`responseSerialize`): the same encoding without
 * the prefix, which grpc-js adds itself.
 */
export function serializeEvent(ev: GenerateEventPb): Buffer {
  const msg = encodeEventMessage(ev);
  return Buffer.from(
    msg.buffer,
    msg.byteOffset + GRPC_PREFIX_BYTES,
    msg.length - GRPC_PREFIX_BYTES,
  );
}
