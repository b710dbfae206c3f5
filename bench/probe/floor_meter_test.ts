import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { defaultConfig } from "../../src/config/mod.ts";
import type { GenerationOutcome } from "../../src/gateway/generation.ts";
import { createLogger } from "../../src/log/logger.ts";
import { uuidv7 } from "../../src/metering/record.ts";
import { tempDbPath } from "../../src/metering/test_support.ts";
import { startFloorMeter } from "./floor_meter.ts";

function outcome(requestId: string): GenerationOutcome {
  const started = Date.now() - 100;
  return {
    recordId: uuidv7(started),
    requestId,
    sessionId: "s-1",
    modelId: "m-1",
    billingLabels: { customer: "acme" },
    finishReason: "stop",
    promptTokens: 4,
    completionTokens: 1,
    workerCompletionTokens: 1,
    startedAtMs: started,
    endedAtMs: started + 50,
    error: null,
  };
}

async function pendingIds(path: string): Promise<string[]> {
  const kv = await Deno.openKv(path);
  try {
    const ids: string[] = [];
    const list = kv.list<{ records: { request_id: string }[] }>({
      prefix: ["usage", "pending"],
    });
    for await (const e of list) {
      ids.push(...e.value.records.map((r) => r.request_id));
    }
    return ids;
  } finally {
    kv.close();
  }
}

Deno.test("the floor meter commits before it resolves, then sends and removes", async () => {
  const bodies: { records: { request_id: string }[] }[] = [];
  let sent!: () => void;
  const allSent = new Promise<void>((r) => (sent = r));
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {} },
    async (req) => {
      bodies.push(await req.json());
      if (bodies.flatMap((b) => b.records).length >= 3) sent();
      return new Response(null, { status: 204 });
    },
  );
  const path = await tempDbPath();
  const c = defaultConfig();
  c.metering.mode = "durable";
  c.metering.usageDbPath = path;
  c.metering.billingEndpoint = `http://127.0.0.1:${server.addr.port}/v1/usage`;
  c.metering.batchMaxRecords = 3;
  c.metering.batchIntervalMs = 60_000;
  const meter = await startFloorMeter(
    c,
    null,
    createLogger({ sink: () => {} }),
  );
  try {
    await meter.record(outcome("r-1"));
    await meter.record(outcome("r-2"));
    // Resolved means committed: both are in the database, unsent (the
    // batch is not full and the interval is a minute).
    assertEquals((await pendingIds(path)).sort(), ["r-1", "r-2"]);
    assertEquals(bodies.length, 0);

    // The third fills a batch: sent at once, then removed.
    await meter.record(outcome("r-3"));
    await allSent;
    assertEquals(
      bodies.flatMap((b) => b.records.map((r) => r.request_id)).sort(),
      ["r-1", "r-2", "r-3"],
    );
    for (let i = 0; i < 100 && (await pendingIds(path)).length > 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assertEquals(await pendingIds(path), []);
  } finally {
    await meter.shutdown(1_000);
    await server.shutdown();
  }
});
