/**
 * For the worker client's unit tests: a sink that records what a
 * generation gets, a client started against a scripted worker, and small
 * waits on real I/O (the socket side is real even with a fake clock).
 */

import type { SidecarError } from "../../src/errors.ts";
import { createLogger, type Logger } from "../../src/log/logger.ts";
import {
  WorkerClient,
  type WorkerClientOptions,
} from "../../src/worker/client.ts";
import type {
  GenerationRequest,
  GenerationSink,
  WorkerDone,
} from "../../src/worker/exchange.ts";
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

/** A started client and the scripted worker it connected to. */
export async function setup(
  overrides: Partial<WorkerClientOptions> = {},
): Promise<
  { worker: ScriptedWorker; client: WorkerClient; peer: ScriptedPeer }
> {
  const worker = await ScriptedWorker.listen();
  const client = new WorkerClient(clientOptions(worker.path, overrides));
  client.start();
  const peer = await worker.peer(0);
  return { worker, client, peer };
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
