/**
 * A gateway that speaks HTTP/2 frame by frame over plain TCP, so that a test
 * decides flow control exactly: each stream starts with the window the test
 * gives it and gets more only when the test grants it. Every DATA byte the
 * sidecar sends is seen, so a test knows to the byte what the gateway was
 * sent, whatever it reads.
 *
 * Only what the tests need: request headers as HPACK literals, response
 * headers and trailers skipped (not decoded), SETTINGS and PING answered.
 */

import protobuf from "protobufjs";
import { SIDECAR_PROTO } from "../../src/gateway/proto_source.ts";
import { concatBytes, FRAME, h2Frame } from "./h2_frame.ts";

const root = protobuf.parse(SIDECAR_PROTO, { keepCase: true }).root;
const GenerateRequest = root.lookupType("cy.sidecar.v1.GenerateRequest");
const GenerateEvent = root.lookupType("cy.sidecar.v1.GenerateEvent");

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
const T = FRAME;
const F = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 };
const SETTINGS_ENABLE_PUSH = 0x2;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;

/** One decoded GenerateEvent, as protobufjs gives it. */
// deno-lint-ignore no-explicit-any
export type WireEvent = Record<string, any>;

/** What the gateway has seen of one stream. */
export interface WireStream {
  id: number;
  /** DATA payload bytes received. */
  dataBytes: number;
  /** Every complete gRPC message, decoded. */
  events: WireEvent[];
  /** Token ids in the chunk events received. */
  tokens: number;
  /** RST_STREAM error code, when the sidecar reset the stream. */
  resetCode: number | null;
  /** True once a frame with END_STREAM arrived (the trailers). */
  ended: boolean;
  /** Bytes of a message not complete yet. */
  partial: Uint8Array;
  /** Grant every DATA frame back at once (a gateway that reads). */
  autoGrant: boolean;
}

const frame = h2Frame;

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v);
  return b;
}

/** HPACK: a literal header field without indexing, new name, no Huffman. */
function literal(name: string, value: string): number[] {
  const enc = new TextEncoder();
  const n = enc.encode(name);
  const v = enc.encode(value);
  if (n.length > 126 || v.length > 126) throw new RangeError("header too long");
  return [0x00, n.length, ...n, v.length, ...v];
}

const concat = concatBytes;

/** One TCP connection speaking HTTP/2 to the sidecar's gRPC port. */
export class WireGateway {
  readonly streams = new Map<number, WireStream>();
  #conn: Deno.TcpConn;
  #nextId = 1;
  #buf: Uint8Array = new Uint8Array(0);
  #closed = false;
  #reading: Promise<void>;
  #changed: (() => void)[] = [];

