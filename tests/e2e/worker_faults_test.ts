import { equal, match, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { CODE_NAMES } from "../../src/gateway/generation.ts";
import {
  type Collected,
  generate,
  getStatus,
  metric,
  req,
  waitIdle,
  waitReady,
  waitUntil,
  within,
} from "../helpers/harness.ts";
import {
  type Stack,
  startScriptedStack,
  startStack,
} from "../helpers/stack.ts";
import { SessionDriver } from "../helpers/session.ts";

const SIM_ARGS = ["--ttft-ms", "5", "--itl-ms", "2", "--log-level", "debug"];

// Faults here are the worker's; a pong slowed by a busy machine must not
// add a heartbeat failure to the connection errors the tests count.
const PATIENT_HEARTBEAT = "[health]\nheartbeat_timeout_secs = 5\n";

/**
 * A simulator and a sidecar; `toml` is merged into the sidecar's config,
 * `simArgs` added to the simulator's command line.
 */
async function setup(toml = "", simArgs: string[] = []) {
  const t = await startStack({
    simArgs: [...SIM_ARGS, ...simArgs],
    toml: PATIENT_HEARTBEAT + toml,
  });
  return Object.assign(t, {
    /** Generates with a sim directive in the prompt. */
    run: (id: string, directive: string) =>
      within(
        id,
        generate(t.client, req(id, `tell me a story [[sim ${directive}]]`)),
      ),
    /** The sidecar is (again) connected and streams a whole generation. */
    async servesNext(id: string) {
      await waitReady(t.sidecar, 15_000);
      const out = await within(id, generate(t.client, req(id)));
      equal(out.error, null, `${id}: ${out.error?.message}`);
      equal(out.tokenIds.length, 8);
      await waitIdle(t.client);
    },
  });
}

/**
 * Asserts a failed Generate: its status, and that the sidecar delivered
 * `delivered` tokens before the failure. The count is the sidecar's own
 * (its log): grpc-js may drop messages a reader had not yet pulled when a
 * non-OK status arrives, so the client can have seen fewer.
 */
async function assertFailed(
  t: Stack,
  out: Collected,
  id: string,
  code: grpc.status,
  delivered: number,
): Promise<void> {
  equal(out.error?.code, code, out.error?.message);
  ok(out.events.every((e) => e.kind === "chunk"), "no done after a failure");
  ok(out.tokenIds.length <= delivered, `received ${out.tokenIds.length}`);
  equal((await t.sidecarEnd(id)).completion_tokens, delivered);
}

for (
  const [fault, expectMessage] of [
    ["malformed", /^worker protocol error: /],
    ["oversized", /^worker protocol error: .*frame/],
    [
      "unknown_id",
      /^worker protocol error: .*"sim-unknown-[0-9a-f]+".*not in flight/,
    ],
  ] as const
) {
  Deno.test(`a worker that sends a frame with fault ${fault} fails the generation with INTERNAL; the sidecar reconnects`, async () => {
    const t = await setup();
    try {
      const out = await t.run(`${fault}-1`, `fault=${fault} after=2`);

      await assertFailed(t, out, `${fault}-1`, grpc.status.INTERNAL, 2);
      match(out.error!.details, expectMessage);
      // The worker was told why before the sidecar closed the connection.
      await t.sim.waitFor(
        /WARNING cy_worker: sidecar is closing the connection: it reports a protocol error .*code=protocol/,
      );
      equal(
        await metric(t.sidecar, "sidecar_worker_connection_errors_total", {
          kind: "protocol",
        }),
        1,
      );
      await t.servesNext(`${fault}-after`);
    } finally {
      await t.close();
    }
  });
}

Deno.test("a worker that keeps streaming after a bad frame still reads why the sidecar closes", async () => {
  const t = await setup();
  try {
    // The simulator goes on writing tokens, without pause, after the frame
    // for an unknown id: the sidecar must not reset it before it reads the
    // error frame.
    const out = await t.run(
      "stream-on-1",
      "fault=unknown_id after=2 tokens=100000 itl_ms=0",
    );
    await assertFailed(t, out, "stream-on-1", grpc.status.INTERNAL, 2);
    await t.sim.waitFor(
      /WARNING cy_worker: sidecar is closing the connection: it reports a protocol error .*code=protocol/,
    );
    await t.servesNext("stream-on-after");
  } finally {
    await t.close();
  }
});

Deno.test("a worker that sends chunks without credit to a slow reader has that generation failed with INTERNAL", async () => {
  const t = await setup();
  try {
    const call = t.client.Generate(
      req(
        "nocredit-1",
        "tell me a story [[sim tokens=1000000 itl_ms=0 fault=no_credit]]",
        { sampling: { max_tokens: 0 } },
      ),
    );
    const out: Collected = {
      events: [],
      status: null,
      error: null,
      text: "",
      tokenIds: [],
    };
    const ended = new Promise<void>((resolve) => {
      call.on("error", (e: grpc.ServiceError) => {
        out.error = e;
        resolve();
      });
      call.on("end", () => resolve());
    });
    // The gateway stops reading: the sidecar stops granting credit, and
    // the worker, ignoring credit, runs past it.
    await within(
      "first chunk",
      new Promise<void>((resolve) => call.once("data", () => resolve())),
    );
    call.pause();
    await t.sim.waitFor(
      /generation ended id=nocredit-1 outcome=cancelled$/,
      30_000,
    );
    call.on("data", () => {});
    call.resume();
    await within("the failure", ended);

    equal(out.error?.code, grpc.status.INTERNAL);
    match(out.error!.details, /without flow-control credit/);
    // A fault of one generation, not of the connection.
    equal(await metric(t.sidecar, "sidecar_worker_connection_errors_total"), 0);
    await waitIdle(t.client);
    await t.servesNext("nocredit-after");
  } finally {
    await t.close();
  }
});

Deno.test("a worker that overstates usage: done bills the delivered tokens and the mismatch is counted", async () => {
  const t = await setup();
  try {
    const out = await t.run("lie-1", "fault=lie_usage");

    equal(out.error, null);
    equal(out.tokenIds.length, 8);
    const done = out.events.at(-1)!;
    ok("done" in done);
    equal(done.done.usage.completion_tokens, 8);
    equal(
      await metric(t.sidecar, "sidecar_usage_mismatch_total", {
        model_id: "sim-1",
      }),
      1,
    );
    const warning = JSON.parse(
      await t.sidecar.proc.waitFor(/"level":"warn".*"request_id":"lie-1"/),
    );
    equal(warning.worker_completion_tokens, 13);
    equal(warning.delivered_completion_tokens, 8);
  } finally {
    await t.close();
  }
});

Deno.test("a worker's error frame maps to the gRPC status of its code, with the worker's message unchanged", async (ctx) => {
  const t = await setup();
  try {
    const table = [
      ["invalid_argument", grpc.status.INVALID_ARGUMENT],
      ["model_mismatch", grpc.status.FAILED_PRECONDITION],
      ["overloaded", grpc.status.RESOURCE_EXHAUSTED],
      ["unavailable", grpc.status.UNAVAILABLE],
      ["cancelled", grpc.status.CANCELLED],
      ["deadline_exceeded", grpc.status.DEADLINE_EXCEEDED],
      ["internal", grpc.status.INTERNAL],
      ["something_new", grpc.status.INTERNAL],
      // Named like an Object.prototype member: still just an unknown code.
      ["constructor", grpc.status.INTERNAL],
    ] as const;
    for (const [code, status] of table) {
      await ctx.step(`${code} gives ${grpc.status[status]}`, async () => {
        const id = `err-${code}`;
        const out = await t.run(id, `fault=error code=${code} after=3`);
        await assertFailed(t, out, id, status, 3);
        equal(out.error!.details, `sim fault: injected error for ${id}`);
      });
    }
    // Per-generation errors leave the connection alone.
    equal(await metric(t.sidecar, "sidecar_worker_connection_errors_total"), 0);
    // Every request is counted under a status name, never anything else.
    const text = await (await fetch(`${t.sidecar.metricsUrl}/metrics`)).text();
    const labels = [
      ...text.matchAll(/^sidecar_requests_total\{[^}]*code="([^"]*)"/gm),
    ]
      .map((m) => m[1]);
    ok(labels.length > 0);
    for (const code of labels) {
      ok(Object.values(CODE_NAMES).includes(code), `code label ${code}`);
    }
    await t.servesNext("err-after");
  } finally {
    await t.close();
  }
});

