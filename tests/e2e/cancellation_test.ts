// deno-lint-ignore-file no-explicit-any -- grpc-js calls are untyped stubs
import { equal, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import {
  generate,
  metric,
  Proc,
  req,
  waitIdle,
  waitReady,
  within,
} from "../helpers/harness.ts";
import { startScriptedStack, startStack } from "../helpers/stack.ts";
import { RawGatewayConnection } from "../helpers/raw_gateway.ts";
import { SessionDriver } from "../helpers/session.ts";

// Long enough that only a cancellation ends it: 100000 tokens, 10 ms apart.
const ENDLESS = "tell me everything [[sim tokens=100000 itl_ms=10]]";

/** A request that streams until something stops it. */
function endless(id: string, extra: Record<string, unknown> = {}) {
  return req(id, ENDLESS, { sampling: { max_tokens: 0 }, ...extra });
}

/** A simulator (logging every generation's end) and a sidecar in front of it. */
function setup() {
  return startStack({ simArgs: ["--ttft-ms", "5", "--log-level", "debug"] });
}

/** Starts Generate and resolves with the call once its first chunk is in. */
async function streaming(
  client: grpc.Client & Record<string, any>,
  request: Record<string, unknown>,
  options: grpc.CallOptions = {},
) {
  const call = client.Generate(request, options);
  const errors: grpc.ServiceError[] = [];
  call.on("error", (e: grpc.ServiceError) => errors.push(e));
  await within(
    "first chunk",
    new Promise<void>((resolve) => call.once("data", () => resolve())),
  );
  return { call, errors };
}

Deno.test("cancelling a Generate call cancels its generation on the worker and frees the slot", async () => {
  const t = await setup();
  try {
    const { call, errors } = await streaming(
      t.client,
      endless("cancel-1"),
    );
    call.cancel();

    await t.workerCancelled("cancel-1");
    await waitIdle(t.client);
    equal(errors[0]?.code, grpc.status.CANCELLED);
    equal((await t.sidecarEnd("cancel-1")).finish_reason, "cancelled");
    equal(
      await metric(t.sidecar, "sidecar_requests_total", {
        rpc: "Generate",
        code: "CANCELLED",
      }),
      1,
    );
    equal(await metric(t.sidecar, "sidecar_generations_in_flight"), 0);
  } finally {
    await t.close();
  }
});

Deno.test("a gateway connection dropped mid-stream cancels its generation on the worker", async () => {
  const t = await setup();
  const raw = new RawGatewayConnection(t.sidecar.grpcAddr);
  try {
    await within(
      "first chunk on the raw connection",
      raw.startCall("Generate", "GenerateRequest", [endless("drop-1")])
        .firstData,
    );
    raw.destroy();

    await t.workerCancelled("drop-1");
    await waitIdle(t.client);
    equal((await t.sidecarEnd("drop-1")).finish_reason, "cancelled");
  } finally {
    raw.destroy();
    await t.close();
  }
});

Deno.test("a gateway process killed mid-stream has its generation cancelled on the worker", async () => {
  const t = await setup();
  const gatewayProc = new Proc(Deno.execPath(), [
    "run",
    "-A",
    "tools/generate.ts",
    "--addr",
    t.sidecar.grpcAddr,
    "--request-id",
    "killed-1",
    "--prompt",
    ENDLESS,
    "--max-tokens",
    "0",
    "--json",
  ]);
  try {
    await gatewayProc.waitFor(/"request_id":"killed-1".*"chunk"/, 30_000);
    await gatewayProc.kill();

    await t.workerCancelled("killed-1");
    await waitIdle(t.client);
    equal((await t.sidecarEnd("killed-1")).finish_reason, "cancelled");
  } finally {
    await gatewayProc.kill();
    await t.close();
  }
});

Deno.test("a Session whose gateway connection drops has every generation cancelled", async () => {
  const t = await setup();
  const raw = new RawGatewayConnection(t.sidecar.grpcAddr);
  const ids = ["sdrop-1", "sdrop-2", "sdrop-3"];
  try {
    await within(
      "first chunk on the raw session",
      raw.startCall(
        "Session",
        "SessionRequest",
        ids.map((id) => ({ generate: endless(id) })),
      ).firstData,
    );
    // Every generation has reached the worker before the connection goes.
    for (const id of ids) {
      await t.sim.waitFor(new RegExp(`generation started id=${id} `));
    }
    raw.destroy();

    for (const id of ids) await t.workerCancelled(id);
    await waitIdle(t.client);
  } finally {
    raw.destroy();
    await t.close();
  }
});

Deno.test("a gRPC deadline shorter than the generation ends it with DEADLINE_EXCEEDED and cancels it on the worker", async () => {
  const t = await setup();
  try {
    const out = await within(
      "the deadline",
      generate(t.client, endless("deadline-1"), {
        deadline: Date.now() + 1500,
      }),
    );

    equal(out.error?.code, grpc.status.DEADLINE_EXCEEDED);
    ok(out.tokenIds.length > 0, "tokens flowed before the deadline");
    await t.workerCancelled("deadline-1");
    await waitIdle(t.client);
  } finally {
    await t.close();
  }
});

Deno.test("the sidecar enforces a grpc-timeout on its own: DEADLINE_EXCEEDED status, worker cancelled", async () => {
  const t = await setup();
  // No client-side deadline here: only the sidecar's timer can end the call.
  const raw = new RawGatewayConnection(t.sidecar.grpcAddr);
  try {
    const call = raw.startCall(
      "Generate",
      "GenerateRequest",
      [endless("deadline-2")],
      { "grpc-timeout": "1500m" },
    );
    await within("first chunk", call.firstData);

    equal(
      (await t.sidecarEnd("deadline-2")).finish_reason,
      "deadline_exceeded",
    );
    await t.workerCancelled("deadline-2");
    await waitIdle(t.client);
    const status = await within("the status", call.status).catch((err) => {
      const tail = t.sidecar.proc.lines.slice(-15).join("\n");
      throw new Error(`${err.message}; sidecar log ends with:\n${tail}`);
    });
    equal(status.code, grpc.status.DEADLINE_EXCEEDED);
    equal(
      await metric(t.sidecar, "sidecar_requests_total", {
        rpc: "Generate",
        code: "DEADLINE_EXCEEDED",
      }),
      1,
    );
  } finally {
    raw.destroy();
    await t.close();
  }
});

Deno.test("a Session generation past its timeout_ms ends with a DEADLINE_EXCEEDED error event and is cancelled on the worker", async () => {
  const t = await setup();
  const session = new SessionDriver(t.client);
  try {
    session.generate(endless("timeout-1", { timeout_ms: 1500 }));
    session.generate(req("timeout-ok", "a short one", { timeout_ms: 60_000 }));
    const timedOut = await within(
      "timeout-1 ends",
      session.finished("timeout-1"),
    );
    const fine = await within(
      "timeout-ok ends",
      session.finished("timeout-ok"),
    );

    equal(timedOut.last.kind, "error");
    ok("error" in timedOut.last);
    equal(timedOut.last.error.code, grpc.status.DEADLINE_EXCEEDED);
    ok(timedOut.tokenIds.length > 0, "tokens flowed before the timeout");
    equal(
      timedOut.last.error.usage.completion_tokens,
      timedOut.tokenIds.length,
    );
    equal(fine.last.kind, "done");
    equal(fine.tokenIds.length, 8);
    await t.workerCancelled("timeout-1");
    await waitIdle(t.client);

    equal((await session.finish())?.code, grpc.status.OK);
  } finally {
    session.call.cancel();
    await t.close();
  }
});

Deno.test("a cancel reaches the worker within one heartbeat interval, counted in tokens at a known pace", async () => {
  // The worker sends a token every ITL_MS with credit for all of them, so
  // flow control cannot stop it: only the cancel frame does. Between the
  // gateway's cancel and the worker reading the sidecar's, fewer tokens
  // than one heartbeat interval holds must have gone out.
  const ITL_MS = 10;
  const HEARTBEAT_MS = 2000;
  const t = await startScriptedStack(
    `[health]\ncheck_interval_secs = ${HEARTBEAT_MS / 1000}\n` +
      "heartbeat_timeout_secs = 5\n[worker]\nstream_credit_chunks = 4096",
  );
  const { worker, sidecar, client } = t;
  worker.answerAll();
  try {
    await waitReady(sidecar);
    const peer = worker.live!;
    const call = client.Generate(endless("hb-1"));
    const errors: grpc.ServiceError[] = [];
    call.on("error", (e: grpc.ServiceError) => errors.push(e));
    let received = 0;
    let receivedAtCancel = -1;
    call.on("data", () => {
      received++;
      if (received === 20) {
        receivedAtCancel = received;
        call.cancel();
      }
    });

    const gen = await peer.expect("generate", 15_000);
    const cancelled = () =>
      peer.received.some((m) => m.type === "cancel" && m.id === gen.id);
    let sent = 0;
    while (!cancelled() && sent < gen.credit && !peer.closed) {
      await peer.send({
        type: "chunk",
        id: gen.id,
        text: ` t${sent}`,
        token_ids: [sent],
      });
      sent++;
      await new Promise((r) => setTimeout(r, ITL_MS));
    }
    await peer.send({
      type: "done",
      id: gen.id,
      finish_reason: "cancelled",
      usage: { prompt_tokens: 1, completion_tokens: sent },
    });

    ok(cancelled(), `no cancel after ${sent} tokens`);
    equal(receivedAtCancel, 20);
    const cancel = peer.received.find((m) => m.type === "cancel");
    ok(cancel?.type === "cancel");
    equal(cancel.reason, "client_cancelled");
    const afterCancel = sent - receivedAtCancel;
    ok(
      afterCancel < HEARTBEAT_MS / ITL_MS,
      `${afterCancel} tokens went out after the gateway cancelled`,
    );
    await waitIdle(client);
    equal(errors[0]?.code, grpc.status.CANCELLED);
  } finally {
    await t.close();
  }
});
