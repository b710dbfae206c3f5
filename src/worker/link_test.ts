import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import {
  expectProtocolError,
  Recorder,
  request,
  withClient,
} from "../../tests/helpers/worker_client.ts";
import { welcomeFrame } from "../../tests/helpers/scripted_worker.ts";

// An open connection: heartbeats, and what the worker can break. Opening
// it and reconnecting are in handshake_test.ts.

Deno.test("a frame for an id not in flight closes the connection and fails generations", () =>
  withClient({}, async ({ peer, generating, reconnected }) => {
    const { sink } = await generating("a");
    await peer.send({ type: "chunk", id: "ghost", text: "x", token_ids: [1] });

    const e = await sink.failure();
    equal(e.kind, "worker_protocol");
    match(e.message, /ghost/);
    await peer.waitClosed();
    // It reconnects on its own.
    await reconnected(1);
  }));

Deno.test("an oversized frame header closes the connection before its body is read", () =>
  withClient({ maxFrameBytes: 1024 }, async ({ peer, generating }) => {
    const { sink } = await generating("a");
    await peer.raw(new Uint8Array([0x7f, 0xff, 0xff, 0xff]));

    const e = await sink.failure();
    equal(e.grpcCode, 13);
    match(e.message, /exceeds max_frame_bytes 1024/);
    await peer.waitClosed();
  }));

Deno.test("a missed pong marks the worker hung and fails what it was running", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    checkIntervalMs: 1000,
    heartbeatTimeoutMs: 500,
  }, async ({ client, peer, generating }) => {
    const { sink } = await generating("a");

    clock.advance(1000);
    const ping = await peer.expect("ping");
    await peer.send({ type: "pong", seq: ping.seq });
    await new Promise((r) => setTimeout(r, 50));
    clock.advance(1000);
    await peer.expect("ping");
    clock.advance(600);

    equal((await sink.failure()).kind, "worker_hung");
    // The fake clock also ran the 50 ms reconnect timer: a new attempt is under way.
    ok(["disconnected", "connecting"].includes(client.state.state));
    await peer.waitClosed();
  });
});

Deno.test("a pong later than the ping interval but within the heartbeat timeout keeps the worker", () => {
  const clock = new FakeClock();
  return withClient({
    clock,
    checkIntervalMs: 1000,
    heartbeatTimeoutMs: 3000,
  }, async ({ client, peer }) => {
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
  });
});

for (
  const [what, frame, expected] of [
    [
      "a frame for an id not in flight",
      { type: "chunk", id: "ghost", text: "x", token_ids: [1] },
      /"ghost", which is not in flight/,
    ],
    ["a second welcome", welcomeFrame(), /unexpected second welcome/],
    [
      "a malformed frame",
      { type: "chunk", id: "a", text: 5, token_ids: [] },
      /"text" must be a string/,
    ],
  ] as const
) {
  Deno.test(`${what} is reported to the worker in an error frame, then the connection closes`, () =>
    withClient({}, async ({ peer }) => {
      await peer.send(frame);

      const err = await expectProtocolError(peer, expected);
      ok(!("id" in err));
      await peer.waitClosed();
    }));
}

Deno.test("after a protocol error the sidecar reads on, half-closed, until the worker closes its end", () =>
  withClient({}, async ({ peer }) => {
    await peer.send({ type: "chunk", id: "ghost", text: "x", token_ids: [1] });

    await expectProtocolError(peer, /"ghost", which is not in flight/);
    // The end of the sidecar's side arrives after the error frame...
    await peer.waitClosed();
    // ...and a worker that is still writing is read, not reset: writes
    // made after the error still succeed, so the worker gets to read why.
    for (let seq = 0; seq < 100; seq++) {
      await peer.send({ type: "pong", seq });
    }
    peer.close();
  }));

Deno.test("an oversized frame header is reported to the worker in an error frame", () =>
  withClient({ maxFrameBytes: 1024 }, async ({ peer }) => {
    await peer.raw(new Uint8Array([0x7f, 0xff, 0xff, 0xff]));

    await expectProtocolError(peer, /exceeds max_frame_bytes 1024/);
    await peer.waitClosed();
  }));

