/**
 * Scenario 1: the latency the sidecar adds to each token.
 *
 * The simulator stamps every chunk with CLOCK_MONOTONIC at the moment it
 * hands the token to its socket; the load generator reads the same clock
 * when the token arrives on its gRPC stream. The floor is the same
 * generations read straight off the worker's socket by a minimal reader
 * of the worker protocol: the Go one (the same reader stack as the gRPC
 * client, so the difference is the sidecar's) and a Python one.
 *
 * @module
 */

import type { Context } from "../lib/context.ts";
import {
  failures,
  type LoadSpec,
  type Measured,
  runFloor,
  runGrpc,
  runPyFloor,
} from "../lib/load.ts";
import { startStack, waitIdle } from "../lib/stack.ts";

const NAME = "1. added latency per token";

// A steady 50 tokens/s per stream (20 ms apart), in generations of 50
// tokens: one second each, then the stream starts the next one.
const TOKENS = 50;
const ITL_MS = 20;

const LOADS = [
  { label: "1 stream x 50 tok/s", streams: 1 },
  { label: "64 streams x 50 tok/s", streams: 64 },
];

const PERCENTILES = [
  { key: "p50_us", name: "p50" },
  { key: "p99_us", name: "p99" },
  { key: "p999_us", name: "p99.9" },
] as const;

/** Runs scenario 1. */
export async function latency(ctx: Context): Promise<void> {
  const { env, durations: d, report } = ctx;
  const reps = ctx.options.repetitions;
  type Triple = { sidecar: Measured; floor: Measured; py: Measured };
  const byLoad = LOADS.map(() => [] as Triple[]);

  for (let rep = 0; rep < reps; rep++) {
    const stack = await startStack(env, { metering: "durable" });
    try {
      for (const [i, load] of LOADS.entries()) {
        const spec: LoadSpec = {
          streams: load.streams,
          durationS: d.latencyS,
          warmupS: d.warmupS,
          tokens: TOKENS,
          itlMs: ITL_MS,
          stamp: true,
        };
        const watch = { sidecar: stack.sidecar.pid, worker: stack.sim.pid };
        const sidecar = await runGrpc(env, stack.grpcAddr, spec, watch);
        await waitIdle(stack);
        const floor = await runFloor(env, stack.socket, spec, watch);
        const py = await runPyFloor(env, stack.socket, spec, watch);
        byLoad[i].push({ sidecar, floor, py });
        report.detail(NAME, { load: load.label, rep, sidecar, floor, py });
        for (
          const [what, m] of [["sidecar", sidecar], ["floor", floor]] as const
        ) {
          const failed = failures(m.load);
          if (failed) {
            report.note(
              `${NAME}, ${load.label}, ${what}: failed requests: ${failed}`,
            );
          }
        }
      }
    } finally {
      await stack.stop();
    }
  }

  for (const [i, load] of LOADS.entries()) {
    const runs = byLoad[i];
    const lat = (m: Measured, key: string) => {
      const l = m.load.latency_us as unknown as
        | Record<string, number>
        | undefined;
      return l ? l[key] : NaN;
    };
    const heavy = load.streams === 64;
    for (const p of PERCENTILES) {
      report.add(
        NAME,
        `${p.name} through the sidecar`,
        load.label,
        runs.map((r) => lat(r.sidecar, p.key)),
        "µs",
        { digits: 0 },
      );
      report.add(
        NAME,
        `${p.name} floor (Go socket reader)`,
        load.label,
        runs.map((r) => lat(r.floor, p.key)),
        "µs",
        { digits: 0 },
      );
      report.add(
        NAME,
        `${p.name} floor (Python socket reader)`,
        load.label,
        runs.map((r) => lat(r.py, p.key)),
        "µs",
        { digits: 0 },
      );
      const target = heavy && p.name === "p50"
        ? { op: "<=" as const, value: 100, text: "≤ 100 µs (0.1 ms)" }
        : heavy && p.name === "p99"
        ? { op: "<=" as const, value: 1000, text: "≤ 1,000 µs (1 ms)" }
        : undefined;
      report.add(
        NAME,
        `${p.name} added (sidecar − Go floor)`,
        load.label,
        runs.map((r) => lat(r.sidecar, p.key) - lat(r.floor, p.key)),
        "µs",
        { digits: 0, target },
      );
    }
    report.add(
      NAME,
      "tokens measured per run (sidecar)",
      load.label,
      runs.map((r) => r.sidecar.load.latency_us?.count ?? 0),
      "",
      { digits: 0 },
    );
  }
  report.note(
    `${NAME}: "added" is the sidecar's percentile minus the Go floor reader's percentile from the same repetition, ` +
      "then the median over repetitions. Both readers are Go, so the reader's own cost cancels; the Python floor is shown for reference.",
  );
}
