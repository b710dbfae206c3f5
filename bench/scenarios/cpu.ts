/**
 * Scenario 4: the sidecar's CPU at a typical GPU worker's load, 32 streams
 * of 40 tokens/s each, from /proc/<pid>/stat (user + system time of every
 * thread). When the target is missed (or `--profile always`), one more run
 * under V8's CPU profiler shows where the time goes.
 *
 * @module
 */

import type { Context } from "../lib/context.ts";
import { profileRun } from "../lib/profile_run.ts";
import {
  failures,
  type LoadSpec,
  type Measured,
  runGrpc,
} from "../lib/load.ts";
import { startStack, waitIdle } from "../lib/stack.ts";
import { median } from "../lib/stats.ts";

const NAME = "4. CPU";

// 32 streams x 40 tokens/s (25 ms apart), in generations of 200 tokens.
const LOAD = { streams: 32, tokens: 200, itlMs: 25 };
const LABEL = "32 streams x 40 tok/s";
const TARGET_PCT = 5;

/** Runs scenario 4. */
export async function cpu(ctx: Context): Promise<void> {
  const { env, durations: d, report, options } = ctx;
  const spec: LoadSpec = { ...LOAD, durationS: d.cpuS, warmupS: d.warmupS };
  const runs: Measured[] = [];

  for (let rep = 0; rep < options.repetitions; rep++) {
    const stack = await startStack(env, { metering: "durable" });
    try {
      const m = await runGrpc(env, stack.grpcAddr, spec, {
        sidecar: stack.sidecar.pid,
        worker: stack.sim.pid,
      });
      runs.push(m);
      report.detail(NAME, { rep, ...m });
      const failed = failures(m.load);
      if (failed) report.note(`${NAME}: failed requests: ${failed}`);
      await waitIdle(stack);
    } finally {
      await stack.stop();
    }
  }

  const pct = (m: Measured, who: string) => 100 * m.cpuS[who] / m.load.window_s;
  const sidecarPct = runs.map((m) => pct(m, "sidecar"));
  report.add(NAME, "sidecar CPU", LABEL, sidecarPct, "% of a core", {
    target: { op: "<=", value: TARGET_PCT, text: `≤ ${TARGET_PCT}%` },
  });
  report.add(
    NAME,
    "sidecar CPU per token",
    LABEL,
    runs.map((m) => 1e6 * m.cpuS.sidecar / m.load.tokens),
    "µs",
    { digits: 0 },
  );
  report.add(
    NAME,
    "simulator (worker) CPU",
    LABEL,
    runs.map((m) => pct(m, "worker")),
    "% of a core",
  );
  report.add(
    NAME,
    "tokens/s delivered",
    LABEL,
    runs.map((m) => m.load.tokens_per_s),
    "/s",
    { digits: 0 },
  );

  const missed = median(sidecarPct) > TARGET_PCT;
  if (
    options.profile === "always" ||
    (options.profile === "auto" && missed && !options.smoke)
  ) {
    await profileRun(ctx, {
      scenario: NAME,
      label: LABEL,
      spec,
      file: "cpu-profile-32x40",
    });
  }
}
