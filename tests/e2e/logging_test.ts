/**
 * The sidecar logs structured JSON, one object per line: at `info` it
 * speaks on start-up (with the bound addresses), on worker state changes
 * and on shutdown, never per request or per token.
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { generate, type Proc, req, within } from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";

type Line = Record<string, unknown>;

/** Index of the first line after `from` for which `pred` holds. */
function indexAfter(
  lines: Line[],
  from: number,
  pred: (l: Line) => boolean,
): number {
  const i = lines.findIndex((l, j) => j > from && pred(l));
  ok(i >= 0, `no such line after ${from}: ${JSON.stringify(lines)}`);
  return i;
}

/** Waits until the sidecar has logged `count` lines matching `pred`. */
async function waitLogged(
  proc: Proc,
  pred: (l: Line) => boolean,
  count: number,
): Promise<void> {
  const until = Date.now() + 15_000;
  while (proc.logs().filter(pred).length < count) {
    if (Date.now() > until) {
      throw new Error(`logged fewer than ${count}:\n${proc.lines.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

const connected = (l: Line) => l.msg === "worker connected";
const lost = (l: Line) =>
  l.msg === "worker state changed" && l.from === "ready" &&
  l.to === "disconnected";

Deno.test("at info the sidecar logs one JSON object per line: start-up with its addresses, state changes, shutdown, and nothing per token", async () => {
  const t = await startStack({
    simArgs: ["--ttft-ms", "1", "--itl-ms", "0"],
    toml: `[observability]\nlog_level = "info"`,
  });
  const { sidecar } = t;
  const { proc } = sidecar;
  const run = async (id: string, tokens: number) => {
    const out = await generate(
      t.client,
      req(id, `count [[sim tokens=${tokens}]]`, {
        sampling: { max_tokens: tokens },
      }),
    );
    equal(out.error, null);
    equal(out.tokenIds.length, tokens);
  };
  try {
    // The start-up line names the bound addresses, not the port 0 asked for.
    const startup = proc.logs().find((l) => l.msg === "cy-sidecar started")!;
    ok(!String(startup.grpc_addr).endsWith(":0"), String(startup.grpc_addr));
    equal(startup.grpc_addr, sidecar.grpcAddr); // the client connects there
    const healthz = await fetch(`http://${startup.metrics_addr}/healthz`);
    equal(healthz.status, 200);
    await healthz.body?.cancel();

    // Run A: one generation of 10 tokens. The worker going away then
    // closes the run with a line of its own, so every line of the run has
    // arrived once that one has.
    await waitLogged(proc, connected, 1);
    await run("small-1", 10);
    await t.sim.kill();
    await waitLogged(proc, lost, 1);

    // Run B: 500 tokens in five generations, between a reconnect and the
    // next loss of the worker.
    await t.restartSim();
    await waitLogged(proc, connected, 2);
    for (let i = 0; i < 5; i++) await run(`large-${i}`, 100);
    await t.sim.kill();
    await waitLogged(proc, lost, 2);

    proc.signal("SIGTERM");
    equal((await within("the sidecar exits", proc.exited)).code, 0);
    await waitLogged(proc, (l) => l.msg === "stopped", 1);

    // Every line of stdout and stderr is one JSON object with ts, level, msg.
    for (const raw of proc.lines) {
      const line = JSON.parse(raw);
      ok(typeof line === "object" && line !== null && !Array.isArray(line));
      ok(!Number.isNaN(Date.parse(line.ts)), raw);
      ok(["info", "warn", "error"].includes(line.level), raw);
      ok(typeof line.msg === "string" && line.msg.length > 0, raw);
    }
    const lines = proc.logs();
    equal(lines.length, proc.lines.length);

    // Start-up: the addresses it was bound to (checked live above).
    const started = lines.find((l) => l.msg === "cy-sidecar started")!;
    equal(started.level, "info");

    // Worker state changes, at info.
    const changes = lines.filter(lost);
    equal(changes.length, 2);
    ok(changes.every((l) => l.level === "info"));
    ok(lines.filter(connected).every((l) => l.level === "info"));

    // As many lines for 500 tokens in 5 generations as for 10 in one.
    const startA = Math.max(
      lines.indexOf(started),
      indexAfter(lines, -1, connected),
    );
    const endA = indexAfter(lines, startA, lost);
    const startB = indexAfter(lines, endA, connected);
    const endB = indexAfter(lines, startB, lost);
    const runA = lines.slice(startA + 1, endA);
    const runB = lines.slice(startB + 1, endB);
    deepStrictEqual(
      runB.map((l) => l.msg),
      runA.map((l) => l.msg),
      "lines of the 500-token run differ from those of the 10-token run",
    );

    // Shutdown, at info.
    const shutdown = lines.filter((l) =>
      l.msg === "shutting down" || l.msg === "stopped"
    );
    deepStrictEqual(shutdown.map((l) => [l.msg, l.level]), [
      ["shutting down", "info"],
      ["stopped", "info"],
    ]);
    equal(shutdown[0].signal, "SIGTERM");
  } finally {
    await t.close();
  }
});
