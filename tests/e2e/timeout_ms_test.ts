/**
 * `GenerateRequest.timeout_ms` limits a Generate call as it limits a
 * Session generation, and the API's own comment says so.
 */

import { equal, match, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { generate, req, waitIdle } from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** The comment lines right above a field's declaration in a .proto file. */
function fieldComment(proto: string, declaration: string): string {
  const lines = proto.split("\n");
  const at = lines.findIndex((l) => l.trim() === declaration);
  ok(at > 0, `${declaration} not found`);
  const comment: string[] = [];
  for (let i = at - 1; i >= 0 && lines[i].trim().startsWith("//"); i--) {
    comment.unshift(lines[i].trim().replace(/^\/\/\s?/, ""));
  }
  return comment.join(" ");
}

Deno.test("a Generate call past its timeout_ms ends with DEADLINE_EXCEEDED and frees the worker's slot", async () => {
  const t = await startStack({ simArgs: ["--ttft-ms", "2", "--itl-ms", "1"] });
  try {
    // No gRPC deadline: only timeout_ms can end this generation.
    const out = await generate(
      t.client,
      req("timeout-gen-1", "go on [[sim tokens=1000000 itl_ms=5]]", {
        sampling: { max_tokens: 0 },
        timeout_ms: 1500,
      }),
    );
    equal(out.error?.code, grpc.status.DEADLINE_EXCEEDED);
    ok(out.tokenIds.length > 0, "tokens streamed until the limit");
    await waitIdle(t.client);
  } finally {
    await t.close();
  }
});

Deno.test("the proto comment on timeout_ms says it applies to Generate and Session, as docs/gateway-api.md does", async () => {
  const proto = await Deno.readTextFile(
    `${ROOT}proto/cy/sidecar/v1/sidecar.proto`,
  );
  const comment = fieldComment(proto, "uint32 timeout_ms = 8;");
  ok(!/session only/i.test(comment), comment);
  match(comment, /Generate and Session/);
  match(comment, /deadline/);

  const doc = await Deno.readTextFile(`${ROOT}docs/gateway-api.md`);
  match(doc, /`timeout_ms` in the request applies too; the earlier limit wins/);
});
