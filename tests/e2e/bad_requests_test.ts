import { equal, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { generate, metric, req, within } from "../helpers/harness.ts";
import { SessionDriver } from "../helpers/session.ts";
import { startStack } from "../helpers/stack.ts";

const long = (n: number) => "x".repeat(n);
const labels = (n: number) =>
  Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, "v"]));

/**
 * Requests the sidecar must refuse, each with the field its message must
 * start with. Each starts from a valid request and breaks one thing.
 */
const CASES: {
  name: string;
  request: Record<string, unknown>;
  field: string;
}[] = [
  {
    name: "empty request_id",
    request: { request_id: "" },
    field: "request_id",
  },
  {
    name: "request_id with a space",
    request: { request_id: "bad id" },
    field: "request_id",
  },
  {
    name: "request_id longer than 128",
    request: { request_id: long(129) },
    field: "request_id",
  },
  {
    name: "session_id longer than 128",
    request: { session_id: long(129) },
    field: "session_id",
  },
  {
    name: "model_id longer than 128",
    request: { model_id: long(129) },
    field: "model_id",
  },
  {
    name: "both prompt and messages",
    request: { messages: [{ role: "user", content: "hi" }] },
    field: "prompt",
  },
  {
    name: "neither prompt nor messages",
    request: { prompt: "" },
    field: "prompt",
  },
  {
    name: "a message without a role",
    request: { prompt: "", messages: [{ role: "", content: "hi" }] },
    field: "messages[0].role",
  },
  {
    name: "negative temperature",
    request: { sampling: { temperature: -1 } },
    field: "sampling.temperature",
  },
  {
    name: "top_p of 0",
    request: { sampling: { top_p: 0 } },
    field: "sampling.top_p",
  },
  {
    name: "top_p above 1",
    request: { sampling: { top_p: 1.5 } },
    field: "sampling.top_p",
  },
  {
    name: "seventeen stop sequences",
    request: {
      sampling: { stop: Array.from({ length: 17 }, (_, i) => `s${i}`) },
    },
    field: "sampling.stop",
  },
  {
    name: "an empty stop sequence",
    request: { sampling: { stop: ["ok", ""] } },
    field: "sampling.stop[1]",
  },
  {
    name: "a stop sequence longer than 256",
    request: { sampling: { stop: [long(257)] } },
    field: "sampling.stop[0]",
  },
  {
    name: "seed above 2^53-1",
    request: { sampling: { seed: "9007199254740992" } },
    field: "sampling.seed",
  },
  {
    name: "sixty-five billing labels",
    request: { billing_labels: labels(65) },
    field: "billing_labels",
  },
  {
    name: "a billing label value longer than 256",
    request: { billing_labels: { team: long(257) } },
    field: 'billing_labels["team"]',
  },
];

function badRequest(i: number, overrides: Record<string, unknown>) {
  return { ...req(`bad-${i}`, "hello there"), ...overrides };
}

/** A simulator logging every generation start, a sidecar, a client. */
function setup() {
  return startStack({ simArgs: ["--ttft-ms", "5", "--log-level", "debug"] });
}

Deno.test("Generate refuses each invalid request with INVALID_ARGUMENT naming the field, before the worker sees it", async (t) => {
  const s = await setup();
  try {
    for (const [i, c] of CASES.entries()) {
      await t.step(c.name, async () => {
        const out = await within(
          c.name,
          generate(s.client, badRequest(i, c.request)),
        );
        equal(out.error?.code, grpc.status.INVALID_ARGUMENT);
        ok(
          out.error!.details.startsWith(`${c.field}: `),
          `"${out.error!.details}" names ${c.field}`,
        );
        equal(out.events.length, 0);
      });
    }

    // A valid request still works, and none of the bad ones got through.
    const good = await generate(s.client, req("good-1"));
    equal(good.error, null);
    await s.sim.waitFor(/generation started id=good-1 /);
    ok(!s.sim.lines.some((l) => /generation started id=bad-/.test(l)));
    // Refused requests are counted, under their status code.
    equal(
      await metric(s.sidecar, "sidecar_requests_total", {
        rpc: "Generate",
        code: "INVALID_ARGUMENT",
      }),
      CASES.length,
    );
  } finally {
    await s.close();
  }
});

Deno.test("Session reports each invalid request as an INVALID_ARGUMENT error event naming the field", async () => {
  const s = await setup();
  const session = new SessionDriver(s.client);
  try {
    // Ids are made unique (and valid) except where the id is the problem.
    const ids = CASES.map((c, i) =>
      "request_id" in c.request ? String(c.request.request_id) : `bad-${i}`
    );
    CASES.forEach((c, i) => session.generate(badRequest(i, c.request)));

    equal((await session.finish())?.code, grpc.status.OK);
    equal(session.events.length, CASES.length);
    CASES.forEach((c, i) => {
      const ev = session.events.find((e) =>
        e.request_id === ids[i] && "error" in e &&
        e.error.message.startsWith(`${c.field}: `)
      );
      ok(ev && "error" in ev, `${c.name}: an error event naming ${c.field}`);
      equal(ev.error.code, grpc.status.INVALID_ARGUMENT);
    });
  } finally {
    session.call.cancel();
    await s.close();
  }
});

Deno.test("a model_id the worker does not serve fails with FAILED_PRECONDITION naming both models", async () => {
  const s = await setup();
  try {
    const out = await within(
      "mismatch",
      generate(s.client, req("mm-1", "hi", { model_id: "llama-9" })),
    );
    equal(out.error?.code, grpc.status.FAILED_PRECONDITION);
    ok(out.error!.details.includes('"llama-9"'), out.error!.details);
    ok(out.error!.details.includes('"sim-1"'), out.error!.details);
    equal(out.events.length, 0);

    const matching = await generate(
      s.client,
      req("mm-2", "hi", { model_id: "sim-1" }),
    );
    equal(matching.error, null);
    equal(matching.tokenIds.length, 8);
  } finally {
    await s.close();
  }
});