  private constructor(conn: Deno.TcpConn, initialWindow: number) {
    this.#conn = conn;
    void this.#send(concat(
      PREFACE,
      frame(
        T.SETTINGS,
        0,
        0,
        new Uint8Array([
          0,
          SETTINGS_ENABLE_PUSH,
          ...u32(0),
          0,
          SETTINGS_INITIAL_WINDOW_SIZE,
          ...u32(initialWindow),
        ]),
      ),
    ));
    this.#reading = this.#readLoop();
  }

  /** Connects; every stream opened on it starts with `initialWindow` bytes. */
  static async connect(
    addr: string,
    initialWindow: number,
  ): Promise<WireGateway> {
    const [host, port] = [
      addr.slice(0, addr.lastIndexOf(":")),
      addr.slice(addr.lastIndexOf(":") + 1),
    ];
    const conn = await Deno.connect({ hostname: host, port: Number(port) });
    return new WireGateway(conn, initialWindow);
  }

  /** Starts a Generate call; returns its stream. */
  generate(
    request: Record<string, unknown>,
    opts: { autoGrant?: boolean } = {},
  ): WireStream {
    const id = this.#nextId;
    this.#nextId += 2;
    const s: WireStream = {
      id,
      dataBytes: 0,
      events: [],
      tokens: 0,
      resetCode: null,
      ended: false,
      partial: new Uint8Array(0),
      autoGrant: opts.autoGrant ?? false,
    };
    this.streams.set(id, s);

    const headers = new Uint8Array([
      ...literal(":method", "POST"),
      ...literal(":scheme", "http"),
      ...literal(":path", "/cy.sidecar.v1.Sidecar/Generate"),
      ...literal(":authority", "sidecar"),
      ...literal("content-type", "application/grpc"),
      ...literal("te", "trailers"),
    ]);
    const body = GenerateRequest.encode(GenerateRequest.fromObject(request))
      .finish();
    const msg = new Uint8Array(5 + body.length);
    new DataView(msg.buffer).setUint32(1, body.length);
    msg.set(body, 5);
    void this.#send(concat(
      frame(T.HEADERS, F.END_HEADERS, id, headers),
      frame(T.DATA, F.END_STREAM, id, msg),
    ));
    return s;
  }

  /** Lets the sidecar send `bytes` more on stream `id` (and the connection). */
  grant(id: number, bytes: number): Promise<void> {
    return this.#send(concat(
      frame(T.WINDOW_UPDATE, 0, id, u32(bytes)),
      frame(T.WINDOW_UPDATE, 0, 0, u32(bytes)),
    ));
  }

  /**
   * Resolves once nothing has arrived for `quietMs` (the sidecar has sent
   * what the windows allow), or rejects after `timeoutMs`.
   */
  async quiet(quietMs = 300, timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const arrived = new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), quietMs);
        this.#changed.push(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
      if (!await arrived) return;
      if (Date.now() > until) throw new Error("the sidecar never went quiet");
    }
  }

  /** Resolves once `pred` holds, checked after every frame. */
  async until(pred: () => boolean, timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!pred()) {
      if (this.#closed) throw new Error("connection closed");
      if (Date.now() > until) throw new Error("timed out waiting on the wire");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.#changed.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /**
   * Drops the TCP connection without a word (a gateway that vanished). The
   * write side is shut first: in Deno 2.8 a close alone leaves a pending
   * read (and the descriptor) open until the peer hangs up.
   */
  async drop(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        await this.#conn.closeWrite();
      } catch { /* already shut */ }
      try {
        this.#conn.close();
      } catch { /* already closed */ }
    }
    await this.#reading.catch(() => {});
  }

  async #send(bytes: Uint8Array): Promise<void> {
    if (this.#closed) return;
    try {
      let off = 0;
      while (off < bytes.length) {
        off += await this.#conn.write(bytes.subarray(off));
      }
    } catch { /* the connection is gone; the test sees it elsewhere */ }
  }

  async #readLoop(): Promise<void> {
    const chunk = new Uint8Array(64 * 1024);
    for (;;) {
      let n: number | null;
      try {
        n = await this.#conn.read(chunk);
      } catch {
        n = null;
      }
      if (n === null) {
        this.#closed = true;
        this.#notify();
        return;
      }
      this.#buf = concat(this.#buf, chunk.subarray(0, n));
      while (this.#buf.length >= 9) {
        const b = this.#buf;
        const len = (b[0] << 16) | (b[1] << 8) | b[2];
        if (b.length < 9 + len) break;
        const type = b[3];
        const flags = b[4];
        const id = new DataView(b.buffer, b.byteOffset).getUint32(5) &
          0x7fffffff;
        const payload = b.slice(9, 9 + len);
        this.#buf = b.slice(9 + len);
        this.#onFrame(type, flags, id, payload);
      }
      this.#notify();
    }
  }

  #onFrame(type: number, flags: number, id: number, payload: Uint8Array): void {
    const s = this.streams.get(id);
    switch (type) {
      case T.SETTINGS:
        if (!(flags & F.ACK)) {
          void this.#send(frame(T.SETTINGS, F.ACK, 0, new Uint8Array(0)));
        }
        return;
      case T.PING:
        if (!(flags & F.ACK)) void this.#send(frame(T.PING, F.ACK, 0, payload));
        return;
      case T.RST_STREAM:
        if (s) s.resetCode = new DataView(payload.buffer).getUint32(0);
        return;
      case T.HEADERS:
        if (s && flags & F.END_STREAM) s.ended = true;
        return;
      case T.DATA: {
        if (!s) return;
        s.dataBytes += payload.length;
        s.partial = concat(s.partial, payload);
        while (s.partial.length >= 5) {
          const mlen = new DataView(s.partial.buffer, s.partial.byteOffset)
            .getUint32(1);
          if (s.partial.length < 5 + mlen) break;
          const ev = GenerateEvent.toObject(
            GenerateEvent.decode(s.partial.subarray(5, 5 + mlen)),
            { defaults: true, oneofs: true, enums: String },
          );
          s.events.push(ev);
          if (ev.chunk) s.tokens += ev.chunk.token_ids.length;
          s.partial = s.partial.slice(5 + mlen);
        }
        if (flags & F.END_STREAM) s.ended = true;
        if (s.autoGrant && payload.length > 0) {
          void this.grant(id, payload.length);
        }
        return;
      }
    }
  }

  #notify(): void {
    for (const f of this.#changed.splice(0)) f();
  }
}
