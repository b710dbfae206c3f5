// deno-lint-ignore-file no-explicit-any -- grpc-js stubs are untyped
import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { BillingServer } from "../helpers/billing_server.ts";
import {
  DENO,
  gateway,
  generate,
  metric,
  Proc,
  req,
  type SidecarProc,
  startSidecar,
  startSim,
  tempDir,
} from "../helpers/harness.ts";

/** A metering test bed: simulator, billing server, sidecar. */
async function bed(toml = "", billingMode: BillingServer["mode"] = "ok") {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const billing = new BillingServer();
  billing.mode = billingMode;
  billing.start();
  const sim = await startSim(sock, ["--ttft-ms", "2", "--itl-ms", "1"]);
  const sidecar = await startSidecar(
    dir,
    sock,
    `[metering]
billing_endpoint = "${billing.url}"
batch_interval_secs = 0.1
request_timeout_secs = 0.5
batch_max_records = 16
${toml}`,
  );
  const client = gateway(sidecar.grpcAddr);
  const close = async () => {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
    await billing.close();
  };
  return { dir, sock, billing, sim, sidecar, client, close };
}

/** Streams a generation, cancelling it after `cancelAfter` chunks if set. */
function stream(
  client: any,
  request: Record<string, unknown>,
  cancelAfter?: number,
): Promise<{ ids: number; ended: string }> {
  return new Promise((resolve) => {
    let ids = 0;
    let chunks = 0;
    const call = client.Generate(request);
    call.on("data", (ev: any) => {
      if (ev.kind !== "chunk") return;
      ids += ev.chunk.token_ids.length;
      chunks++;
      if (cancelAfter !== undefined && chunks === cancelAfter) call.cancel();
    });
    call.on("error", (e: any) => resolve({ ids, ended: `error ${e.code}` }));
    call.on("end", () => resolve({ ids, ended: "end" }));
  });
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

Deno.test("billed completion tokens equal the token ids clients received, with cancels among many generations", async () => {
  const t = await bed();
  try {
    // 40 concurrent generations: a third cancel during a long pause after
    // their 3rd token, so nothing else was in flight when they left.
    const runs = Array.from({ length: 40 }, (_, i) => {
      const cancel = i % 3 === 0;
      const prompt = cancel
        ? `story ${i} [[sim tokens=20 itl_ms=400]]`
        : `story ${i} [[sim tokens=${5 + (i % 7)}]]`;
      return stream(
        t.client,
        req(`m-${i}`, prompt, { sampling: { max_tokens: 0 } }),
        cancel ? 3 : undefined,
      );
    });
    const results = await Promise.all(runs);
    const received = sum(results.map((r) => r.ids));

    const billed = await t.billing.waitFor((u) => u.length === 40);
    equal(sum(billed.map((r) => r.completion_tokens)), received);
    // Every generation is billed once, with its prompt (2 words each).
    deepStrictEqual(
      billed.map((r) => r.request_id).sort(),
      Array.from({ length: 40 }, (_, i) => `m-${i}`).sort(),
    );
    ok(billed.every((r) => r.prompt_tokens === 2));
    equal(billed.filter((r) => r.finish_reason === "cancelled").length, 14);
    ok(
      billed.filter((r) => r.finish_reason === "cancelled").every((r) =>
        r.completion_tokens === 3
      ),
    );
  } finally {
    await t.close();
  }
});

Deno.test("usage survives a billing outage: records wait in the queue and arrive once it is back", async () => {
  const t = await bed("", "fail500");
  try {
    const results = await Promise.all(
      Array.from(
        { length: 12 },
        (_, i) =>
          stream(t.client, req(`o-${i}`, `outage [[sim tokens=${i + 1}]]`)),
      ),
    );
    // The queue holds them while billing fails.
    for (
      let i = 0;
      i < 100 &&
      (await metric(t.sidecar, "sidecar_usage_send_failures_total")) === 0;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    ok(
      await metric(t.sidecar, "sidecar_usage_send_failures_total", {
        kind: "http_5xx",
      }) >= 1,
    );
    equal(await metric(t.sidecar, "sidecar_usage_queue_depth"), 12);
    ok(await metric(t.sidecar, "sidecar_usage_queue_oldest_age_seconds") > 0);
    equal(t.billing.unique().length, 0);

    t.billing.mode = "ok";
    const billed = await t.billing.waitFor((u) => u.length === 12, 30_000);
    equal(
      sum(billed.map((r) => r.completion_tokens)),
      sum(results.map((r) => r.ids)),
    );
    // 1..8 tokens, then max_tokens (8) caps the rest: 36 + 4 * 8.
    equal(sum(billed.map((r) => r.completion_tokens)), 68);
  } finally {
    await t.close();
  }
});

Deno.test("a lost acknowledgement makes the sidecar resend the same ids, so deduplication stays exact", async () => {
  const t = await bed("", "lose_ack");
  try {
    const results = await Promise.all(
      Array.from(
        { length: 6 },
        (_, i) => stream(t.client, req(`l-${i}`, `ack [[sim tokens=4]]`)),
      ),
    );
    await t.billing.waitFor((u) => u.length === 6);
    t.billing.mode = "ok";
    // Resent after the sidecar's request timeout, then acknowledged.
    for (
      let i = 0;
      i < 200 && (await metric(t.sidecar, "sidecar_usage_queue_depth")) > 0;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    equal(await metric(t.sidecar, "sidecar_usage_queue_depth"), 0);
    ok(
      t.billing.received.length > t.billing.unique().length,
      "records were sent more than once",
    );
    equal(
      sum(t.billing.unique().map((r) => r.completion_tokens)),
      sum(results.map((r) => r.ids)),
    );
  } finally {
    await t.close();
  }
});

Deno.test("a worker killed mid-stream bills exactly what each stream delivered, prompt included", async () => {
  const t = await bed();
  try {
    // Ten streams paused between tokens; the worker dies while all are open.
    const ids = Array.from({ length: 10 }, (_, i) => `crash-${i}`);
    const streams = ids.map((id, i) =>
      generate(
        t.client,
        req(id, `three word prompt [[sim tokens=50 itl_ms=${100 + 10 * i}]]`, {
          sampling: { max_tokens: 0 },
        }),
      )
    );
    for (
      let i = 0;
      i < 400 &&
      (await metric(t.sidecar, "sidecar_tokens_processed_total")) < 30;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 25));
    }
    await t.sim.kill();

    const results = await Promise.all(streams);
    ok(results.every((r) => r.error?.code === 14));
    const billed = await t.billing.waitFor((u) => u.length === 10);
    for (const [i, id] of ids.entries()) {
      const rec = billed.find((r) => r.request_id === id)!;
      equal(rec.completion_tokens, results[i].tokenIds.length, id);
      equal(rec.prompt_tokens, 3, id);
      equal(rec.finish_reason, "error");
    }
    ok(sum(billed.map((r) => r.completion_tokens)) >= 30);
  } finally {
    await t.close();
  }
});

Deno.test("gateway processes killed mid-stream are billed for exactly the tokens they printed", async () => {
  const t = await bed();
  try {
    // Tokens come 1.5 s apart; each client is killed right after printing
    // its second, so nothing is in transit when it vanishes.
    const clients = [0, 1, 2, 3].map((i) =>
      new Proc(DENO, [
        "run",
        "-A",
        "tools/generate.ts",
        ...[
          "--addr",
          t.sidecar.grpcAddr,
          "--json",
          "--request-id",
          `gone-${i}`,
          "--max-tokens",
          "0",
        ],
        ...["--prompt", "bye now [[sim tokens=20 ttft_ms=1 itl_ms=1500]]"],
      ])
    );
    const chunkLines = (c: Proc) =>
      c.lines.filter((l) => l.includes('"kind":"chunk"'));
    await Promise.all(clients.map(async (c) => {
      for (let i = 0; i < 1000 && chunkLines(c).length < 2; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      await c.kill();
    }));
    const printed = clients.map((c) =>
      sum(chunkLines(c).map((l) => JSON.parse(l).chunk.token_ids.length))
    );
    ok(printed.every((n) => n === 2), `printed ${printed}`);

    const billed = await t.billing.waitFor((u) => u.length === 4);
    for (let i = 0; i < 4; i++) {
      const rec = billed.find((r) => r.request_id === `gone-${i}`)!;
      equal(rec.completion_tokens, printed[i]);
      equal(rec.finish_reason, "cancelled");
      equal(rec.prompt_tokens, 2);
    }
  } finally {
    await t.close();
  }
});

Deno.test("usage committed before a SIGKILL of the sidecar is sent after it restarts", async () => {
  const t = await bed("", "down");
  await t.billing.stopListening();
  let restarted: SidecarProc | null = null;
  try {
    const results = await Promise.all(
      Array.from(
        { length: 8 },
        (_, i) =>
          stream(t.client, req(`k-${i}`, `kill [[sim tokens=${i + 2}]]`)),
      ),
    );
    ok(results.every((r) => r.ended === "end"));
    await t.sidecar.proc.kill();

    t.billing.mode = "ok";
    t.billing.start();
    restarted = await startSidecar(
      t.dir,
      t.sock,
      await Deno.readTextFile(t.sidecar.configPath),
    );
    const billed = await t.billing.waitFor((u) => u.length === 8, 30_000);
    equal(
      sum(billed.map((r) => r.completion_tokens)),
      sum(results.map((r) => r.ids)),
    );
  } finally {
    await restarted?.proc.kill();
    await t.close();
  }
});

Deno.test("a full usage queue refuses new generations with UNAVAILABLE and a pushback, then recovers", async () => {
  const t = await bed("offline_queue_size = 3", "fail500");
  try {
    for (let i = 0; i < 3; i++) {
      equal(
        (await generate(t.client, req(`f-${i}`, "fill [[sim tokens=2]]")))
          .error,
        null,
      );
    }
    const refused = await generate(
      t.client,
      req("f-3", "fill [[sim tokens=2]]"),
    );
    equal(refused.error?.code, 14);
    match(refused.error!.details, /usage queue is full/);
    ok(Number(refused.error!.metadata.get("grpc-retry-pushback-ms")[0]) > 0);
    const ready = await fetch(`${t.sidecar.metricsUrl}/readyz`);
    equal(ready.status, 503);
    equal((await ready.json()).usage_queue_full, true);

    t.billing.mode = "ok";
    await t.billing.waitFor((u) => u.length === 3, 30_000);
    for (
      let i = 0;
      i < 100 && (await metric(t.sidecar, "sidecar_usage_queue_depth")) > 0;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    equal(
      (await generate(t.client, req("f-4", "after [[sim tokens=2]]"))).error,
      null,
    );
  } finally {
    await t.close();
  }
});

Deno.test("a record billing refuses is set aside and kept; the rest of its batch goes through", async () => {
  const t = await bed();
  try {
    await Promise.all(
      Array.from(
        { length: 5 },
        (_, i) =>
          stream(
            t.client,
            req(`p-${i}`, "poison [[sim tokens=2]]", {
              billing_labels: { poison: i === 2 ? "1" : "0" },
            }),
          ),
      ),
    );
    await t.billing.waitFor((u) => u.length === 4);
    for (
      let i = 0;
      i < 100 &&
      (await metric(t.sidecar, "sidecar_usage_records_set_aside_total")) < 1;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    equal(await metric(t.sidecar, "sidecar_usage_records_set_aside_total"), 1);
    equal(await metric(t.sidecar, "sidecar_usage_queue_depth"), 0);
    ok(!t.billing.unique().some((r) => r.request_id === "p-2"));

    // The set-aside record is still there for an operator to read out.
    await t.sidecar.proc.kill();
    const dump = new Proc(DENO, [
      "run",
      "-A",
      "--unstable-kv",
      "main.ts",
      "--config",
      t.sidecar.configPath,
      "--dump-usage",
    ]);
    equal((await dump.exited).code, 0);
    const entries = dump.lines.filter((l) => l.startsWith("{")).map((l) =>
      JSON.parse(l)
    );
    const aside = entries.filter((e) => e.state === "set_aside");
    equal(aside.length, 1);
    equal(aside[0].record.request_id, "p-2");
    equal(aside[0].status, 400);
  } finally {
    await t.close();
  }
});

Deno.test("CloudEvents batches carry one event per record with a unique id and source", async () => {
  const t = await bed(`format = "cloudevents"\ninstance_id = "pod-a"`);
  try {
    await Promise.all(
      [0, 1, 2].map((i) =>
        stream(t.client, req(`c-${i}`, "ce [[sim tokens=3]]"))
      ),
    );
    await t.billing.waitFor((u) => u.length === 3);
    ok(
      t.billing.contentTypes.every((c) =>
        c === "application/cloudevents-batch+json"
      ),
    );
    const events = t.billing.bodies.flat() as any[];
    ok(
      events.every((e) =>
        e.specversion === "1.0" && e.source === "cy-sidecar/pod-a" &&
        e.id === e.data.id
      ),
    );
    equal(new Set(events.map((e) => e.id)).size, events.length);
  } finally {
    await t.close();
  }
});