Deno.test("a connection-level error from the worker is not answered with an error frame", () => {
  const kinds: string[] = [];
  return withClient({
    onConnectionError: (kind) => kinds.push(kind),
  }, async ({ peer }) => {
    await peer.send({ type: "error", code: "internal", message: "going" });

    await peer.waitClosed();
    deepStrictEqual(kinds, ["protocol"]);
    ok(!peer.received.some((m) => m.type === "error"), "no error frame back");
  });
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
  Deno.test(`a status with ${what} is a protocol error: the worker is told, the state is unchanged, and only that connection's generations fail`, () =>
    withClient({}, async ({ client, peer, generating, reconnected }) => {
      const { sink: running } = await generating("a");

      await peer.send(frame);

      await expectProtocolError(
        peer,
        new RegExp(
          `"${field}" must be an integer in .*\\.\\.4294967295, got 4294967296`,
        ),
      );
      const e = await running.failure();
      equal(e.kind, "worker_protocol");
      match(e.message, new RegExp(field));
      ok(!running.events.some((ev) => "system" in ev), "no hold was announced");
      ok(client.state.state !== "reloading", `state is ${client.state.state}`);
      await peer.waitClosed();

      // The next connection serves.
      const second = await reconnected(1);
      ok(client.submit(request("b"), new Recorder()).ok);
      equal((await second.expect("generate")).id, "b");
    }));
}

Deno.test("on protocol version 2, a chunks frame delivers each item as its generation's chunk, in order", () =>
  withClient({ welcome: { version: 2 } }, async ({ peer, generating }) => {
    const a = await generating("a");
    const b = await generating("b");
    await peer.send({
      type: "chunks",
      items: [
        { id: "a", text: "Hel", token_ids: [1] },
        { id: "b", text: "Wor", token_ids: [7] },
        { id: "a", text: "lo", token_ids: [2, 3] },
      ],
    });
    await peer.send({
      type: "done",
      id: "a",
      finish_reason: "stop",
      usage: { prompt_tokens: 1, completion_tokens: 3 },
    });
    await a.sink.until((e) => "done" in e);
    deepStrictEqual(a.sink.events.slice(0, 2), [
      { chunk: "Hel", ids: [1] },
      { chunk: "lo", ids: [2, 3] },
    ]);
    await b.sink.until((e) => "chunk" in e);
    deepStrictEqual(b.sink.events, [{ chunk: "Wor", ids: [7] }]);
  }));

Deno.test("each item of a chunks frame takes one credit of its generation", () =>
  withClient({ welcome: { version: 2 } }, async ({ peer, generating }) => {
    const { sink, frame } = await generating("a");
    const credit = (frame as { credit: number }).credit;
    await peer.send({
      type: "chunks",
      items: Array.from(
        { length: credit + 1 },
        (_, i) => ({ id: "a", text: "x", token_ids: [i] }),
      ),
    });
    const e = await sink.failure();
    match(e.message, /without flow-control credit/);
    equal(sink.events.filter((ev) => "chunk" in ev).length, credit);
  }));

Deno.test("a chunks frame on protocol version 1 is a protocol error", () =>
  withClient({}, async ({ peer, generating }) => {
    const { sink } = await generating("a");
    await peer.send({
      type: "chunks",
      items: [{ id: "a", text: "x", token_ids: [1] }],
    });
    const e = await sink.failure();
    equal(e.kind, "worker_protocol");
    match(e.message, /"chunks" on protocol version 1/);
    await peer.waitClosed();
  }));

Deno.test("a chunks item for an id not in flight drops the rest of the frame and closes the connection", () =>
  withClient({ welcome: { version: 2 } }, async ({ peer, generating }) => {
    const { sink } = await generating("a");
    await peer.send({
      type: "chunks",
      items: [
        { id: "a", text: "x", token_ids: [1] },
        { id: "ghost", text: "y", token_ids: [2] },
        { id: "a", text: "z", token_ids: [3] },
      ],
    });
    const e = await sink.failure();
    match(e.message, /ghost/);
    deepStrictEqual(
      sink.events.filter((ev) => "chunk" in ev),
      [{ chunk: "x", ids: [1] }],
    );
    await peer.waitClosed();
  }));
