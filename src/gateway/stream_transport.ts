/**
 * The HTTP/2 side of a gRPC call, as the stream ledger (stream_ledger.ts)
 * writes to it: finding the call's stream and its connection's tap, and
 * writing every stream's events of one event-loop turn together.
 *
 * grpc-js offers no access to a call's HTTP/2 stream; version 1.14 keeps
 * it at `call.call[.nextCall...].stream`. Where it is not there (another
 * grpc-js), {@link transportOf} returns null and the ledger falls back to
 * `call.write()`. tests/e2e/backpressure_test.ts fails if that happens with
 * the pinned versions.
 *
 * @module
 */

import process from "node:process";
import { type ConnectionTap, tapSession } from "./connection_tap.ts";

/** The HTTP/2 stream under a grpc-js call, as far as the ledger needs it. */
export interface Http2StreamLike {
  readonly id?: number;
  write(chunk: Uint8Array): boolean;
  readonly destroyed: boolean;
  readonly closed: boolean;
  readonly writableEnded?: boolean;
  close(code: number): void;
  once(event: "close", listener: () => void): unknown;
  readonly session?: object | null;
}

/** A socket that can hold writes back for a while. */
export interface Corkable {
  cork(): void;
  uncork(): void;
}

/** Where a ledger writes, and what tells it what was sent. */
export interface LedgerTransport {
  stream: Http2StreamLike;
  tap: ConnectionTap;
  socket: Corkable | null;
}

/** The HTTP/2 stream of a grpc-js server call, or null. */
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
  if (!session || !stream || !tap || typeof stream.id !== "number") {
    return null;
  }
  return { stream, tap, socket: socketOf(session) };
}

const sockets = new WeakMap<object, Corkable | null>();

/**
 * A session's socket, as cork and uncork, once per session: node:http2
 * hands out the socket through a proxy that binds a new function on
 * every property read.
 */
function socketOf(session: object): Corkable | null {
  let c = sockets.get(session);
  if (c === undefined) {
    c = null;
    try {
      const s = (session as { socket?: Partial<Corkable> }).socket;
      const cork = s?.cork;
      const uncork = s?.uncork;
      if (typeof cork === "function" && typeof uncork === "function") {
        c = { cork, uncork };
      }
    } catch { /* no socket to cork: its writes go out one by one */ }
    sockets.set(session, c);
  }
  return c;
}

/** Something with events to hand to its stream at the end of the turn. */
export interface TurnWriter {
  readonly socket: Corkable | null;
  /** Writes what the turn queued; may throw, which fails only it. */
  flush(): void;
  /** Gives up on the stream after `flush` threw. */
  writeFailed(): void;
}

let dirty: TurnWriter[] = [];
let scheduled = false;

/** Calls `w.flush()` at the end of this turn, with every other one. */
export function flushAtEndOfTurn(w: TurnWriter): void {
  dirty.push(w);
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(flushTurn);
  }
}

function flushTurn(): void {
  scheduled = false;
  const writers = dirty;
  dirty = [];
  const corked = new Set<Corkable>();
  for (const w of writers) {
    const socket = w.socket;
    if (socket && !corked.has(socket)) {
      socket.cork();
      corked.add(socket);
    }
  }
  for (const w of writers) {
    try {
      w.flush();
    } catch {
      // A stream that cannot take a write is given up; the others still go.
      w.writeFailed();
    }
  }
  // node:http2 serializes the frames of a turn's writes in a nextTick of
  // its own, queued by those writes; uncorking in a nextTick queued after
  // them lets that run into the corked socket, so the frames of every
  // stream on a connection leave in one write.
  if (corked.size > 0) {
    process.nextTick(() => {
      for (const s of corked) s.uncork();
    });
  }
}
