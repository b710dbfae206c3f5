import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { ScriptedWorker } from "../../tests/helpers/scripted_worker.ts";
import type { SidecarError } from "../errors.ts";
import { FakeClock } from "../util/clock.ts";
import { WorkerClient, type WorkerClientOptions } from "./client.ts";
import type { WorkerState } from "./state.ts";
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

/** Polls `cond` in real time (the socket side is real even with a fake clock). */
async function eventually(
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

Deno.test("a worker that accepts the connection but never answers hello fails the handshake at the timeout, and is retried", async () => {
  const clock = new FakeClock();
  const kinds: string[] = [];
  const { worker, client, peer } = await setup({
    clock,
    handshakeTimeoutMs: 1000,
    onConnectionError: (kind) => kinds.push(kind),
  });
  try {
    await peer.expect("hello");
    clock.advance(999);
    await new Promise((r) => setTimeout(r, 20));
    equal(client.state.state, "connecting");

    clock.advance(1);
    await eventually(
      "the handshake fails",
      () => client.state.state === "disconnected",
    );
    deepStrictEqual(kinds, ["handshake"]);
    const s = client.state as WorkerState;
    if (s.state !== "disconnected") throw new Error(`state is ${s.state}`);
    match(s.lastError, /did not answer hello within 1000 ms/);
    // The worker is told by end-of-file that the sidecar gave up.
    await peer.waitClosed();

    // The first retry comes exactly reconnect_delay later.
    clock.advance(49);
    await new Promise((r) => setTimeout(r, 20));
    equal(worker.accepted, 1);
    clock.advance(1);
    const second = await worker.peer(1);
    await second.handshake();
    await ready(client);
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a worker that sends something else than welcome first is told why before the connection closes", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.expect("hello");
    await peer.send({ type: "pong", seq: 1 });
    const err = await peer.expect("error");
    equal(err.code, "protocol");
    match(err.message, /expected "welcome" as the first frame, got "pong"/);
    ok(!("id" in err));
    await peer.waitClosed();
  } finally {
    client.stop();
    worker.close();
  }
});

for (
  const [what, frame, expected] of [
    [
      "a frame for an id not in flight",
      { type: "chunk", id: "ghost", text: "x", token_ids: [1] },
      /"ghost", which is not in flight/,
    ],
    [
      "a second welcome",
      {
        type: "welcome",
        version: 1,
        worker: "w",
        model_id: "m",
        max_concurrency: 1,
        max_frame_bytes: 1 << 20,
        state: "ready",
      },
      /unexpected second welcome/,
    ],
    [
      "a malformed frame",
      { type: "chunk", id: "a", text: 5, token_ids: [] },
      /"text" must be a string/,
    ],
  ] as const
) {
  Deno.test(`${what} is reported to the worker in an error frame, then the connection closes`, async () => {
    const { worker, client, peer } = await setup();
    try {
      await peer.handshake();
      await ready(client);
      await peer.send(frame);

      const err = await peer.expect("error");
      equal(err.code, "protocol");
      match(err.message, expected);
      ok(!("id" in err));
      await peer.waitClosed();
    } finally {
      client.stop();
      worker.close();
    }
  });
}

Deno.test("an oversized frame header is reported to the worker in an error frame", async () => {
  const { worker, client, peer } = await setup({ maxFrameBytes: 1024 });
  try {
    await peer.handshake();
    await ready(client);
    await peer.raw(new Uint8Array([0x7f, 0xff, 0xff, 0xff]));

    const err = await peer.expect("error");
    equal(err.code, "protocol");
    match(err.message, /exceeds max_frame_bytes 1024/);
    await peer.waitClosed();
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a connection-level error from the worker is not answered with an error frame", async () => {
  const kinds: string[] = [];
  const { worker, client, peer } = await setup({
    onConnectionError: (kind) => kinds.push(kind),
  });
  try {
    await peer.handshake();
    await ready(client);
    await peer.send({ type: "error", code: "internal", message: "going" });

    await peer.waitClosed();
    deepStrictEqual(kinds, ["protocol"]);
    ok(!peer.received.some((m) => m.type === "error"), "no error frame back");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("stop() cancels what runs on the worker with reason shutdown before closing, and fails it with a retry hint", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake();
    await ready(client);
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    const waiting = new Recorder();
    ok(client.submit(request("b"), new Recorder()).ok);
    await peer.expect("generate");
    await peer.expect("generate");
    await peer.send({ type: "status", state: "reloading", eta_ms: 1000 });
    await eventually("reloading", () => client.state.state === "reloading");
    ok(client.submit(request("c"), waiting).ok);

    await client.stop();

    const cancels = [await peer.expect("cancel"), await peer.expect("cancel")];
    deepStrictEqual(cancels.map((c) => [c.id, c.reason]).sort(), [
      ["a", "shutdown"],
      ["b", "shutdown"],
    ]);
    await peer.waitClosed();
    for (const r of [sink, waiting]) {
      const e = r.events.find(isError);
      ok(e, `failed: ${JSON.stringify(r.events)}`);
      equal(e.error.kind, "shutting_down");
      equal(e.error.grpcCode, 14);
      ok(e.error.retryAfterMs! > 0, "a retry pushback");
    }
    equal(client.state.state, "stopped");
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a generate larger than the worker's max_frame_bytes fails with INVALID_ARGUMENT naming the field and both sizes", async () => {
  const { worker, client, peer } = await setup();
  try {
    await peer.handshake({ max_frame_bytes: 1024 });
    await ready(client);

    const prompt = new Recorder();
    ok(client.submit(request("p", { prompt: "x".repeat(2000) }), prompt).ok);
    const chat = new Recorder();
    ok(
      client.submit(
        request("m", {
          prompt: undefined,
          messages: [{ role: "user", content: "é".repeat(1000) }],
        }),
        chat,
      ).ok,
    );

    const p = prompt.events.find(isError);
    ok(p);
    equal(p.error.grpcCode, 3);
    match(
      p.error.message,
      /^prompt: 2000 bytes is too large for the worker: the generate frame would be \d+ bytes, over the worker's max_frame_bytes of 1024$/,
    );
    const m = chat.events.find(isError);
    ok(m);
    equal(m.error.grpcCode, 3);
    match(m.error.message, /^messages: 2\d\d\d bytes is too large/);

    // Nothing reached the worker, and the connection is fine.
    equal(client.inFlight, 0);
    const ok2 = new Recorder();
    ok(client.submit(request("small"), ok2).ok);
    equal((await peer.expect("generate")).id, "small");
    ok(!peer.received.some((x) => x.type === "generate" && x.id !== "small"));
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a request waiting for a slot fails with RESOURCE_EXHAUSTED and a pushback after queue_timeout", async () => {
  const clock = new FakeClock();
  const { worker, client, peer } = await setup({
    clock,
    queueTimeoutMs: 2000,
  });
  try {
    await peer.handshake({ max_concurrency: 1 });
    await ready(client);
    ok(client.submit(request("a"), new Recorder()).ok);
    const queued = new Recorder();
    ok(client.submit(request("b"), queued).ok);
    await peer.expect("generate");
    equal(client.waiting, 1);

    clock.advance(1750);
    equal(queued.events.length, 0);
    clock.advance(500);

    const e = queued.events.find(isError);
    ok(e);
    equal(e.error.kind, "worker_overloaded");
    equal(e.error.grpcCode, 8);
    ok(e.error.retryAfterMs! > 0);
    match(e.error.message, /no worker slot became free within 2000 ms/);
    equal(client.waiting, 0);
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("during a reload, requests beyond max_held_requests are refused at once with UNAVAILABLE and a pushback", async () => {
  const { worker, client, peer } = await setup({ maxHeldRequests: 2 });
  try {
    await peer.handshake();
    await ready(client);
    await peer.send({ type: "status", state: "reloading", eta_ms: 30_000 });
    await eventually("reloading", () => client.state.state === "reloading");

    ok(client.submit(request("a"), new Recorder()).ok);
    ok(client.submit(request("b"), new Recorder()).ok);
    const third = client.submit(request("c"), new Recorder());

    ok(!third.ok);
    equal(third.error.kind, "worker_unavailable");
    equal(third.error.grpcCode, 14);
    match(third.error.message, /2 requests are already held/);
    ok(third.error.retryAfterMs! > 0);
    equal(client.waiting, 2);
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("a held request gives up max_hold after it was held, however often the worker re-announces its reload", async () => {
  const clock = new FakeClock();
  const { worker, client, peer } = await setup({
    clock,
    reloadGraceMs: 1000,
    maxHoldMs: 10_000,
  });
  const announce = async (at: number) => {
    await peer.send({ type: "status", state: "reloading", eta_ms: 5000 });
    await eventually(
      `the reload announced at ${at}`,
      () => client.state.state === "reloading" && client.state.since === at,
    );
  };
  try {
    await peer.handshake();
    await ready(client);
    await announce(0);
    const first = new Recorder();
    ok(client.submit(request("a"), first).ok);

    // The worker keeps moving its ETA: each announcement alone would hold
    // "a" until 5 s + 1 s after it.
    clock.advance(4000);
    await announce(4000);
    clock.advance(4000);
    await announce(8000);
    const second = new Recorder();
    ok(client.submit(request("b"), second).ok);

    clock.advance(1750); // t = 9750
    ok(!first.events.some(isError), "a is still held");
    clock.advance(500); // t = 10250: past a's 10 s cap
    const a = first.events.find(isError);
    ok(a, "a failed at its cap");
    equal(a.error.grpcCode, 14);
    match(a.error.message, /after holding this request for 10s/);
    ok(a.error.retryAfterMs! > 0);
    ok(!second.events.some(isError), "b, held later, still waits");

    clock.advance(3750); // t = 14000: b's ETA + grace from the last announcement
    const b = second.events.find(isError);
    ok(b, "b failed once the announced ETA and grace passed");
    match(b.error.message, /taking longer than announced/);
  } finally {
    client.stop();
    worker.close();
  }
});

Deno.test("late frames for a cancelled generation whose slot was freed are dropped, and its id is refused until the worker ends it", async () => {
  const clock = new FakeClock();
  const { worker, client, peer } = await setup({
    clock,
    requestIdleTimeoutMs: 1000,
  });
  try {
    await peer.handshake();
    await ready(client);
    const r = client.submit(request("a"), new Recorder());
    ok(r.ok);
    await peer.expect("generate");
    r.handle.cancel("client_cancelled");
    await peer.expect("cancel");
    clock.advance(1250);
    equal(client.inFlight, 0, "the slot was freed");

    await peer.send({ type: "chunk", id: "a", text: "late", token_ids: [1] });
    const again = client.submit(request("a"), new Recorder());
    ok(!again.ok);
    equal(again.error.kind, "duplicate_request");

    await peer.send({
      type: "done",
      id: "a",
      finish_reason: "cancelled",
      usage: { prompt_tokens: 1, completion_tokens: 1 },
    });
    await eventually(
      "the id is free again",
      () => client.submit(request("a"), new Recorder()).ok,
    );
    equal((await peer.expect("generate")).id, "a");
    equal(client.state.state, "ready");
    ok(!peer.closed);
    ok(!peer.received.some((m) => m.type === "error"));
  } finally {
    client.stop();
    worker.close();
  }
});
