import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { ScriptedWorker } from "../../tests/helpers/scripted_worker.ts";
import type { SidecarError } from "../errors.ts";
import { FakeClock } from "../util/clock.ts";
import { WorkerClient, type WorkerClientOptions } from "./client.ts";
import type {
  GenerationRequest,
  GenerationSink,
  WorkerDone,
} from "./exchange.ts";

type Event =
  | { chunk: string; ids: number[] }
  | { system: string; text: string }
  | { done: WorkerDone }
  | { error: SidecarError };

class Recorder implements GenerationSink {
  events: Event[] = [];
  chunk(text: string, ids: number[]) {
    this.events.push({ chunk: text, ids });
  }
  system(kind: string, text: string) {
    this.events.push({ system: kind, text });
  }
  done(d: WorkerDone) {
    this.events.push({ done: d });
  }
  fail(e: SidecarError) {
    this.events.push({ error: e });
  }
  get last(): Event | undefined {
    return this.events.at(-1);
  }
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

const isError = (e: Event): e is { error: SidecarError } => "error" in e;

function request(
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

async function setup(overrides: Partial<WorkerClientOptions> = {}) {
  const worker = await ScriptedWorker.listen();
  const client = new WorkerClient({
    socketPath: worker.path,
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
  });
  client.start();
  const peer = await worker.peer(0);
  return { worker, client, peer };
}

async function ready(client: WorkerClient): Promise<void> {
  const end = Date.now() + 3000;
  while (client.state.state !== "ready") {
    if (Date.now() > end) throw new Error(`client is ${client.state.state}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("client streams a worker's chunks and done to the sink", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);

    const gen = await peer.expect("generate");
    equal(gen.id, "a");
    equal(gen.credit, 4);
    await peer.send({ type: "chunk", id: "a", text: "Hel", token_ids: [1] });
    await peer.send({ type: "chunk", id: "a", text: "lo", token_ids: [2, 3] });
    await peer.send({
      type: "done",
      id: "a",
      finish_reason: "stop",
      usage: { prompt_tokens: 1, completion_tokens: 3 },
    });

    await sink.until((e) => "done" in e);
    deepStrictEqual(sink.events.slice(0, 2), [{ chunk: "Hel", ids: [1] }, {
      chunk: "lo",
      ids: [2, 3],
    }]);
    equal(client.inFlight, 0);
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("client grants credit in half-window batches as the gateway takes chunks", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    const r = client.submit(request("a"), sink);
    ok(r.ok);
    await peer.expect("generate");

    r.handle.grant(1);
    r.handle.grant(1);
    const credit = await peer.expect("credit");
    deepStrictEqual(credit, { type: "credit", id: "a", chunks: 2 });
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a chunk sent without credit fails only that generation", async () => {
  const { worker, client, peer } = await setup({ streamCreditChunks: 1 });
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    await peer.expect("generate");
    await peer.send({ type: "chunk", id: "a", text: "x", token_ids: [1] });
    await peer.send({ type: "chunk", id: "a", text: "y", token_ids: [2] });

    const e = await sink.until(isError);
    ok(isError(e));
    equal(e.error.kind, "worker_protocol");
    const cancel = await peer.expect("cancel");
    equal(cancel.reason, "protocol");
    equal(client.state.state, "ready");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a frame for an id not in flight closes the connection and fails generations", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    await peer.expect("generate");
    await peer.send({ type: "chunk", id: "ghost", text: "x", token_ids: [1] });

    const e = await sink.until(isError);
    ok(isError(e));
    equal(e.error.kind, "worker_protocol");
    match(e.error.message, /ghost/);
    await peer.waitClosed();
    // It reconnects on its own.
    const second = await worker.peer(1);
    await second.handshake();
    await ready(client);
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("an oversized frame header closes the connection before its body is read", async () => {
  const { worker, client, peer } = await setup({ maxFrameBytes: 1024 });
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    await peer.expect("generate");
    await peer.raw(new Uint8Array([0x7f, 0xff, 0xff, 0xff]));

    const e = await sink.until(isError);
    ok(isError(e));
    equal(e.error.grpcCode, 13);
    match(e.error.message, /exceeds max_frame_bytes 1024/);
    await peer.waitClosed();
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("generations beyond max_concurrency wait for a slot, then a full queue is refused", async () => {
  const { worker, client, peer } = await setup({ maxQueuedRequests: 1 });
  try {
    await peer.handshake({ max_concurrency: 1 });
    await ready(client);
    const first = new Recorder();
    const second = new Recorder();
    ok(client.submit(request("a"), first).ok);
    ok(client.submit(request("b"), second).ok);
    const third = client.submit(request("c"), new Recorder());
    ok(!third.ok);
    equal(third.error.kind, "worker_overloaded");
    equal(third.error.grpcCode, 8);

    await peer.expect("generate");
    equal(client.waiting, 1);
    await peer.send({
      type: "done",
      id: "a",
      finish_reason: "stop",
      usage: { prompt_tokens: 1, completion_tokens: 0 },
    });
    const gen = await peer.expect("generate");
    equal(gen.id, "b");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a worker that is not there fails submissions at once with a retry hint", async () => {
  const dir = await Deno.makeTempDir();
  const client = new WorkerClient({
    socketPath: `${dir}/absent.sock`,
    maxFrameBytes: 1 << 20,
    handshakeTimeoutMs: 1000,
    checkIntervalMs: 60_000,
    heartbeatTimeoutMs: 1000,
    reconnectDelayMs: 2000,
    reconnectMaxDelayMs: 4000,
    requestIdleTimeoutMs: 60_000,
    streamCreditChunks: 4,
    maxQueuedRequests: 2,
    queueTimeoutMs: 60_000,
    reloadGraceMs: 1000,
    maxHoldMs: 60_000,
    maxHeldRequests: 8,
    agent: "test",
  });
  try {
    client.start();
    const end = Date.now() + 2000;
    while (client.state.state !== "disconnected" && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 5));
    }
    const r = client.submit(request("a"), new Recorder());
    ok(!r.ok);
    equal(r.error.kind, "worker_unavailable");
    equal(r.error.grpcCode, 14);
    match(r.error.message, /Worker is restarting, please retry in \ds/);
    ok(r.error.retryAfterMs! > 0 && r.error.retryAfterMs! <= 4200);
  } finally {
    client.stop();
  }
});

Deno.test("a generation the worker stops answering fails after the idle timeout", async () => {
  const clock = new FakeClock();
  const { worker, client, peer } = await setup({
    clock,
    requestIdleTimeoutMs: 5000,
  });
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    await peer.expect("generate");

    clock.advance(4000);
    equal(sink.events.length, 0);
    clock.advance(1500);
    const e = await sink.until(isError);
    ok(isError(e));
    equal(e.error.kind, "worker_hung");
    equal((await peer.expect("cancel")).reason, "idle_timeout");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a missed pong marks the worker hung and fails what it was running", async () => {
  const clock = new FakeClock();
  const { worker, client, peer } = await setup({
    clock,
    checkIntervalMs: 1000,
    heartbeatTimeoutMs: 500,
  });
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    await peer.expect("generate");

    clock.advance(1000);
    const ping = await peer.expect("ping");
    await peer.send({ type: "pong", seq: ping.seq });
    await new Promise((r) => setTimeout(r, 50));
    clock.advance(1000);
    await peer.expect("ping");
    clock.advance(600);

    const e = await sink.until(isError);
    ok(isError(e));
    equal(e.error.kind, "worker_hung");
    // The fake clock also ran the 50 ms reconnect timer: a new attempt is under way.
    ok(["disconnected", "connecting"].includes(client.state.state));
    await peer.waitClosed();
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a pong later than the ping interval but within the heartbeat timeout keeps the worker", async () => {
  const clock = new FakeClock();
  const { worker, client, peer } = await setup({
    clock,
    checkIntervalMs: 1000,
    heartbeatTimeoutMs: 3000,
  });
  try {
    await peer.handshake();
    await ready(client);

    clock.advance(1000);
    const ping = await peer.expect("ping");
    // A whole ping interval passes before the pong, well within the timeout.
    clock.advance(1500);
    await peer.send({ type: "pong", seq: ping.seq });
    await new Promise((r) => setTimeout(r, 50));
    clock.advance(3000);

    equal(client.state.state, "ready");
    ok(!peer.closed);
    await peer.expect("ping");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("during a reload new generations are held, told the ETA, and resumed", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    await peer.send({
      type: "status",
      state: "reloading",
      eta_ms: 30000,
      message: "loading",
    });
    const end = Date.now() + 2000;
    while (client.state.state !== "reloading" && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 5));
    }

    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    const held = await sink.until((e) => "system" in e);
    deepStrictEqual(held, {
      system: "reloading",
      text: "[System] Loading new model, ETA 30s...",
    });

    await peer.send({ type: "status", state: "ready", model_id: "scripted-2" });
    const gen = await peer.expect("generate");
    equal(gen.id, "a");
    await sink.until((e) => "system" in e && e.system === "resumed");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a request id already in flight is refused", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    ok(client.submit(request("a"), new Recorder()).ok);
    const again = client.submit(request("a"), new Recorder());
    ok(!again.ok);
    equal(again.error.kind, "duplicate_request");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a request for another model fails with model_mismatch", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a", { modelId: "other" }), sink).ok);
    const e = await sink.until(isError);
    ok(isError(e));
    equal(e.error.grpcCode, 9);
  } finally {
    client.stop();
    worker.close();
  }
});