Deno.test("a worker that exits mid-stream fails the stream with UNAVAILABLE and a retry pushback; a restarted worker is used", async () => {
  const t = await setup();
  try {
    const out = await t.run("exit-1", "fault=exit after=3 itl_ms=5");

    await assertFailed(t, out, "exit-1", grpc.status.UNAVAILABLE, 3);
    const pushback = out.error!.metadata.get("grpc-retry-pushback-ms")[0];
    ok(Number(pushback) > 0, `pushback trailer: ${pushback}`);
    equal((await t.sim.exited).code, 3);
    // A closed socket reads as end-of-file, or as a reset when the worker
    // left frames unread.
    const lost =
      await metric(t.sidecar, "sidecar_worker_connection_errors_total", {
        kind: "eof",
      }) +
      await metric(t.sidecar, "sidecar_worker_connection_errors_total", {
        kind: "io",
      });
    equal(lost, 1);

    await t.restartSim();
    await t.servesNext("exit-after");
  } finally {
    await t.close();
  }
});

Deno.test("a generation the worker stops feeding fails with UNAVAILABLE after request_idle_timeout_secs and is cancelled", async () => {
  const t = await setup("[worker]\nrequest_idle_timeout_secs = 1\n");
  try {
    const out = await t.run("hang-1", "fault=hang after=2");

    await assertFailed(t, out, "hang-1", grpc.status.UNAVAILABLE, 2);
    match(out.error!.details, /sent nothing for request "hang-1"/);
    ok(out.error!.metadata.get("grpc-retry-pushback-ms").length === 1);
    await t.workerCancelled("hang-1");
    await waitIdle(t.client);
    // The worker still answers pings: the connection itself is fine.
    equal(await metric(t.sidecar, "sidecar_worker_connection_errors_total"), 0);
    await t.servesNext("hang-after");
  } finally {
    await t.close();
  }
});

