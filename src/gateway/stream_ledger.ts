/**
 * What a gateway stream has really been sent. One ledger per gRPC call
 * writes the call's events onto its HTTP/2 stream and follows each event
 * until its bytes have left the sidecar:
 *
 * - **Delivery.** A token is delivered once the DATA bytes of its event
 *   have been sent on the gateway's connection, which HTTP/2 flow control
 *   allows only within the window the gateway granted (counted by
 *   connection_tap.ts). Until then it is pending, and it is never billed if
 *   the stream dies first.
 * - **Backpressure.** A stream holding more than {@link HIGH_WATER_BYTES}
 *   unsent is blocked: its generations stop giving flow-control credit to
 *   the worker until it falls to {@link LOW_WATER_BYTES}, so a gateway
 *   that stops reading one call stops only that call's generations, and
 *   the sidecar holds a bounded amount for it.
 * - **Stalls.** A stream that holds unsent bytes and sends none of them
 *   for `stallTimeoutMs` is reset; what it had not taken is dropped, and so
 *   not billed either.
 * - **Coalescing.** Events written in one turn of the event loop go out as
 *   one write per stream, with the connections they use corked for the
 *   turn, so that a burst of tokens costs one socket write per connection.
 *
 * Events go straight to the HTTP/2 stream, past grpc-js's per-message
 * writable (which completes one message per event-loop turn on Deno). The
 * call's headers still go through grpc-js (`sendMetadata`), and so does its
 * end (status and trailers), after the events written here. Where the
 * stream or the connection tap cannot be found (another grpc-js or Deno),
 * the ledger writes through `call.write()` and counts an event as
 * delivered when it is written.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import process from "node:process";
import * as grpc from "@grpc/grpc-js";
import type { Clock, TimerId } from "../util/clock.ts";
import { type ConnectionTap, tapSession } from "./connection_tap.ts";
import { encodeEventMessage } from "./event_codec.ts";
import type { GenerateEventPb } from "./types.ts";

// A stream blocks above 16 KiB unsent (about 300 token events) and
// resumes below 4 KiB: small enough that 1,000 stalled streams hold 16 MiB,
// large enough that a gateway that reads never blocks on a burst.
export const HIGH_WATER_BYTES = 16 * 1024;
export const LOW_WATER_BYTES = 4 * 1024;

// NGHTTP2_CANCEL: the RST_STREAM code for a stream the sidecar gives up on.
const RST_CANCEL = 8;

/** The HTTP/2 stream under a grpc-js call, as far as the ledger needs it. */
export interface Http2StreamLike {
  readonly id?: number;
  write(chunk: Uint8Array): boolean;
  readonly destroyed: boolean;
  readonly closed: boolean;
  close(code: number): void;
  once(event: "close", listener: () => void): unknown;
  readonly session?: object | null;
}

/** A gRPC server call the ledger writes on. */
export interface LedgerCall {
  write(message: GenerateEventPb): boolean;
  sendMetadata(metadata: grpc.Metadata): void;
  on(event: "drain", listener: () => void): unknown;
}

/** Whoever owns the events: told what was delivered, and when to resume. */
export interface LedgerOwner {
  /** `tokens` of this owner's events have left the sidecar. */
  delivered(tokens: number): void;
  /** The stream is no longer blocked. */
  release(): void;
}

/** Where the ledger writes and what tells it what was sent (tests). */
export interface LedgerTransport {
  stream: Http2StreamLike;
  tap: ConnectionTap;
  socket: { cork(): void; uncork(): void } | null;
}

/** Options of {@link StreamLedger}. */
export interface LedgerOptions {
  clock: Clock;
  /** A stream with unsent bytes that sends none for this long is reset. */
  stallTimeoutMs: number;
  /** Called before a stalled stream is reset, with its unsent bytes. */
  onStall?: (unsentBytes: number) => void;
  /** Found on the call when not given; null forces the fallback. */
  transport?: LedgerTransport | null;
}

interface Entry {
  owner: LedgerOwner | null;
  tokens: number;
  /** Offset just past the entry's last byte, in bytes written. */
  end: number;
}

interface OwnerState {
  pending: number;
  delivered: (() => void) | null;
}

/**
 * The HTTP/2 stream of a grpc-js server call, or null when this grpc-js
 * does not keep it where 1.14 does (`call.call[.nextCall...].stream`).
 */
export function http2StreamOf(call: unknown): Http2StreamLike | null {
  let c = (call as { call?: unknown })?.call as Record<string, unknown> | null;
  for (let i = 0; c && i < 8 && !("stream" in c); i++) {
    c = c.nextCall as Record<string, unknown> | null;
  }
  const s = c?.stream as Http2StreamLike | undefined;
  return s && typeof s.write === "function" && typeof s.close === "function"
    ? s
    : null;
}

