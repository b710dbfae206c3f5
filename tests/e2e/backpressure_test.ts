import { equal, ok } from "node:assert/strict";
import { encodeEventMessage } from "../../src/gateway/event_codec.ts";
import { HIGH_WATER_BYTES } from "../../src/gateway/stream_ledger.ts";
import { BillingServer } from "../helpers/billing_server.ts";
import { metric, waitUntil } from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";
import { WireGateway, type WireStream } from "../helpers/wire_gateway.ts";

// The worker's default per-generation credit (worker.stream_credit_chunks).
const CREDIT_CHUNKS = 32;

// A generation the worker would finish in a fraction of a second if it
// were never held back.
const FLOOD = "[[sim tokens=20000 ttft_ms=0 itl_ms=0]] go";

function request(id: string, prompt: string) {
  return {
    request_id: id,
    session_id: "bp",
    prompt,
    sampling: { max_tokens: 0 },
  };
}

/** Simulator, billing server and sidecar. */
async function bed(toml = "") {
  const billing = new BillingServer();
  billing.start();
  const t = await startStack({ toml, billing });
  return Object.assign(t, {
    /** The usage record of `id`, once billing has it. */
    async record(id: string) {
      const all = await billing.waitFor((u) =>
        u.some((r) => r.request_id === id)
      );
      return all.find((r) => r.request_id === id)!;
    },
  });
}

/**
 * The most token events a sidecar may hold for a stream that reads nothing:
 * its high-water mark of the smallest event seen, the one that crossed it,
 * and the credit the worker still had.
 */
function heldBound(s: WireStream): number {
  const smallest = Math.min(
    ...s.events.filter((e) => e.chunk).map((e) =>
      encodeEventMessage({ request_id: e.request_id, chunk: e.chunk }).length
    ),
  );
  return Math.ceil(HIGH_WATER_BYTES / smallest) + 1 + CREDIT_CHUNKS;
}

Deno.test("a gateway that stops reading is billed exactly the tokens it was sent, and the worker waits for it", async () => {
  const t = await bed();
  const gw = await WireGateway.connect(t.sidecar.grpcAddr, 2_000);
  try {
    const s = gw.generate(request("stall-1", FLOOD));
    await gw.quiet();
    ok(s.tokens > 0, "some tokens fit in the first window");
    ok(s.dataBytes <= 2_000, `the window was respected: ${s.dataBytes} bytes`);

    // It reads a little more, then stops for good and vanishes.
    await gw.grant(s.id, 3_000);
    await gw.quiet();
    ok(s.dataBytes <= 5_000);
    ok(!s.ended);
    const received = s.tokens;
    await gw.drop();

    const record = await t.record("stall-1");
    equal(record.completion_tokens, received);
    equal(record.finish_reason, "cancelled");

    // The worker was held back: the sidecar took only a bounded number of
    // tokens beyond what it could send, instead of the whole generation.
    const end = await t.sidecarEnd("stall-1");
    equal(end.completion_tokens, received);
    ok(
      end.undelivered_tokens <= heldBound(s),
      `${end.undelivered_tokens} tokens held, bound ${heldBound(s)}`,
    );
  } finally {
    await gw.drop();
    await t.close();
  }
});

Deno.test("a stream that stops reading slows only itself: another on the same connection runs to its end", async () => {
  const t = await bed();
  const gw = await WireGateway.connect(t.sidecar.grpcAddr, 1_000);
  try {
    const stalled = gw.generate(request("slow-1", FLOOD));
    const reader = gw.generate(
      request("fast-1", "[[sim tokens=400 ttft_ms=0 itl_ms=0]] go"),
      { autoGrant: true },
    );
    await gw.until(() => reader.ended);

    equal(reader.tokens, 400);
    const done = reader.events.at(-1)!.done;
    equal(done.usage.completion_tokens, 400);
    ok(!stalled.ended, "the stalled stream is still waiting");
    ok(stalled.dataBytes <= 1_000);

    const fast = await t.record("fast-1");
    equal(fast.completion_tokens, 400);
    equal(fast.finish_reason, "stop");

    await gw.quiet();
    const received = stalled.tokens;
    await gw.drop();
    equal((await t.record("slow-1")).completion_tokens, received);
  } finally {
    await gw.drop();
    await t.close();
  }
});

Deno.test("a stream that accepts nothing for stream_stall_timeout_secs is reset and billed what it was sent", async () => {
  const t = await bed(`[server]
stream_stall_timeout_secs = 1`);
  const gw = await WireGateway.connect(t.sidecar.grpcAddr, 1_500);
  try {
    const s = gw.generate(request("stuck-1", FLOOD));
    await gw.until(() => s.resetCode !== null, 15_000);
    equal(s.resetCode, 8, "RST_STREAM CANCEL");

    const record = await t.record("stuck-1");
    equal(record.completion_tokens, s.tokens);
    equal(record.finish_reason, "cancelled");
    await waitUntil(
      "the stall is counted",
      async () =>
        await metric(t.sidecar, "sidecar_gateway_send_errors_total", {
          kind: "stalled",
        }) === 1,
    );
  } finally {
    await gw.drop();
    await t.close();
  }
});
