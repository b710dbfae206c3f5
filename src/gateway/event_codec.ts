/**
 * Encodes `GenerateEvent` messages (proto/cy/sidecar/v1/sidecar.proto) as
 * gRPC length-prefixed messages, by hand.
 *
 * Every token crosses this function, so it does one size pass and one
 * write into a buffer of the exact size, instead of the generic encoder's
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
import type { GenerateEventPb, UsagePb } from "./types.ts";

/** Bytes of the gRPC message prefix: a compressed flag and a length. */
export const GRPC_PREFIX_BYTES = 5;

const SYSTEM_KINDS: Record<string, number> = { RELOADING: 1, RESUMED: 2 };

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

function utf8Bytes(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      // A surrogate pair: four bytes for two UTF-16 units.
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 2;
        i++;
      } else n += 2;
    } else n += 2;
  }
  return n;
}

/** Size of a length-delimited field (tag, length, body) with a one-byte tag. */
function delimited(bodyBytes: number): number {
  return 1 + varintBytes(bodyBytes) + bodyBytes;
}

function stringField(s: string): number {
  return s.length === 0 ? 0 : delimited(utf8Bytes(s));
}

function uintField(v: number): number {
  return v === 0 ? 0 : 1 + varintBytes(v);
}

function usageBody(u: UsagePb): number {
  return uintField(checkUint32(u.prompt_tokens, "prompt_tokens")) +
    uintField(checkUint32(u.completion_tokens, "completion_tokens"));
}

/** A cursor over the output buffer. */
class Writer {
  buf: Buffer;
  pos: number;

  constructor(buf: Buffer, pos: number) {
    this.buf = buf;
    this.pos = pos;
  }

  varint(v: number): void {
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  tag(field: number, wireType: number): void {
    this.buf[this.pos++] = (field << 3) | wireType;
  }

  string(field: number, s: string): void {
    if (s.length === 0) return;
    this.tag(field, 2);
    // Short strings are common (ids, one token of text): write ASCII
    // directly and fall back to the encoder for anything else.
    const n = utf8Bytes(s);
    this.varint(n);
    if (n === s.length) {
      for (let i = 0; i < s.length; i++) this.buf[this.pos++] = s.charCodeAt(i);
    } else {
      utf8.encodeInto(s, this.buf.subarray(this.pos, this.pos + n));
      this.pos += n;
    }
  }

  uint(field: number, v: number): void {
    if (v === 0) return;
    this.tag(field, 0);
    this.varint(v);
  }

  /** Usage is always written on done and error, even when both counts are 0. */
  usage(field: number, u: UsagePb): void {
    const body = usageBody(u);
    this.tag(field, 2);
    this.varint(body);
    this.uint(1, u.prompt_tokens);
    this.uint(2, u.completion_tokens);
  }
}

function checkUint32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new RangeError(
      `Cannot encode GenerateEvent: ${what} must be a uint32, got ${v}`,
    );
  }
  return v;
}

/** The body size of the event's `kind` member and its field number. */
function kindBody(ev: GenerateEventPb): [field: number, bytes: number] {
  if ("chunk" in ev) {
    const c = ev.chunk;
    let ids = 0;
    for (const id of c.token_ids) {
      ids += varintBytes(checkUint32(id, "token id"));
    }
    return [2, stringField(c.text) + (ids === 0 ? 0 : delimited(ids))];
  }
  if ("system" in ev) {
    const s = ev.system;
    return [
      3,
      uintField(SYSTEM_KINDS[s.kind] ?? 0) + stringField(s.text) +
      uintField(checkUint32(s.eta_ms, "eta_ms")),
    ];
  }
  if ("done" in ev) {
    const d = ev.done;
    const u = usageBody(d.usage);
    return [
      4,
      stringField(d.finish_reason) + delimited(u) + stringField(d.model_id),
    ];
  }
  const e = ev.error;
  const u = usageBody(e.usage);
  return [
    5,
    uintField(checkUint32(e.code, "code")) + stringField(e.message) +
    uintField(checkUint32(e.retry_after_ms, "retry_after_ms")) + delimited(u),
  ];
}

/**
 * Encodes `ev` as one gRPC message: the 5-byte prefix (uncompressed, big
 * endian length) and the protobuf bytes.
 *
 * @throws {RangeError} if a number does not fit its uint32 field.
 */
export function encodeEventMessage(ev: GenerateEventPb): Buffer {
  const [field, body] = kindBody(ev);
  const size = stringField(ev.request_id) + delimited(body);
  const buf = Buffer.allocUnsafe(GRPC_PREFIX_BYTES + size);
  buf[0] = 0;
  buf[1] = size >>> 24;
  buf[2] = (size >>> 16) & 0xff;
  buf[3] = (size >>> 8) & 0xff;
  buf[4] = size & 0xff;

  const w = new Writer(buf, GRPC_PREFIX_BYTES);
  w.string(1, ev.request_id);
  w.tag(field, 2);
  w.varint(body);
  if ("chunk" in ev) {
    w.string(1, ev.chunk.text);
    const ids = ev.chunk.token_ids;
    if (ids.length > 0) {
      let n = 0;
      for (const id of ids) n += varintBytes(id);
      w.tag(2, 2);
      w.varint(n);
      for (const id of ids) w.varint(id);
    }
  } else if ("system" in ev) {
    w.uint(1, SYSTEM_KINDS[ev.system.kind] ?? 0);
    w.string(2, ev.system.text);
    w.uint(3, ev.system.eta_ms);
  } else if ("done" in ev) {
    w.string(1, ev.done.finish_reason);
    w.usage(2, ev.done.usage);
    w.string(3, ev.done.model_id);
  } else {
    w.uint(1, ev.error.code);
    w.string(2, ev.error.message);
    w.uint(3, ev.error.retry_after_ms);
    w.usage(4, ev.error.usage);
  }
  return buf;
}

/**
 * A serializer for grpc-js (`responseSerialize`): the same encoding without
 * the prefix, which grpc-js adds itself.
 */
export function serializeEvent(ev: GenerateEventPb): Buffer {
  return encodeEventMessage(ev).subarray(GRPC_PREFIX_BYTES);
}