/** The transport of a call: its HTTP/2 stream, tapped; null if not found. */
export function transportOf(call: unknown): LedgerTransport | null {
  const stream = http2StreamOf(call);
  const session = stream?.session ?? null;
  const tap = tapSession(session);
  if (!stream || !tap || typeof stream.id !== "number") return null;
  let socket: LedgerTransport["socket"] = null;
  try {
    const s = (session as { socket?: { cork?: unknown; uncork?: unknown } })
      .socket;
    if (typeof s?.cork === "function" && typeof s?.uncork === "function") {
      socket = s as LedgerTransport["socket"];
    }
  } catch { /* no socket to cork: writes go out one by one */ }
  return { stream, tap, socket };
}

// ---- one flush per event-loop turn, for every ledger written in it ----

let dirty: StreamLedger[] = [];
let flushScheduled = false;

function scheduleFlush(ledger: StreamLedger): void {
  dirty.push(ledger);
  if (!flushScheduled) {
    flushScheduled = true;
    queueMicrotask(flushDirty);
  }
}

function flushDirty(): void {
  flushScheduled = false;
  const ledgers = dirty;
  dirty = [];
  const corked: { cork(): void; uncork(): void }[] = [];
  for (const l of ledgers) {
    const socket = l.socket;
    if (socket && !corked.includes(socket)) {
      socket.cork();
      corked.push(socket);
    }
  }
  try {
    for (const l of ledgers) l.flush();
  } finally {
    // node:http2 serializes the frames of a turn's writes in a nextTick of
    // its own, queued by those writes; uncorking in a nextTick queued after
    // them lets that run into the corked socket, so the frames of every
    // stream on a connection leave in one write.
    if (corked.length > 0) {
      process.nextTick(() => {
        for (const s of corked) s.uncork();
      });
    }
  }
}

/** The events of one gRPC call, from written to delivered. */
export class StreamLedger {
  #call: LedgerCall;
  #t: LedgerTransport | null;
  #clock: Clock;
  #stallTimeoutMs: number;
  #onStall: ((unsentBytes: number) => void) | undefined;
  #headersSent = false;
  #parts: Buffer[] = [];
  #partsBytes = 0;
  /** Bytes handed to the HTTP/2 stream, and bytes it has sent. */
  #written = 0;
  #sent = 0;
  #entries: Entry[] = [];
  #head = 0;
  #owners = new Map<LedgerOwner, OwnerState>();
  #waiters = new Set<LedgerOwner>();
  #blocked = false;
  #abandoned = false;
  #settleScheduled = false;
  #stallTimer: TimerId | null = null;
  #progressAt = 0;

