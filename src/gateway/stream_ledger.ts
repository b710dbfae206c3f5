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
 *   for a whole `stallTimeoutMs` is reset (so between one and two timeouts
 *   after it last sent anything); what it had not taken is dropped, and so
 *   not billed either.
 * - **Coalescing.** Events written in one turn of the event loop go out as
 *   one write per stream (stream_transport.ts).
 *
 * Events go straight to the HTTP/2 stream, past grpc-js's per-message
 * writable (which completes one message per event-loop turn on Deno). The
 * call's headers still go through grpc-js (`sendMetadata`), and so does its
 * end (status and trailers), after the events written here. Where the
 * stream or the connection tap cannot be found, the ledger writes through
 * `call.write()` and counts an event as delivered when it is written.
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import type { Clock, TimerId } from "../util/clock.ts";
import type { StreamSink } from "./connection_tap.ts";
import { encodeEventMessage } from "./event_codec.ts";
import {
  type Corkable,
  flushAtEndOfTurn,
  type LedgerTransport,
  transportOf,
  type TurnWriter,
} from "./stream_transport.ts";
import type { GenerateEventPb } from "./types.ts";
import { concatBytes } from "../util/bytes.ts";

// A stream blocks above 16 KiB unsent (about 300 token events) and
// resumes below 4 KiB: small enough that 1,000 stalled streams hold 16 MiB,
// large enough that a gateway that reads never blocks on a burst.
export const HIGH_WATER_BYTES = 16 * 1024;
export const LOW_WATER_BYTES = 4 * 1024;

// NGHTTP2_CANCEL: the RST_STREAM code for a stream the sidecar gives up on.
const RST_CANCEL = 8;

/** A gRPC server call the ledger writes on. */
export interface LedgerCall {
  write(message: GenerateEventPb): boolean;
  sendMetadata(metadata: grpc.Metadata): void;
  on(event: "drain", listener: () => void): unknown;
}

/** Whoever owns events: told what was delivered, and when to resume. */
export interface LedgerOwner {
  /** `tokens` of this owner's events have left the sidecar. */
  delivered(tokens: number): void;
  /** The stream is no longer blocked. */
  release(): void;
}

/** An owner's place in a ledger; see {@link StreamLedger.slot}. */
export class LedgerSlot {
  readonly owner: LedgerOwner;
  /** Events written and not yet delivered. */
  pending = 0;
  /** Called once `pending` is 0 (or the stream is gone), then cleared. */
  onDelivered: (() => void) | null = null;

  constructor(owner: LedgerOwner) {
    this.owner = owner;
  }
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
  slot: LedgerSlot | null;
  tokens: number;
  /** Offset just past the entry's last byte, in bytes written. */
  end: number;
}

let toSettle: StreamLedger[] = [];

function settleAtEndOfTurn(l: StreamLedger): void {
  if (toSettle.length === 0) queueMicrotask(settleTurn);
  toSettle.push(l);
}

function settleTurn(): void {
  const ledgers = toSettle;
  toSettle = [];
  for (const l of ledgers) l.settleNow();
}

