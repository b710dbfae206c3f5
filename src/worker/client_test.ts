import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import {
  isError,
  Recorder,
  request,
  withClient,
} from "../../tests/helpers/worker_client.ts";

// Generations on a connected worker: streaming, credit, admission and
// shutdown. The connection's own life is in link_test.ts, reload holds in
// holds_test.ts, deadlines in sweep_test.ts.

Deno.test("client streams a worker's chunks and done to the sink", () =>
  withClient({}, async ({ client, peer, generating }) => {
    const { sink, frame } = await generating("a");
    equal(frame.id, "a");
    equal(frame.credit, 4);
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
  }));

Deno.test("client grants credit in half-window batches as the gateway takes chunks", () =>
  withClient({}, async ({ peer, generating }) => {
    const { handle } = await generating("a");

    handle.grant(1);
    handle.grant(1);
    const credit = await peer.expect("credit");
    deepStrictEqual(credit, { type: "credit", id: "a", chunks: 2 });
  }));

Deno.test("on protocol version 2, the grants of one tick leave as one credits frame", () =>
  withClient({ welcome: { version: 2 } }, async ({ peer, generating }) => {
    const a = await generating("a");
    const b = await generating("b");

    a.handle.grant(2);
    b.handle.grant(2);
    a.handle.grant(2);
    const credits = await peer.expect("credits");
    deepStrictEqual(credits, {
      type: "credits",
      items: [{ id: "a", chunks: 4 }, { id: "b", chunks: 2 }],
    });

    // A lone grant is a plain credit frame.
    b.handle.grant(2);
    deepStrictEqual(await peer.expect("credit"), {
      type: "credit",
      id: "b",
      chunks: 2,
    });
    equal(peer.received.filter((m) => m.type === "credits").length, 1);
  }));

Deno.test("a cancel drops the credit granted to its generation earlier in the tick", () =>
  withClient({ welcome: { version: 2 } }, async ({ peer, generating }) => {
    const a = await generating("a");
    const b = await generating("b");

    a.handle.grant(2);
    b.handle.grant(2);
    a.handle.cancel("client_cancelled");
    equal((await peer.expect("cancel")).id, "a");
    deepStrictEqual(await peer.expect("credit"), {
      type: "credit",
      id: "b",
      chunks: 2,
    });
    ok(!peer.received.some((m) => m.type === "credits"));
  }));

Deno.test("grants leave before a frame sent after them, so a reused id gets none of the old credit", () =>
  withClient({
    welcome: { version: 2, max_concurrency: 2 },
  }, async ({ client, peer, generating }) => {
    const a = await generating("a");
    const b = await generating("b");
    await peer.send({
      type: "done",
      id: "b",
      finish_reason: "stop",
      usage: { prompt_tokens: 1, completion_tokens: 0 },
    });
    await b.sink.until((e) => "done" in e);

    // In one tick: credit for a, a new generation b, credit for a again.
    a.handle.grant(2);
    const again = new Recorder();
    ok(client.submit(request("b"), again).ok);
    a.handle.grant(2);
    await peer.expect("generate");
    await peer.expect("credit");
    await peer.expect("credit");
    const after = peer.received.slice(-3).map((m) =>
      m.type === "generate" ? `generate ${m.id}` : JSON.stringify(m)
    );
    deepStrictEqual(after, [
      JSON.stringify({ type: "credit", id: "a", chunks: 2 }),
      "generate b",
      JSON.stringify({ type: "credit", id: "a", chunks: 2 }),
    ]);
  }));

Deno.test("credits frames are split at the worker's frame limit", () =>
  withClient({
    welcome: { version: 2, max_frame_bytes: 1024, max_concurrency: 32 },
  }, async ({ peer, generating }) => {
    const ids = Array.from({ length: 24 }, (_, i) => `${i}-`.padEnd(100, "x"));
    const handles = [];
    for (const id of ids) handles.push((await generating(id)).handle);

    for (const h of handles) h.grant(2);
    const items: { id: string; chunks: number }[] = [];
    while (items.length < ids.length) {
      const frame = await peer.expect("credits");
      ok(new TextEncoder().encode(JSON.stringify(frame)).length <= 1024);
      items.push(...frame.items);
    }
    deepStrictEqual(items, ids.map((id) => ({ id, chunks: 2 })));
  }));

Deno.test("a chunk sent without credit fails only that generation", () =>
  withClient({
    streamCreditChunks: 1,
  }, async ({ client, peer, generating }) => {
    const { sink } = await generating("a");
    await peer.send({ type: "chunk", id: "a", text: "x", token_ids: [1] });
    await peer.send({ type: "chunk", id: "a", text: "y", token_ids: [2] });

    equal((await sink.failure()).kind, "worker_protocol");
    const cancel = await peer.expect("cancel");
    equal(cancel.reason, "protocol");
    equal(client.state.state, "ready");
  }));

Deno.test("generations beyond max_concurrency wait for a slot, then a full queue is refused", () =>
  withClient({
    maxQueuedRequests: 1,
    welcome: { max_concurrency: 1 },
  }, async ({ client, peer }) => {
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
  }));

Deno.test("a request id already in flight is refused", () =>
  withClient({}, ({ client }) => {
    ok(client.submit(request("a"), new Recorder()).ok);
    const again = client.submit(request("a"), new Recorder());
    ok(!again.ok);
    equal(again.error.kind, "duplicate_request");
  }));

Deno.test("a request for another model fails with model_mismatch", () =>
  withClient({}, async ({ client }) => {
    const sink = new Recorder();
    ok(client.submit(request("a", { modelId: "other" }), sink).ok);
    equal((await sink.failure()).grpcCode, 9);
  }));

Deno.test("stop() cancels what runs on the worker with reason shutdown before closing, and fails it with a retry hint", () =>
  withClient({}, async ({ client, peer, announceReload }) => {
    const sink = new Recorder();
    ok(client.submit(request("a"), sink).ok);
    const waiting = new Recorder();
    ok(client.submit(request("b"), new Recorder()).ok);
    await peer.expect("generate");
    await peer.expect("generate");
    await announceReload({ eta_ms: 1000 });
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
  }));

Deno.test("a generate larger than the worker's max_frame_bytes fails with INVALID_ARGUMENT naming the field and both sizes", () =>
  withClient({
    welcome: { max_frame_bytes: 1024 },
  }, async ({ client, peer }) => {
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
  }));
