import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import {
  isError,
  ready,
  Recorder,
  request,
  setup,
} from "../../tests/helpers/worker_client.ts";

// An open connection: heartbeats, and what the worker can break. Opening
// it and reconnecting are in handshake_test.ts.

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
    await client.stop();
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
    await client.stop();
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
    await client.stop();
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
    await client.stop();
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
      await client.stop();
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
    await client.stop();
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
    await client.stop();
    worker.close();
  }
});

for (
  const [what, frame, field] of [
    [
      "an eta_ms over 32 bits",
      { type: "status", state: "reloading", eta_ms: 2 ** 32 },
      "eta_ms",
    ],
    [
      "a max_concurrency over 32 bits",
      { type: "status", state: "ready", max_concurrency: 2 ** 32 },
      "max_concurrency",
    ],
  ] as const
) {
  Deno.test(`a status with ${what} is a protocol error: the worker is told, the state is unchanged, and only that connection's generations fail`, async () => {
    const { worker, client, peer } = await setup();
    try {
      await peer.handshake();
      await ready(client);
      const running = new Recorder();
      ok(client.submit(request("a"), running).ok);
      await peer.expect("generate");

      await peer.send(frame);

      const err = await peer.expect("error");
      equal(err.code, "protocol");
      match(
        err.message,
        new RegExp(
          `"${field}" must be an integer in .*\\.\\.4294967295, got 4294967296`,
        ),
      );
      const e = await running.until(isError);
      ok(isError(e));
      equal(e.error.kind, "worker_protocol");
      match(e.error.message, new RegExp(field));
      ok(!running.events.some((ev) => "system" in ev), "no hold was announced");
      ok(client.state.state !== "reloading", `state is ${client.state.state}`);
      await peer.waitClosed();

      // The next connection serves.
      const second = await worker.peer(1);
      await second.handshake();
      await ready(client);
      ok(client.submit(request("b"), new Recorder()).ok);
      equal((await second.expect("generate")).id, "b");
    } finally {
      await client.stop();
      worker.close();
    }
  });
}