/** The events of one gRPC call, from written to delivered. */
export class StreamLedger implements TurnWriter, StreamSink {
  #call: LedgerCall;
  #t: LedgerTransport | null;
  #clock: Clock;
  #stallTimeoutMs: number;
  #onStall: ((unsentBytes: number) => void) | undefined;
  #headersSent = false;
  #parts: Uint8Array[] = [];
  #partsBytes = 0;
  /** Bytes handed to the HTTP/2 stream, and bytes it has sent. */
  #written = 0;
  #sent = 0;
  #entries: Entry[] = [];
  #head = 0;
  /** Slots waiting for their last event to be delivered (made on first use). */
  #waitingDelivery: Set<LedgerSlot> | null = null;
  /** Slots waiting for the stream to unblock (made on first use). */
  #waitingRelease: Set<LedgerSlot> | null = null;
  #blocked = false;
  #abandoned = false;
  #settleScheduled = false;
  #stallTimer: TimerId | null = null;
  /** `#sent` when the stall timer was last armed or looked. */
  #sentAtCheck = 0;

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
      t.tap.watch(t.stream.id!, this);
      t.stream.once("close", () => this.abandon());
    } else {
      call.on("drain", () => this.#unblock());
    }
  }

  /** True while the stream holds more unsent bytes than it should. */
  get blocked(): boolean {
    return this.#blocked;
  }

  /** True once the stream is gone: nothing written now is sent. */
  get abandoned(): boolean {
    return this.#abandoned;
  }

  /** Bytes written and not yet sent. */
  get unsentBytes(): number {
    return this.#partsBytes + this.#written - this.#sent;
  }

  /** The connection's socket, corked for a turn's flush. */
  get socket(): Corkable | null {
    return this.#t?.socket ?? null;
  }

  /**
   * @internal The tap's report: `bytes` more DATA bytes of this stream were
   * sent. Frames are being serialized right now: settle after that.
   */
  sent(bytes: number): void {
    this.#sent += bytes;
    if (!this.#settleScheduled) {
      this.#settleScheduled = true;
      settleAtEndOfTurn(this);
    }
  }

  /** @internal Called at the end of the turn in which bytes were sent. */
  settleNow(): void {
    this.#settleScheduled = false;
    this.#settle();
  }

  /** A place for `owner` in this ledger, to write its events with. */
  slot(owner: LedgerOwner): LedgerSlot {
    return new LedgerSlot(owner);
  }

  /**
   * Writes `ev` for `slot`; its `tokens` are delivered once its bytes are
   * sent. Events without a slot count nothing.
   */
  write(ev: GenerateEventPb, slot: LedgerSlot | null, tokens = 0): void {
    if (this.#abandoned) return;
    if (!this.#t) {
      if (!this.#call.write(ev)) this.#blocked = true;
      if (slot && tokens > 0) slot.owner.delivered(tokens);
      return;
    }

    const msg = encodeEventMessage(ev);
    if (this.#parts.length === 0) flushAtEndOfTurn(this);
    this.#parts.push(msg);
    this.#partsBytes += msg.length;
    this.#entries.push({ slot, tokens, end: this.#written + this.#partsBytes });
    if (slot) slot.pending++;
    if (this.unsentBytes > HIGH_WATER_BYTES) this.#blocked = true;
    if (this.#stallTimer === null) this.#armStallTimer();
  }

  /** Registers `slot` to be released when the stream unblocks. */
  wait(slot: LedgerSlot): void {
    (this.#waitingRelease ??= new Set()).add(slot);
  }

  /**
   * Calls `fn` once every event of `slot` has been sent, or the stream has
   * gone (at once when nothing is pending).
   */
  whenDelivered(slot: LedgerSlot, fn: () => void): void {
    if (slot.pending === 0 || this.#abandoned) {
      fn();
      return;
    }
    slot.onDelivered = fn;
    (this.#waitingDelivery ??= new Set()).add(slot);
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
   * A write to the stream threw: it is given up and reset, so that the
   * gateway sees the stream fail (and the call is cancelled, which stops
   * its generations) rather than end without their `done`.
   */
  writeFailed(): void {
    this.abandon();
    try {
      this.#t?.stream.close(RST_CANCEL);
    } catch { /* already closing */ }
  }

  /**
   * The stream is gone: nothing more will be sent. Slots waiting for
   * delivery are called now, with what was delivered before.
   */
  abandon(): void {
    if (this.#abandoned) return;
    this.#settle();
    this.#abandon();
  }

  /**
   * Hands the events written so far to the HTTP/2 stream now (also done at
   * the end of every turn). Call before ending the call: grpc-js writes the
   * status after what the stream holds.
   */
  flush(): void {
    const t = this.#t;
    if (this.#parts.length === 0 || !t) return;
    const parts = this.#parts;
    const bytes = this.#partsBytes;
    this.#parts = [];
    this.#partsBytes = 0;
    if (this.#abandoned) return;
    const s = t.stream;
    if (s.destroyed || s.closed || s.writableEnded) {
      this.abandon();
      return;
    }

    if (!this.#headersSent) {
      this.#headersSent = true;
      this.#call.sendMetadata(new grpc.Metadata());
    }
    this.#written += bytes;
    s.write(parts.length === 1 ? parts[0] : concatBytes(parts, bytes));
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
    const waiting = this.#waitingDelivery;
    this.#waitingDelivery = null;
    if (waiting) { for (const slot of waiting) this.#delivered(slot); }
    this.#unblock();
  }

  /** Delivers every entry whose bytes are out; updates the blocked state. */
  #settle(): void {
    if (this.#abandoned) return;
    const sent = this.#sent;
    const entries = this.#entries;
    let head = this.#head;
    while (head < entries.length && entries[head].end <= sent) {
      const e = entries[head++];
      const slot = e.slot;
      if (!slot) continue;
      if (e.tokens > 0) slot.owner.delivered(e.tokens);
      if (--slot.pending === 0 && slot.onDelivered) {
        this.#waitingDelivery?.delete(slot);
        this.#delivered(slot);
      }
    }
    if (head === entries.length) {
      this.#entries = [];
      head = 0;
    } else if (head > 1024) {
      this.#entries = entries.slice(head);
      head = 0;
    }
    this.#head = head;

    if (this.#blocked && this.unsentBytes <= LOW_WATER_BYTES) this.#unblock();
  }

  #delivered(slot: LedgerSlot): void {
    const fn = slot.onDelivered;
    slot.onDelivered = null;
    fn?.();
  }

  #unblock(): void {
    this.#blocked = false;
    const slots = this.#waitingRelease;
    if (!slots || slots.size === 0) return;
    this.#waitingRelease = null;
    for (const s of slots) s.owner.release();
  }

  // One timer per stream while it has unsent bytes, looking once per stall
  // timeout at whether anything was sent since it last looked: no clock
  // read per frame, and a reset between one and two timeouts after the
  // stream last sent anything.
  #armStallTimer(): void {
    this.#sentAtCheck = this.#sent;
    this.#stallTimer = this.#clock.setTimeout(() => {
      this.#stallTimer = null;
      if (this.#abandoned || this.unsentBytes === 0) return;
      if (this.#sent !== this.#sentAtCheck) {
        this.#armStallTimer();
        return;
      }
      this.#onStall?.(this.unsentBytes);
      this.resetIfPending();
    }, this.#stallTimeoutMs);
  }
}