Deno.test("on a Session, a worker error code named like an Object.prototype member is an INTERNAL error event", async () => {
  const t = await setup();
  const session = new SessionDriver(t.client);
  try {
    session.generate(
      req("proto-1", "a story [[sim fault=error code=constructor after=1]]"),
    );
    session.generate(req("proto-ok", "a short one"));
    const failed = await within("proto-1 ends", session.finished("proto-1"));
    const fine = await within("proto-ok ends", session.finished("proto-ok"));

    ok("error" in failed.last);
    equal(failed.last.error.code, grpc.status.INTERNAL);
    equal(failed.last.error.message, "sim fault: injected error for proto-1");
    equal(fine.last.kind, "done");
    equal((await session.finish())?.code, grpc.status.OK);
  } finally {
    session.call.cancel();
    await t.close();
  }
});

Deno.test("a prompt over the worker's max_frame_bytes but under max_request_bytes fails with INVALID_ARGUMENT naming the field and both sizes", async () => {
  const t = await setup("", ["--max-frame-bytes", "65536"]);
  try {
    const big = "a".repeat(100_000);
    const prompt = await within(
      "prompt",
      generate(t.client, req("big-1", big)),
    );
    equal(prompt.error?.code, grpc.status.INVALID_ARGUMENT);
    match(
      prompt.error!.details,
      /^prompt: 100000 bytes is too large for the worker: the generate frame would be \d+ bytes, over the worker's max_frame_bytes of 65536$/,
    );

    const chat = await within(
      "messages",
      generate(t.client, {
        request_id: "big-2",
        messages: [{ role: "user", content: big }],
        sampling: { max_tokens: 4 },
      }),
    );
    equal(chat.error?.code, grpc.status.INVALID_ARGUMENT);
    match(
      chat.error!.details,
      /^messages: \d+ bytes is too large for the worker/,
    );

    // Refused before the worker: the connection and other requests are fine.
    equal(await metric(t.sidecar, "sidecar_worker_connection_errors_total"), 0);
    await t.servesNext("big-after");
  } finally {
    await t.close();
  }
});

Deno.test("a worker that accepts the connection and never answers hello fails the handshake at its timeout; the sidecar retries and serves once it answers", async () => {
  const t = await startScriptedStack(
    "[worker]\nhandshake_timeout_secs = 0.3\n" + PATIENT_HEARTBEAT,
  );
  const { worker, sidecar, client } = t;
  try {
    const silent = await worker.peer(0, 15_000);
    await silent.expect("hello", 15_000);
    await waitUntil(
      "a handshake failure is counted",
      async () =>
        await metric(sidecar, "sidecar_worker_connection_errors_total", {
          kind: "handshake",
        }) >= 1,
    );
    await silent.waitClosed(15_000);
    await sidecar.proc.waitFor(
      /"level":"warn".*"msg":"worker connect failed".*"kind":"handshake"/,
    );
    const status = await getStatus(client);
    equal(status.state, "DISCONNECTED");
    match(status.detail, /did not answer hello within 300 ms/);
    const refused = await within("refused", generate(client, req("hs-1")));
    equal(refused.error?.code, grpc.status.UNAVAILABLE);
    ok(Number(refused.error!.metadata.get("grpc-retry-pushback-ms")[0]) > 0);

    // Once the worker answers, the next attempt connects and serves.
    worker.answerAll();
    await waitReady(sidecar, 15_000);
    const answering = worker.live!;
    const call = within("served", generate(client, req("hs-2")));
    const gen = await answering.expect("generate", 15_000);
    await answering.send({
      type: "chunk",
      id: gen.id,
      text: "hi",
      token_ids: [7],
    });
    await answering.send({
      type: "done",
      id: gen.id,
      finish_reason: "stop",
      usage: { prompt_tokens: 1, completion_tokens: 1 },
    });
    const out = await call;
    equal(out.error, null);
    equal(out.text, "hi");
  } finally {
    await t.close();
  }
});
