/**
 * A small gateway stand-in: streams one generation from a sidecar and
 * prints it as it arrives. Used by the demo (`scripts/demo.sh`).
 *
 *   deno run --allow-net tools/generate.ts [--addr 127.0.0.1:50051] [--prompt TEXT]
 *                                          [--max-tokens N] [--timeout-ms N] [--json]
 */

import * as grpc from "@grpc/grpc-js";
import { SidecarClient } from "../src/gateway/proto.ts";
import type { GenerateEventPb } from "../src/gateway/types.ts";

function flag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const addr = flag("addr", "127.0.0.1:50051");
const json = Deno.args.includes("--json");
const client = new SidecarClient(addr, grpc.credentials.createInsecure());
const request = {
  request_id: flag("request-id", `demo-${crypto.randomUUID().slice(0, 8)}`),
  session_id: flag("session-id", "demo-session"),
  prompt: flag("prompt", "Tell me a short story about a lighthouse keeper."),
  sampling: { max_tokens: Number(flag("max-tokens", "48")) },
  billing_labels: { customer: "demo" },
};
const timeoutMs = Number(flag("timeout-ms", "30000"));
const out = new TextEncoder();

const stream = client.Generate(request, { deadline: Date.now() + timeoutMs });
stream.on("data", (ev: GenerateEventPb & { kind: string }) => {
  if (json) {
    console.log(JSON.stringify(ev));
  } else if ("chunk" in ev && ev.kind === "chunk") {
    Deno.stdout.writeSync(out.encode(ev.chunk.text));
  } else if ("system" in ev && ev.kind === "system") {
    console.log(`\n${ev.system.text}`);
  } else if ("done" in ev && ev.kind === "done") {
    const u = ev.done.usage;
    console.log(
      `\n\n[done] finish_reason=${ev.done.finish_reason} model=${ev.done.model_id} ` +
        `prompt_tokens=${u.prompt_tokens} completion_tokens=${u.completion_tokens}`,
    );
  }
});
stream.on("error", (err: grpc.ServiceError) => {
  const pushback = err.metadata?.get("grpc-retry-pushback-ms")[0];
  console.error(
    `\n[error] ${grpc.status[err.code]}: ${err.details}${
      pushback ? ` (retry in ${pushback} ms)` : ""
    }`,
  );
  Deno.exit(1);
});
stream.on("end", () => {
  client.close();
});
