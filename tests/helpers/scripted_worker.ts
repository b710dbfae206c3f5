/**
 * A worker whose every frame the test scripts, listening on a real Unix
 * socket. For checking how the sidecar's side reacts to a worker that
 * misbehaves in ways the reference package never would.
 */

import { encodeFrame, FrameDecoder } from "../../src/worker/framing.ts";
import {
  decodeSidecarMessage,
  type SidecarMessage,
} from "../../src/worker/messages.ts";

/**
 * A scripted worker's `welcome`: a ready worker of protocol version 1, with
 * `fields` over those defaults.
 */
export function welcomeFrame(
  fields: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    type: "welcome",
    version: 1,
    worker: "scripted/1",
    model_id: "scripted-1",
    max_concurrency: 4,
    max_frame_bytes: 1 << 20,
    state: "ready",
    ...fields,
  };
}

/** One accepted connection, seen from the worker's side. */
export class ScriptedPeer {
  readonly conn: Deno.UnixConn;
  #decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
  #inbox: SidecarMessage[] = [];
  #waiters: (() => void)[] = [];
  /** Every message received, in order (`expect` does not remove from it). */
  readonly received: SidecarMessage[] = [];
  closed = false;
  #autoPong = false;

  constructor(conn: Deno.UnixConn) {
    this.conn = conn;
    void this.#read();
  }

  async #read(): Promise<void> {
    try {
      for (;;) {
        const n = await this.conn.read(this.#decoder.space());
        if (n === null) break;
        this.#decoder.commit(n);
        for (;;) {
          const f = this.#decoder.next();
          if (!f.ok || f.payload === null) break;
          const m = decodeSidecarMessage(f.payload);
          if (!m.ok) continue;
          this.received.push(m.value);
          if (this.#autoPong && m.value.type === "ping") {
            void this.send({ type: "pong", seq: m.value.seq }).catch(() => {});
          } else {
            this.#inbox.push(m.value);
          }
        }
        this.#wake();
      }
    } catch { /* closed */ }
    this.closed = true;
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Waits for the next message of `type` (skipping pings unless asked). */
  async expect<T extends SidecarMessage["type"]>(
    type: T,
    timeoutMs = 3000,
  ): Promise<Extract<SidecarMessage, { type: T }>> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#inbox.findIndex((m) => m.type === type);
      if (i >= 0) {
        return this.#inbox.splice(i, 1)[0] as Extract<
          SidecarMessage,
          { type: T }
        >;
      }
      if (this.closed) {
        throw new Error(`connection closed while waiting for ${type}`);
      }
      if (Date.now() > until) {
        throw new Error(`no ${type} within ${timeoutMs} ms`);
      }
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 20);
      });
    }
  }

  /** Answers every ping at once from now on (pings no longer reach `expect`). */
  autoPong(): void {
    this.#autoPong = true;
  }

  /** Sends a message as a frame. */
  async send(msg: Record<string, unknown>): Promise<void> {
    await this.conn.write(encodeFrame(msg));
  }

  /** Sends raw bytes. */
  async raw(bytes: Uint8Array): Promise<void> {
    await this.conn.write(bytes);
  }

  /** Answers `hello` with a {@link welcomeFrame} of `welcome`'s fields. */
  async handshake(welcome: Record<string, unknown> = {}): Promise<void> {
    await this.expect("hello");
    await this.send(welcomeFrame(welcome));
  }

  /** Waits until the sidecar closes the connection. */
  async waitClosed(timeoutMs = 3000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > until) throw new Error("connection still open");
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* already */ }
  }
}

/** A listening scripted worker. */
export class ScriptedWorker {
  readonly path: string;
  #listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  #peers: ScriptedPeer[] = [];
  #waiters: (() => void)[] = [];
  #answerAll = false;

  private constructor(
    path: string,
    listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>,
  ) {
    this.path = path;
    this.#listener = listener;
    void this.#accept();
  }

  static async listen(): Promise<ScriptedWorker> {
    const dir = await Deno.makeTempDir({ prefix: "cyw" });
    const path = `${dir}/w.sock`;
    return new ScriptedWorker(path, Deno.listen({ transport: "unix", path }));
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        const peer = new ScriptedPeer(conn);
        this.#peers.push(peer);
        if (this.#answerAll) this.#answer(peer);
        for (const w of this.#waiters.splice(0)) w();
      }
    } catch { /* closed */ }
  }

  /**
   * From now on, completes the handshake of every open and future
   * connection at once, and answers its pings: a worker that behaves,
   * for tests that only script what comes after the handshake. Like such
   * a worker, it also closes its end of the connections the sidecar has
   * ended (until then a scripted peer holds them, as a stopped worker
   * would).
   */
  answerAll(): void {
    this.#answerAll = true;
    for (const p of this.#peers) {
      if (p.closed) p.close();
      else this.#answer(p);
    }
  }

  #answer(peer: ScriptedPeer): void {
    peer.autoPong();
    peer.handshake().catch(() => {/* the sidecar gave up on it */});
  }

  /** The most recent connection that is still open, if any. */
  get live(): ScriptedPeer | undefined {
    return this.#peers.findLast((p) => !p.closed);
  }

  /** How many connections have been accepted so far. */
  get accepted(): number {
    return this.#peers.length;
  }

  /** The n-th accepted connection (0-based), waiting for it. */
  async peer(n = 0, timeoutMs = 3000): Promise<ScriptedPeer> {
    const until = Date.now() + timeoutMs;
    while (this.#peers.length <= n) {
      if (Date.now() > until) {
        throw new Error(`no connection #${n} within ${timeoutMs} ms`);
      }
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 20);
      });
    }
    return this.#peers[n];
  }

  close(): void {
    for (const p of this.#peers) p.close();
    try {
      this.#listener.close();
    } catch { /* already */ }
    Deno.remove(this.path).catch(() => {});
  }
}
