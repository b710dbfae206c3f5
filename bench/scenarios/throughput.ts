/**
 * Scenario 2 (throughput at saturation) and scenario 6 (what durable
 * metering costs), measured together: each repetition runs the same two
 * saturation workloads on a sidecar with `[metering] mode = "durable"`
 * (posting to a local billing endpoint that accepts everything at once)
 * and on one with `mode = "off"`, alternating which goes first.
 *
 * Scenario 6 also runs the short-generation workload on the sidecar with
 * the floor meter of `probe/floor_meter.ts` in place of its own (durable
 * metering's least work on Deno KV), so that the ratio reads against what
 * any durable meter on Deno KV costs here; the three arms rotate order.
 *
 * Scenario 2 also loads the gateway side's ceiling (`lib/ceiling.ts`: a
 * bare grpc-js server with a one-token reply) with the short-generation
 * workload in each repetition, on Deno and on Node.js, so that the
 * sidecar's rate reads against what grpc-js itself serves here; and the
 * relay floor of scenario 1 on Deno, corked as the sidecar corks (bare
 * grpc-js carrying each call to the same simulator and its chunk back),
 * so that it reads against what any sidecar on Deno that goes to the
 * worker serves.
 *
 * @module
 */

import type { Context } from "../lib/context.ts";
import {
  type CeilingRuntime,
  nodeCeilingDir,
  startCeiling,
  startRelay,
} from "../lib/ceiling.ts";
import type { ProfileSummary } from "../lib/cpu_profile.ts";
import { profileRun } from "../lib/profile_run.ts";
import {
  failures,
  type LoadSpec,
  type Measured,
  runGrpc,
} from "../lib/load.ts";
import { type MeteringMode, startStack, waitIdle } from "../lib/stack.ts";

const TWO = "2. throughput";
const SIX = "6. metering cost";

// Short generations: one token each, as fast as they come back, with 128
// in flight on one connection (enough to keep the sidecar busy; more only
// queues).
const SHORT = { streams: 128, tokens: 1 };
// Streamed tokens: 256 generations of 200 tokens in flight, no pause
// between tokens.
const STREAMED = { streams: 256, tokens: 200 };

const SHORT_LOAD = `${SHORT.streams} in flight, 1 token each`;
const STREAMED_LOAD =
  `${STREAMED.streams} streams x ${STREAMED.tokens} tokens, no pause`;

interface Arm {
  short: Measured;
  /** Not run for the floor meter. */
  streamed?: Measured;
}

/** An arm of the sidecar's own meter (durable or off): both workloads. */
type Full = Required<Arm>;

async function runArm(ctx: Context, metering: MeteringMode): Promise<Arm> {
  const { env, durations: d } = ctx;
  const base = { durationS: d.throughputS, warmupS: d.warmupS, itlMs: 0 };
  // A fresh sidecar for each workload: one saturation run leaves the heap
  // (and the garbage collector's state) to the next.
  const once = async (spec: LoadSpec) => {
    const stack = await startStack(env, { metering });
    try {
      const watch = { sidecar: stack.sidecar.pid, worker: stack.sim.pid };
      const m = await runGrpc(env, stack.grpcAddr, spec, watch);
      await waitIdle(stack);
      return m;
    } finally {
      await stack.stop();
    }
  };
  const short = await once({ ...base, ...SHORT });
  if (metering === "floor") return { short };
  return { short, streamed: await once({ ...base, ...STREAMED }) };
}

/** The short-generation workload, timed as the context says. */
function shortSpec(ctx: Context): LoadSpec {
  const d = ctx.durations;
  return { ...SHORT, durationS: d.throughputS, warmupS: d.warmupS, itlMs: 0 };
}

async function runCeiling(
  ctx: Context,
  runtime: CeilingRuntime,
): Promise<Measured> {
  const ceiling = await startCeiling(ctx.env, runtime);
  try {
    return await runGrpc(ctx.env, ceiling.addr, shortSpec(ctx), {
      server: ceiling.proc.pid,
    });
  } finally {
    await ceiling.proc.stop();
  }
}

