/**
 * A driver for one `Sidecar.Session` stream in end-to-end tests: sends
 * `generate` and `cancel` messages and sorts the interleaved events by
 * request_id, so a test can wait for one generation's end while the others
 * keep streaming.
 */

// deno-lint-ignore-file no-explicit-any -- grpc-js clients are untyped stubs
import type * as grpc from "@grpc/grpc-js";
import type { GenerateEventPb } from "../../src/gateway/types.ts";
import { within } from "./harness.ts";

/** An event as the client decodes it (`kind` names the oneof member). */
export type SessionEvent = GenerateEventPb & { kind: string };

/** The events of one generation, in arrival order, and how it ended. */
export interface SessionGeneration {
  events: SessionEvent[];
  tokenIds: number[];
  /** The final `done` or `error` event. */
  last: SessionEvent;
}

/** One open Session call. */
export class SessionDriver {
  readonly call: grpc.ClientDuplexStream<unknown, SessionEvent>;
  /** Every event, in arrival order. */
  readonly events: SessionEvent[] = [];
  /** The call's final status, once it has one. */
  status: grpc.StatusObject | null = null;
  readonly #byId = new Map<string, SessionEvent[]>();
  readonly #waiters = new Map<string, ((g: SessionGeneration) => void)[]>();
  readonly #closed: Promise<void>;

  constructor(client: grpc.Client & Record<string, any>) {
    this.call = client.Session();
    this.call.on("data", (ev: SessionEvent) => this.#onEvent(ev));
    this.#closed = new Promise((resolve) => {
      this.call.on("status", (s: grpc.StatusObject) => {
        this.status = s;
        resolve();
      });
    });
    // A failed call also reports its status; the error itself is expected
    // in tests that end the call abruptly.
    this.call.on("error", () => {});
  }

  /** Starts a generation on the stream. */
  generate(request: Record<string, unknown>): void {
    this.call.write({ generate: request });
  }

  /** Asks for one generation to stop. */
  cancel(requestId: string): void {
    this.call.write({ cancel: { request_id: requestId } });
  }

  /** Half-closes the stream: no more requests from this side. */
  end(): void {
    this.call.end();
  }

  /** The events seen so far for `requestId`. */
  eventsOf(requestId: string): SessionEvent[] {
    return this.#byId.get(requestId) ?? [];
  }

  /** Resolves once `requestId` has its `done` or `error` event. */
  finished(requestId: string): Promise<SessionGeneration> {
    const ended = this.#ended(requestId);
    if (ended) return Promise.resolve(ended);
    return new Promise((resolve) => {
      const list = this.#waiters.get(requestId) ?? [];
      list.push(resolve);
      this.#waiters.set(requestId, list);
    });
  }

  /** Resolves once the server has ended the call. */
  closed(): Promise<void> {
    return this.#closed;
  }

  /**
   * Half-closes the stream and waits, at most `timeoutMs`, until the
   * server ends the call; returns the call's final status.
   */
  async finish(timeoutMs = 15_000): Promise<grpc.StatusObject | null> {
    this.end();
    await within("the session's end", this.#closed, timeoutMs);
    return this.status;
  }

  #onEvent(ev: SessionEvent): void {
    this.events.push(ev);
    const list = this.#byId.get(ev.request_id) ?? [];
    list.push(ev);
    this.#byId.set(ev.request_id, list);
    if (ev.kind !== "done" && ev.kind !== "error") return;
    const ended = this.#ended(ev.request_id)!;
    for (const w of this.#waiters.get(ev.request_id) ?? []) w(ended);
    this.#waiters.delete(ev.request_id);
  }

  #ended(requestId: string): SessionGeneration | null {
    const events = this.#byId.get(requestId) ?? [];
    const last = events.findLast((e) =>
      e.kind === "done" || e.kind === "error"
    );
    if (!last) return null;
    const tokenIds = events.flatMap((e) =>
      "chunk" in e && e.kind === "chunk" ? e.chunk.token_ids : []
    );
    return { events, tokenIds, last };
  }
}
