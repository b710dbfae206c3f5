import { deepStrictEqual, equal, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import {
  type Collected,
  generate,
  metric,
  req,
  waitIdle,
  within,
} from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";
import { simTokenIds } from "../helpers/sim_reference.ts";

/** Checks that `out` is one whole generation of `id`: its tokens, then done. */
function assertWhole(out: Collected, id: string, expected: number[]): void {
  equal(out.error, null, `${id} failed: ${out.error?.message}`);
  equal(out.status?.code, grpc.status.OK);
  ok(out.events.every((e) => e.request_id === id), `${id}: foreign event`);
  deepStrictEqual(out.tokenIds, expected, `${id}: token ids`);
  const done = out.events.at(-1)!;
  ok("done" in done && done.kind === "done", `${id}: last event is done`);
  equal(out.events.filter((e) => e.kind === "done").length, 1);
  equal(done.done.usage.completion_tokens, out.tokenIds.length);
  equal(done.done.model_id, "sim-1");
}

Deno.test("fifty concurrent Generate calls each receive exactly their own tokens", async () => {
  const t = await startStack({
    simArgs: ["--ttft-ms", "5", "--itl-ms", "2", "--tokens", "40"],
  });
  const { sidecar, client } = t;
  try {
    // Different prompts, seeds and lengths: a token delivered to the wrong
    // stream, lost or repeated changes some stream's ids or count.
    const plans = Array.from({ length: 50 }, (_, i) => ({
      id: `conc-${i}`,
      prompt: `request ${i} asks about the river`,
      seed: i + 1,
      maxTokens: 5 + (i * 7) % 30,
    }));
    const expected = await simTokenIds(
      plans.map((p) => ({
        prompt: p.prompt,
        seed: p.seed,
        count: p.maxTokens,
      })),
    );

    const outs = await within(
      "fifty generations",
      Promise.all(plans.map((p) =>
        generate(
          client,
          req(p.id, p.prompt, {
            session_id: "conc",
            sampling: { max_tokens: p.maxTokens, seed: p.seed },
          }),
        )
      )),
      60_000,
    );

    plans.forEach((p, i) => {
      assertWhole(outs[i], p.id, expected[i]);
      const done = outs[i].events.at(-1)!;
      ok("done" in done);
      equal(done.done.finish_reason, "length");
      equal(done.done.usage.prompt_tokens, 6);
    });
    await waitIdle(client);
    const total = plans.reduce((n, p) => n + p.maxTokens, 0);
    equal(
      await metric(sidecar, "sidecar_tokens_processed_total", {
        session_id: "conc",
      }),
      total,
    );
    equal(
      await metric(sidecar, "sidecar_requests_total", {
        rpc: "Generate",
        code: "OK",
      }),
      50,
    );
  } finally {
    await t.close();
  }
});

Deno.test("a chat request streams its tokens and counts the prompt from every message", async () => {
  const t = await startStack({ simArgs: ["--ttft-ms", "5", "--itl-ms", "2"] });
  const { client } = t;
  try {
    const messages = [
      { role: "system", content: "you are terse" },
      { role: "user", content: "name a river" },
    ];
    const out = await within(
      "chat generation",
      generate(client, {
        request_id: "chat-1",
        messages,
        sampling: { max_tokens: 6 },
      }),
    );

    const [expected] = await simTokenIds([{
      prompt: messages.map((m) => m.content).join("\n"),
      seed: 0,
      count: 6,
    }]);
    assertWhole(out, "chat-1", expected);
    const done = out.events.at(-1)!;
    ok("done" in done);
    equal(done.done.usage.prompt_tokens, 6);
  } finally {
    await t.close();
  }
});

Deno.test("a request_id in flight on another Generate call is refused with ALREADY_EXISTS", async () => {
  const t = await startStack({ simArgs: ["--ttft-ms", "5"] });
  const { client } = t;
  const first = client.Generate(
    req("twice", "go on [[sim tokens=100000 itl_ms=10]]", {
      sampling: { max_tokens: 0 },
    }),
  );
  first.on("error", () => {});
  try {
    await within(
      "first chunk",
      new Promise<void>((resolve) => first.once("data", () => resolve())),
    );
    const second = await within(
      "second call",
      generate(client, req("twice", "same id")),
    );

    equal(second.error?.code, grpc.status.ALREADY_EXISTS);
    ok(second.error?.details.includes('"twice"'), second.error?.details);
    equal(second.events.length, 0);
  } finally {
    first.cancel();
    await t.close();
  }
});
