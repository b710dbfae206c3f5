import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { generate, req } from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";

Deno.test("Generate streams a simulated generation token by token through real processes", async () => {
  const t = await startStack({ simArgs: ["--ttft-ms", "5", "--itl-ms", "2"] });
  try {
    const out = await generate(
      t.client,
      req("stream-1", "tell me a story", { sampling: { max_tokens: 12 } }),
    );
    equal(out.error, null);
    const chunks = out.events.filter((e) => e.kind === "chunk");
    equal(chunks.length, 12);
    equal(out.tokenIds.length, 12);
    const done = out.events.at(-1)!;
    ok("done" in done);
    equal(done.done.finish_reason, "length");
    deepStrictEqual(done.done.usage, {
      prompt_tokens: 4,
      completion_tokens: 12,
    });
    equal(done.done.model_id, "sim-1");
    ok(out.events.every((e) => e.request_id === "stream-1"));
  } finally {
    await t.close();
  }
});
