/**
 * Scenario 4: the sidecar's CPU at a typical GPU worker's load, 32 streams
 * of 40 tokens/s each, from /proc/<pid>/stat (user + system time of every
 * thread). Measured three ways, each repetition starting from another:
 *
 * - batched steps, the target's load: a continuously batching engine runs
 *   one decode step every 25 ms and emits one token for each of the 32
 *   running sequences per step, so the tokens of a step reach the socket
 *   together, as one `chunks` frame (worker protocol version 2);
 * - the same steps with the simulator pinned to protocol version 1, one
 *   `chunk` frame per token: what a version 1 worker costs the sidecar;
 * - own clocks: each generation on its own clock from its arrival, so
 *   tokens arrive spread over the step and each wake-up carries one or two.
 *   This is the costlier case for a proxy, shown beside the target's.
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

/** One way of delivering the load: a token schedule and a worker protocol. */
interface Variant {
  label: string;
  schedule: "batched" | "own";
  /** The versions the simulator accepts; unset: all (version 2 is chosen). */
  protocolVersions?: number[];
  /** Whether the target is judged on this variant's row. */
  target?: boolean;
}

const VARIANTS: readonly Variant[] = [
  {
    label: "32 streams x 40 tok/s, batched steps",
    schedule: "batched",
    target: true,
  },
  {
    label: "32 streams x 40 tok/s, batched steps, a frame per chunk",
    schedule: "batched",
    protocolVersions: [1],
  },
  { label: "32 streams x 40 tok/s, own clocks", schedule: "own" },
];

/** Runs scenario 4. */
export async function cpu(ctx: Context): Promise<void> {
  const { env, durations: d, report, options } = ctx;
  const specOf = (v: Variant): LoadSpec => ({
    ...LOAD,
    schedule: v.schedule,
    durationS: d.cpuS,
    warmupS: d.warmupS,
  });
  const runs = new Map<Variant, Measured[]>(VARIANTS.map((v) => [v, []]));

  for (let rep = 0; rep < options.repetitions; rep++) {
    // Each repetition starts from another variant, so that none always
    // runs first (or last) on a machine that drifts.
    const shift = rep % VARIANTS.length;
    const order = [...VARIANTS.slice(shift), ...VARIANTS.slice(0, shift)];
    for (const variant of order) {
      const stack = await startStack(env, {
        metering: "durable",
        protocolVersions: variant.protocolVersions,
      });
      try {
        const m = await runGrpc(env, stack.grpcAddr, specOf(variant), {
          sidecar: stack.sidecar.pid,
          worker: stack.sim.pid,
        });
        runs.get(variant)!.push(m);
        report.detail(NAME, { rep, variant: variant.label, ...m });
        const failed = failures(m.load);
        if (failed) {
          report.note(`${NAME} (${variant.label}): failed requests: ${failed}`);
        }
        await waitIdle(stack);
      } finally {
        await stack.stop();
      }
    }
  }

  const pct = (m: Measured, who: string) => 100 * m.cpuS[who] / m.load.window_s;
  let missed = false;
  for (const variant of VARIANTS) {
    const measured = runs.get(variant)!;
    const label = variant.label;
    const cpuRow = report.add(
      NAME,
      "sidecar CPU",
      label,
      measured.map((m) => pct(m, "sidecar")),
      "% of a core",
      variant.target
        ? { target: { op: "<=", value: TARGET_PCT, text: `≤ ${TARGET_PCT}%` } }
        : {},
    );
    if (variant.target) missed = cpuRow.value > TARGET_PCT;
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
      label: VARIANTS[0].label,
      spec: specOf(VARIANTS[0]),
      file: "cpu-profile-32x40",
    });
  }
}
