/**
 * For the worker client's unit tests: a sink that records what a
 * generation gets, a client started against a scripted worker, and small
 * waits on real I/O (the socket side is real even with a fake clock).
 */

import { equal, match, ok } from "node:assert/strict";
import type { SidecarError } from "../../src/errors.ts";
import { createLogger, type Logger } from "../../src/log/logger.ts";
import {
  WorkerClient,
  type WorkerClientOptions,
} from "../../src/worker/client.ts";
import type {
  GenerationHandle,
  GenerationRequest,
  GenerationSink,
  WorkerDone,
} from "../../src/worker/exchange.ts";
import type { SidecarMessage } from "../../src/worker/messages.ts";
import { type ScriptedPeer, ScriptedWorker } from "./scripted_worker.ts";

/** What a generation's sink was told. */
export type Event =
  | { chunk: string; ids: number[] }
  | { system: string; text: string; etaMs: number }
  | { done: WorkerDone }
  | { error: SidecarError };

/** A sink that keeps every event, in order. */
export class Recorder implements GenerationSink {
  events: Event[] = [];
  chunk(text: string, ids: number[]) {
    this.events.push({ chunk: text, ids });
  }
  system(kind: string, text: string, etaMs: number) {
    this.events.push({ system: kind, text, etaMs });
  }
  done(d: WorkerDone) {
    this.events.push({ done: d });
  }
  fail(e: SidecarError) {
    this.events.push({ error: e });
  }
  /** Waits (in real time) for the first event matching `pred`. */
  async until(pred: (e: Event) => boolean, timeoutMs = 3000): Promise<Event> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const e = this.events.find(pred);
      if (e) return e;
      if (Date.now() > end) {
        throw new Error(`event not seen; got ${JSON.stringify(this.events)}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Waits (in real time) for the first failure and returns its error. */
  async failure(timeoutMs = 3000): Promise<SidecarError> {
    const e = await this.until(isError, timeoutMs);
    ok(isError(e));
    return e.error;
  }
}

/** Whether an event is a failure. */
export const isError = (e: Event): e is { error: SidecarError } => "error" in e;

/** A plain generation request with id `id`. */
export function request(
  id: string,
  extra: Partial<GenerationRequest> = {},
): GenerationRequest {
  return {
    id,
    sessionId: "s",
    modelId: "",
    prompt: "hi",
    sampling: { max_tokens: 4 },
    ...extra,
  };
}

/** Client options for tests: short reconnects, long everything else. */
export function clientOptions(
  socketPath: string,
  overrides: Partial<WorkerClientOptions> = {},
): WorkerClientOptions {
  return {
    socketPath,
    maxFrameBytes: 1 << 20,
    handshakeTimeoutMs: 1000,
    checkIntervalMs: 60_000,
    heartbeatTimeoutMs: 1000,
    reconnectDelayMs: 50,
    reconnectMaxDelayMs: 100,
    requestIdleTimeoutMs: 60_000,
    streamCreditChunks: 4,
    maxQueuedRequests: 2,
    queueTimeoutMs: 60_000,
    reloadGraceMs: 1000,
    maxHoldMs: 60_000,
    maxHeldRequests: 8,
    agent: "test",
    ...overrides,
  };
}

/** A generation the worker has been asked to run. */
export interface Running {
  sink: Recorder;
  handle: GenerationHandle;
  /** The `generate` frame the worker received. */
  frame: Extract<SidecarMessage, { type: "generate" }>;
}

/** A started client, the scripted worker it connects to, and its first connection. */
export interface ClientBed {
  worker: ScriptedWorker;
  client: WorkerClient;
  peer: ScriptedPeer;
  /**
   * Submits `request(id)` (default "a") to the ready client and waits
   * until the first connection receives its `generate`.
   */
  generating(id?: string): Promise<Running>;
  /**
   * Answers the handshake of connection number `n` (0-based, default 1)
   * and waits until the client is ready on it; returns that connection.
   */
  reconnected(n?: number): Promise<ScriptedPeer>;
  /**
   * Has the first connection announce a reload (`status` fields over
   * state "reloading") and waits until the client is reloading.
   */
  announceReload(status: Record<string, unknown>): Promise<void>;
}

/** How {@link withClient} starts the client; the rest are client options. */
export interface ClientBedOptions extends Partial<WorkerClientOptions> {
  /**
   * The welcome answered to the first `hello` (fields over the scripted
   * worker's), after which the client is ready before the test body runs.
   * `false`: the body scripts the handshake itself. Default `{}`.
   */
  welcome?: Record<string, unknown> | false;
}

/**
 * Starts a client against a scripted worker, runs `body`, then stops the
 * client and closes the worker, whether `body` passed or failed.
 */
export async function withClient(
  options: ClientBedOptions,
  body: (bed: ClientBed) => void | Promise<void>,
): Promise<void> {
  const { welcome = {}, ...overrides } = options;
  const worker = await ScriptedWorker.listen();
  const client = new WorkerClient(clientOptions(worker.path, overrides));
  try {
    client.start();
    const peer = await worker.peer(0);
    if (welcome !== false) {
      await peer.handshake(welcome);
      await ready(client);
    }
    await body({
      worker,
      client,
      peer,
      async generating(id = "a") {
        const sink = new Recorder();
        const submitted = client.submit(request(id), sink);
        ok(submitted.ok, `${id} was refused`);
        const frame = await peer.expect("generate");
        return { sink, handle: submitted.handle, frame };
      },
      async reconnected(n = 1) {
        const next = await worker.peer(n);
        await next.handshake();
        await ready(client);
        return next;
      },
      async announceReload(status) {
        await peer.send({ type: "status", state: "reloading", ...status });
        await eventually(
          "the client is reloading",
          () => client.state.state === "reloading",
        );
      },
    });
  } finally {
    await client.stop();
    worker.close();
  }
}

/**
 * Waits for the `error` frame the client sends the worker and checks that
 * it reports a protocol error whose message matches `message`.
 */
export async function expectProtocolError(
  peer: ScriptedPeer,
  message: RegExp,
): Promise<Extract<SidecarMessage, { type: "error" }>> {
  const err = await peer.expect("error");
  equal(err.code, "protocol");
  match(err.message, message);
  return err;
}

/** Polls `cond` in real time until it holds. */
export async function eventually(
  what: string,
  cond: () => boolean,
  timeoutMs = 3000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits until the client is `ready`. */
export function ready(client: WorkerClient): Promise<void> {
  return eventually(
    `the client is ready (it is ${client.state.state})`,
    () => client.state.state === "ready",
  );
}

/** A debug-level logger whose lines are kept, parsed. */
export function recordingLogger(): {
  log: Logger;
  lines: Record<string, unknown>[];
} {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({
    level: "debug",
    sink: (line) => lines.push(JSON.parse(line)),
  });
  return { log, lines };
}
