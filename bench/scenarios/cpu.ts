/**
 * Scenario 4: the sidecar's CPU at a typical GPU worker's load, 32 streams
 * of 40 tokens/s each, from /proc/<pid>/stat (user + system time of every
 * thread). Measured under two token schedules, alternating which runs first:
 *
 * - `batched`, the target's load: a continuously batching engine runs one
 *   decode step every 25 ms and emits one token for each of the 32 running
 *   sequences per step, so the tokens of a step reach the socket together;
 * - `own`: each generation on its own clock from its arrival, so tokens
 *   arrive spread over the step and each wake-up carries one or two. This
 *   is the costlier case for a proxy, shown beside the target's.
 *
 * When the target is missed (or `--profile always`), one more run under
 * V8's CPU profiler shows where the time goes.
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

const NAME = "4. CPU";

// 32 streams x 40 tokens/s (25 ms apart), in generations of 200 tokens.
const LOAD = { streams: 32, tokens: 200, itlMs: 25 };
const TARGET_PCT = 5;

type Schedule = "batched" | "own";
const SCHEDULES: readonly Schedule[] = ["batched", "own"];
const LABEL: Record<Schedule, string> = {
  batched: "32 streams x 40 tok/s, batched steps",
  own: "32 streams x 40 tok/s, own clocks",
};

/** Runs scenario 4. */
export async function cpu(ctx: Context): Promise<void> {
  const { env, durations: d, report, options } = ctx;
  const specOf = (schedule: Schedule): LoadSpec => ({
    ...LOAD,
    schedule,
    durationS: d.cpuS,
    warmupS: d.warmupS,
  });
  const runs: Record<Schedule, Measured[]> = { batched: [], own: [] };

  for (let rep = 0; rep < options.repetitions; rep++) {
    const order = rep % 2 === 0 ? SCHEDULES : [...SCHEDULES].reverse();
    for (const schedule of order) {
      const stack = await startStack(env, { metering: "durable" });
      try {
        const m = await runGrpc(env, stack.grpcAddr, specOf(schedule), {
          sidecar: stack.sidecar.pid,
          worker: stack.sim.pid,
        });
        runs[schedule].push(m);
        report.detail(NAME, { rep, schedule, ...m });
        const failed = failures(m.load);
        if (failed) {
          report.note(`${NAME} (${schedule}): failed requests: ${failed}`);
        }
        await waitIdle(stack);
      } finally {
        await stack.stop();
      }
    }
  }

  const pct = (m: Measured, who: string) => 100 * m.cpuS[who] / m.load.window_s;
  let missed = false;
  for (const schedule of SCHEDULES) {
    const measured = runs[schedule];
    const label = LABEL[schedule];
    const cpuRow = report.add(
      NAME,
      "sidecar CPU",
      label,
      measured.map((m) => pct(m, "sidecar")),
      "% of a core",
      schedule === "batched"
        ? { target: { op: "<=", value: TARGET_PCT, text: `≤ ${TARGET_PCT}%` } }
        : {},
    );
    if (schedule === "batched") missed = cpuRow.value > TARGET_PCT;
    report.add(
      NAME,
      "sidecar CPU per token",
      label,
      measured.map((m) => 1e6 * m.cpuS.sidecar / m.load.tokens),
      "µs",
      { digits: 0 },
    );
    report.add(
      NAME,
      "simulator (worker) CPU",
      label,
      measured.map((m) => pct(m, "worker")),
      "% of a core",
    );
    report.add(
      NAME,
      "tokens/s delivered",
      label,
      measured.map((m) => m.load.tokens_per_s),
      "/s",
      { digits: 0 },
    );
  }

  if (
    options.profile === "always" ||
    (options.profile === "auto" && missed && !options.smoke)
  ) {
    await profileRun(ctx, {
      scenario: NAME,
      label: LABEL.batched,
      spec: specOf("batched"),
      file: "cpu-profile-32x40",
    });
  }
}