  constructor(call: LedgerCall, options: LedgerOptions) {
    this.#call = call;
    this.#clock = options.clock;
    this.#stallTimeoutMs = options.stallTimeoutMs;
    this.#onStall = options.onStall;
    this.#t = options.transport === undefined
      ? transportOf(call)
      : options.transport;
    const t = this.#t;
    if (t) {
      t.tap.watch(t.stream.id!, {
        sent: (bytes) => {
          this.#sent += bytes;
          this.#progressAt = this.#clock.now();
          // Frames are being serialized right now: settle after that.
          if (!this.#settleScheduled) {
            this.#settleScheduled = true;
            queueMicrotask(() => {
              this.#settleScheduled = false;
              this.#settle();
            });
          }
        },
      });
      t.stream.once("close", () => this.abandon());
    } else {
      call.on("drain", () => this.#unblock());
    }
  }

  /** Whether events are followed to the wire (false: the fallback). */
  get tracked(): boolean {
    return this.#t !== null;
  }

  /** True while the stream holds more unsent bytes than it should. */
  get blocked(): boolean {
    return this.#blocked;
  }

  /** Bytes written and not yet sent. */
  get unsentBytes(): number {
    return this.#partsBytes + this.#written - this.#sent;
  }

  /** @internal The connection's socket, corked for a turn's flush. */
  get socket(): { cork(): void; uncork(): void } | null {
    return this.#t?.socket ?? null;
  }

  /**
   * Writes `ev` for `owner`; its `tokens` are delivered once its bytes are
   * sent. Events without an owner count nothing.
   */
  write(ev: GenerateEventPb, owner: LedgerOwner | null, tokens = 0): void {
    if (this.#abandoned) return;
    if (!this.#t) {
      if (!this.#call.write(ev)) this.#blocked = true;
      if (owner && tokens > 0) owner.delivered(tokens);
      return;
    }

    const msg = encodeEventMessage(ev);
    if (this.unsentBytes === 0) this.#progressAt = this.#clock.now();
    this.#parts.push(msg);
    this.#partsBytes += msg.length;
    this.#entries.push({
      owner,
      tokens,
      end: this.#written + this.#partsBytes,
    });
    if (owner) this.#state(owner).pending++;
    if (this.#parts.length === 1) scheduleFlush(this);
    if (this.unsentBytes > HIGH_WATER_BYTES) this.#blocked = true;
    this.#armStallTimer();
  }

  /** Registers `owner` to be released when the stream unblocks. */
  wait(owner: LedgerOwner): void {
    this.#waiters.add(owner);
  }

  /**
   * Calls `fn` once every event of `owner` has been sent, or the stream
   * has gone (at once when nothing is pending). Then forgets the owner.
   */
  whenDelivered(owner: LedgerOwner, fn: () => void): void {
    const s = this.#owners.get(owner);
    if (!s || s.pending === 0 || this.#abandoned) {
      this.#owners.delete(owner);
      fn();
      return;
    }
    s.delivered = fn;
  }

  /**
   * Hands what was written so far to the HTTP/2 stream now, before the
   * call ends: grpc-js writes the status after it.
   */
  flushNow(): void {
    this.flush();
  }

  /**
   * Resets the stream if it still holds unsent bytes: they are dropped and
   * not delivered. Returns whether it reset.
   */
  resetIfPending(): boolean {
    this.flush();
    if (!this.#t || this.#abandoned || this.unsentBytes === 0) return false;
    this.#abandon();
    try {
      this.#t.stream.close(RST_CANCEL);
    } catch { /* already closing */ }
    return true;
  }

  /**
   * The stream is gone: nothing more will be sent. Owners waiting for
   * delivery are called now, with what was delivered before.
   */
  abandon(): void {
    if (this.#abandoned) return;
    this.#settle();
    this.#abandon();
  }

  /** @internal Hands this turn's events to the HTTP/2 stream. */
  flush(): void {
    const t = this.#t;
    if (this.#parts.length === 0 || !t) return;
    const parts = this.#parts;
    const bytes = this.#partsBytes;
    this.#parts = [];
    this.#partsBytes = 0;
    if (this.#abandoned) return;
    if (t.stream.destroyed || t.stream.closed) {
      this.abandon();
      return;
    }

    if (!this.#headersSent) {
      this.#headersSent = true;
      this.#call.sendMetadata(new grpc.Metadata());
    }
    this.#written += bytes;
    t.stream.write(parts.length === 1 ? parts[0] : Buffer.concat(parts, bytes));
  }

  #abandon(): void {
    this.#abandoned = true;
    if (this.#t) this.#t.tap.forget(this.#t.stream.id!);
    if (this.#stallTimer !== null) this.#clock.clearTimeout(this.#stallTimer);
    this.#stallTimer = null;
    this.#parts = [];
    this.#partsBytes = 0;
    this.#entries = [];
    this.#head = 0;
    const owners = [...this.#owners.values()];
    this.#owners.clear();
    for (const s of owners) s.delivered?.();
    this.#unblock();
  }

  /** Delivers every entry whose bytes are out; updates the blocked state. */
  #settle(): void {
    if (this.#abandoned) return;
    const sent = this.#sent;
    const entries = this.#entries;
    let done: (() => void)[] | null = null;
    while (this.#head < entries.length && entries[this.#head].end <= sent) {
      const e = entries[this.#head++];
      if (!e.owner) continue;
      if (e.tokens > 0) e.owner.delivered(e.tokens);
      const s = this.#owners.get(e.owner);
      if (s && --s.pending === 0) {
        this.#owners.delete(e.owner);
        if (s.delivered) (done ??= []).push(s.delivered);
      }
    }
    if (this.#head === entries.length) {
      this.#entries = [];
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#entries = entries.slice(this.#head);
      this.#head = 0;
    }

    if (this.#blocked && this.unsentBytes <= LOW_WATER_BYTES) this.#unblock();
    if (done) { for (const fn of done) fn(); }
  }

  #state(owner: LedgerOwner): OwnerState {
    let s = this.#owners.get(owner);
    if (!s) {
      s = { pending: 0, delivered: null };
      this.#owners.set(owner, s);
    }
    return s;
  }

  #unblock(): void {
    this.#blocked = false;
    if (this.#waiters.size === 0) return;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const w of waiters) w.release();
  }

  // One timer per stream with unsent bytes, re-armed at most once per
  // stall timeout: it looks at when bytes last went out, not at every write.
  #armStallTimer(): void {
    if (this.#stallTimer !== null) return;
    const check = () => {
      this.#stallTimer = null;
      if (this.#abandoned || this.unsentBytes === 0) return;
      const idle = this.#clock.now() - this.#progressAt;
      if (idle >= this.#stallTimeoutMs) {
        this.#onStall?.(this.unsentBytes);
        this.resetIfPending();
        return;
      }
      this.#stallTimer = this.#clock.setTimeout(
        check,
        this.#stallTimeoutMs - idle,
      );
    };
    this.#stallTimer = this.#clock.setTimeout(check, this.#stallTimeoutMs);
  }
}