/**
 * The short-generation workload through the corked relay on Deno, in front
 * of a simulator of its own (the stack's sidecar stays idle beside it).
 */
async function runRelay(ctx: Context): Promise<Measured> {
  const stack = await startStack(ctx.env, { metering: "off" });
  try {
    const relay = await startRelay(ctx.env, "deno-corked", stack.socket);
    try {
      return await runGrpc(ctx.env, relay.addr, shortSpec(ctx), {
        server: relay.proc.pid,
        worker: stack.sim.pid,
      });
    } finally {
      await relay.proc.stop();
    }
  } finally {
    await stack.stop();
  }
}

/** Runs scenario 2, scenario 6, or both (they share their runs). */
export async function throughput(
  ctx: Context,
  which: { two: boolean; six: boolean },
): Promise<void> {
  const { report } = ctx;
  const reps = ctx.options.repetitions;
  const on: Full[] = [];
  const off: Full[] = [];
  const floor: Arm[] = [];
  const ceilings: Record<CeilingRuntime, Measured[]> = { deno: [], node: [] };
  const relays: Measured[] = [];
  const runtimes: CeilingRuntime[] = nodeCeilingDir()
    ? ["deno", "node"]
    : ["deno"];
  if (which.two && runtimes.length === 1) {
    report.note(
      `${TWO}: the Node.js ceiling was skipped (bash bench/run.sh installs it with npm when Node.js is present)`,
    );
  }

  for (let rep = 0; rep < reps; rep++) {
    const arms: MeteringMode[] = ["durable", "off", "floor"];
    const order: MeteringMode[] = !which.six
      ? ["durable"]
      : arms.map((_, i) => arms[(i + rep) % arms.length]);
    if (which.two) {
      for (const runtime of runtimes) {
        const m = await runCeiling(ctx, runtime);
        ceilings[runtime].push(m);
        report.detail(TWO, { ceiling: runtime, rep, ...m });
        const failed = failures(m.load);
        if (failed) {
          report.note(`${TWO}, ${runtime} ceiling: failed requests: ${failed}`);
        }
      }
      const relay = await runRelay(ctx);
      relays.push(relay);
      report.detail(TWO, { relay: "deno-corked", rep, ...relay });
      const failed = failures(relay.load);
      if (failed) report.note(`${TWO}, relay: failed requests: ${failed}`);
    }
    for (const mode of order) {
      const arm = await runArm(ctx, mode);
      if (mode === "floor") floor.push(arm);
      else (mode === "durable" ? on : off).push(arm as Full);
      report.detail(which.two ? TWO : SIX, { metering: mode, rep, ...arm });
      for (
        const [what, m] of [["short", arm.short], [
          "streamed",
          arm.streamed,
        ]] as const
      ) {
        if (m === undefined) continue;
        const failed = failures(m.load);
        if (failed) {
          report.note(
            `${TWO}, metering ${mode}, ${what}: failed requests: ${failed}`,
          );
        }
      }
    }
  }

  const pct = (m: Measured, who: string) => 100 * m.cpuS[who] / m.load.window_s;
  const usPerCall = (m: Measured, who: string) =>
    1e6 * m.cpuS[who] / m.load.requests_ok;
  const rate = (a: Arm) => a.short.load.requests_per_s;
  // Short generations/s of the sidecar's arms over another server's, per
  // repetition.
  const overRate = (arms: Arm[], others: Measured[]) =>
    arms.map((a, i) => rate(a) / others[i].load.requests_per_s);
  if (which.two) {
    const shortRate = report.add(
      TWO,
      "short generations/s (metering durable)",
      SHORT_LOAD,
      on.map((a) => a.short.load.requests_per_s),
      "/s",
      {
        digits: 0,
        target: { op: ">=", value: 10_000, text: "≥ 10,000/s" },
      },
    );
    report.add(
      TWO,
      "sidecar CPU during it",
      SHORT_LOAD,
      on.map((a) => pct(a.short, "sidecar")),
      "% of a core",
    );
    const runtimeName = { deno: "Deno", node: "Node.js" };
    for (const runtime of runtimes) {
      const runs = ceilings[runtime];
      report.add(
        TWO,
        `ceiling: bare grpc-js on ${runtimeName[runtime]}, one-token reply`,
        SHORT_LOAD,
        runs.map((m) => m.load.requests_per_s),
        "/s",
        { digits: 0 },
      );
      report.add(
        TWO,
        `ceiling server CPU (${runtimeName[runtime]})`,
        SHORT_LOAD,
        runs.map((m) => pct(m, "server")),
        "% of a core",
      );
      report.add(
        TWO,
        `sidecar / ceiling on ${runtimeName[runtime]}`,
        SHORT_LOAD,
        overRate(on, runs),
        "",
        { digits: 2 },
      );
    }
    report.add(
      TWO,
      "floor: a bare grpc-js relay to the worker on Deno, corked",
      SHORT_LOAD,
      relays.map((m) => m.load.requests_per_s),
      "/s",
      { digits: 0 },
    );
    report.add(
      TWO,
      "relay CPU per generation",
      SHORT_LOAD,
      relays.map((m) => usPerCall(m, "server")),
      "µs",
      { digits: 0 },
    );
    report.add(
      TWO,
      "sidecar CPU per generation (metering durable)",
      SHORT_LOAD,
      on.map((a) => usPerCall(a.short, "sidecar")),
      "µs",
      { digits: 0 },
    );
    report.add(
      TWO,
      "sidecar / relay",
      SHORT_LOAD,
      overRate(on, relays),
      "",
      { digits: 2 },
    );
    if (which.six) {
      // Run with scenario 6: the sidecar doing what the relay does, and
      // its own checks, ledger and metrics, but no metering.
      report.add(
        TWO,
        "sidecar with metering off / relay",
        SHORT_LOAD,
        overRate(off, relays),
        "",
        { digits: 2 },
      );
    }
    report.add(
      TWO,
      "simulator (worker) CPU during it",
      SHORT_LOAD,
      on.map((a) => pct(a.short, "worker")),
      "% of a core",
    );
    report.add(
      TWO,
      "load generator CPU during it",
      SHORT_LOAD,
      on.map((a) => a.short.load.client_cpu_pct),
      "% of a core",
    );
    report.add(
      TWO,
      "short generations per sidecar CPU-second",
      SHORT_LOAD,
      on.map((a) => a.short.load.requests_ok / a.short.cpuS.sidecar),
      "/s",
      { digits: 0 },
    );
    report.add(
      TWO,
      "streamed tokens/s (metering durable)",
      STREAMED_LOAD,
      on.map((a) => a.streamed.load.tokens_per_s),
      "/s",
      {
        digits: 0,
      },
    );
    report.add(
      TWO,
      "sidecar CPU during it",
      STREAMED_LOAD,
      on.map((a) => pct(a.streamed, "sidecar")),
      "% of a core",
    );
    report.add(
      TWO,
      "simulator (worker) CPU during it",
      STREAMED_LOAD,
      on.map((a) => pct(a.streamed, "worker")),
      "% of a core",
    );
    report.add(
      TWO,
      "load generator CPU during it",
      STREAMED_LOAD,
      on.map((a) => a.streamed.load.client_cpu_pct),
      "% of a core",
    );
    report.add(
      TWO,
      "tokens per sidecar CPU-second",
      STREAMED_LOAD,
      on.map((a) => a.streamed.load.tokens / a.streamed.cpuS.sidecar),
      "/s",
      { digits: 0 },
    );
    const { options } = ctx;
    const missed = shortRate.value < 10_000;
    if (
      options.profile === "always" ||
      (options.profile === "auto" && missed && !options.smoke)
    ) {
      await profileRun(ctx, {
        scenario: TWO,
        label: SHORT_LOAD,
        spec: shortSpec(ctx),
        file: "cpu-profile-short-generations",
      });
    }
  }
  if (which.six) {
    report.add(
      SIX,
      "short generations/s, metering off",
      SHORT_LOAD,
      off.map((a) => a.short.load.requests_per_s),
      "/s",
      { digits: 0 },
    );
    report.add(
      SIX,
      "short generations/s, durable",
      SHORT_LOAD,
      on.map((a) => a.short.load.requests_per_s),
      "/s",
      { digits: 0 },
    );
    const shortRatio = report.add(
      SIX,
      "short generations: durable / off",
      SHORT_LOAD,
      on.map((a, i) =>
        a.short.load.requests_per_s / off[i].short.load.requests_per_s
      ),
      "",
      {
        digits: 2,
        target: { op: ">=", value: 0.9, text: "≥ 0.90" },
      },
    );
    report.add(
      SIX,
      "streamed tokens/s, metering off",
      STREAMED_LOAD,
      off.map((a) => a.streamed.load.tokens_per_s),
      "/s",
      { digits: 0 },
    );
    report.add(
      SIX,
      "streamed tokens/s: durable / off",
      STREAMED_LOAD,
      on.map((a, i) =>
        a.streamed.load.tokens_per_s / off[i].streamed.load.tokens_per_s
      ),
      "",
      {
        digits: 2,
        target: { op: ">=", value: 0.9, text: "≥ 0.90" },
      },
    );
    // Per repetition, one arm against another at the short-generation load.
    const perGen = (a: Arm) => usPerCall(a.short, "sidecar");
    const ratio = (metric: string, of: (rep: number) => number) =>
      report.add(SIX, metric, SHORT_LOAD, on.map((_, i) => of(i)), "", {
        digits: 2,
      });
    ratio(
      "sidecar CPU per short generation: durable / off",
      (i) => perGen(on[i]) / perGen(off[i]),
    );
    report.add(
      SIX,
      "floor: short generations/s, a minimal durable meter on Deno KV",
      SHORT_LOAD,
      floor.map(rate),
      "/s",
      { digits: 0 },
    );
    ratio(
      "floor: short generations, minimal meter / off",
      (i) => rate(floor[i]) / rate(off[i]),
    );
    ratio(
      "floor: sidecar CPU per short generation, minimal meter / off",
      (i) => perGen(floor[i]) / perGen(off[i]),
    );
    ratio(
      "short generations: durable / minimal meter",
      (i) => rate(on[i]) / rate(floor[i]),
    );
    const { options } = ctx;
    if (
      options.profile === "always" ||
      (options.profile === "auto" && shortRatio.value < 0.9 && !options.smoke)
    ) {
      await profileMetering(ctx, shortSpec(ctx));
    }
  }
}

/**
 * Profiles the short-generation load with metering durable and off, and
 * notes what the sidecar's metering code costs with its callees (the Deno
 * KV ops and V8 serialization it calls): the share of the CPU that the
 * throughput ratio, noisy between repetitions, comes from.
 */
async function profileMetering(ctx: Context, spec: LoadSpec): Promise<void> {
  const share = (s: ProfileSummary | null, entry: string) =>
    s?.inclusive.find((x) => x.name === entry)?.pct ?? 0;
  const profile = (metering: MeteringMode) =>
    profileRun(ctx, {
      scenario: SIX,
      label: `${SHORT_LOAD}, metering ${metering}`,
      spec,
      file: `cpu-profile-metering-${metering}`,
      metering,
    });
  const durable = await profile("durable");
  const off = await profile("off");
  if (!durable || !off) return;
  const parts = [
    ["writing", "group_commit.ts"],
    ["sending", "reporter.ts"],
    ["reading back", "pending_read.ts"],
    ["acknowledging", "chunk_removal.ts"],
  ].map(([what, file]) =>
    `${what} (${file}) ${share(durable, `src/metering/${file}`).toFixed(1)}%`
  ).join(", ");
  ctx.report.note(
    `${SIX}: with callees included, src/metering/ takes ${
      share(durable, "src/metering/").toFixed(1)
    }% of the sidecar's busy samples with metering durable (${parts}) and ${
      share(off, "src/metering/").toFixed(1)
    }% with it off, at ${SHORT_LOAD}; all of src/ takes ${
      share(durable, "src/").toFixed(1)
    }% and ${share(off, "src/").toFixed(1)}%.`,
  );
}
