/**
 * Scenario 3: the sidecar's resident memory idle, with 1,000 streams open,
 * and over a soak at steady load; with Deno's default V8 heap settings and
 * with a bounded heap, side by side.
 *
 * @module
 */

import { parseConfig } from "../../src/config/mod.ts";
import { denoFlags, permissionSet } from "../../src/permissions.ts";
import { startCeiling } from "../lib/ceiling.ts";
import type { Context } from "../lib/context.ts";
import {
  failures,
  type LoadSpec,
  type Measured,
  runGrpc,
} from "../lib/load.ts";
import { memory, runTool, sampler, sleep } from "../lib/procs.ts";
import {
  productionV8Flags,
  sidecarToml,
  startBilling,
  startSim,
  startStack,
  waitIdle,
} from "../lib/stack.ts";
import { MB, median, MiB, slope } from "../lib/stats.ts";

const NAME = "3. memory";

/**
 * Launches compared: as in production (the V8 flags `src/permissions.ts`
 * sets), with Deno's own defaults, and with the old-generation cap alone
 * (no semi-space bound), the launch the production flags replaced.
 * Targets are judged on the production launch.
 */
function variants(): { label: string; v8Flags?: string[] }[] {
  const prod = productionV8Flags();
  const label = (flags: string[]) =>
    flags.length ? `--v8-flags=${flags.join(",")}` : "no V8 flags";
  const capOnly = prod.filter((f) => !f.startsWith("--max-semi-space-size"));
  const out: { label: string; v8Flags?: string[] }[] = [
    { label: `production launch (${label(prod)})` },
  ];
  if (prod.length) out.push({ label: label([]), v8Flags: [] });
  if (capOnly.length && capOnly.length !== prod.length) {
    out.push({ label: label(capOnly), v8Flags: capOnly });
  }
  return out;
}

// 1,000 streams open at once, each a slow generation (4 tokens/s) that
// outlasts the hold.
const HOLD_STREAMS = 1000;
const HOLD_ITL_MS = 250;

function holdSpec(d: Context["durations"]): LoadSpec {
  return {
    streams: HOLD_STREAMS,
    durationS: d.holdS,
    warmupS: Math.min(d.warmupS, d.holdS / 2),
    tokens: Math.ceil((d.holdS * 1000) / HOLD_ITL_MS) + 20,
    itlMs: HOLD_ITL_MS,
    rampS: Math.min(1, d.holdS / 4),
  };
}

// The soak's steady load: 64 streams x 50 tokens/s in one-second
// generations, so that about 64 generations start and end every second.
const SOAK = { streams: 64, tokens: 50, itlMs: 20 };

// The steady load before and after a burst (scenario 1's heavy load), and
// the burst itself (scenario 5's saturation load).
const STEADY = { streams: 64, tokens: 50, itlMs: 20, stamp: true };
const BURST = { streams: 64, tokens: 500, itlMs: 0 };
// Counting starts this soon after the burst ends.
const AFTER_BURST_WARMUP_S = 0.5;

// "No growth": after the first fifth of the soak (heaps and buffers reach
// their working size), the median RSS of the last fifth exceeds the median
// of the second fifth by at most this much.
const GROWTH_ALLOWED_BYTES = 4 * MiB;

/** Runs scenario 3. */
export async function memoryScenario(ctx: Context): Promise<void> {
  const { env, durations: d, report } = ctx;
  const reps = ctx.options.repetitions;
  const hold = `${HOLD_STREAMS} streams x ${1000 / HOLD_ITL_MS} tok/s`;

  for (const [v, variant] of variants().entries()) {
    const idle: number[] = [];
    const idleAnon: number[] = [];
    const idleFile: number[] = [];
    const peak: number[] = [];
    const during: number[] = [];
    const after: number[] = [];
    const steadyBefore: Measured[] = [];
    const steadyAfter: Measured[] = [];
    const burstPeak: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const stack = await startStack(env, {
        metering: "durable",
        v8Flags: variant.v8Flags,
      });
      try {
        const pid = stack.sidecar.pid;
        await sleep(d.idleSettleS * 1000);
        const m = memory(pid);
        idle.push(m.rss);
        idleAnon.push(m.anon);
        idleFile.push(m.file);
        const steady = { ...STEADY, durationS: d.latencyS, warmupS: d.warmupS };
        steadyBefore.push(
          await runGrpc(env, stack.grpcAddr, steady, { sidecar: pid }),
        );
        await waitIdle(stack);

        const samples = sampler(() => memory(pid).rss, 250);
        const run = await runGrpc(env, stack.grpcAddr, holdSpec(d), {
          sidecar: pid,
        });
        const rss = samples.stop();
        peak.push(Math.max(...rss));
        // Steady state with every stream open: the second half of the hold.
        during.push(median(rss.slice(Math.floor(rss.length / 2))));
        await waitIdle(stack);
        await sleep(d.idleSettleS * 1000);
        after.push(memory(pid).rss);

        // A saturation burst, then the steady load again at once: how long
        // the heap the burst left behind keeps the collector busy shows in
        // the CPU and latency of the seconds after it.
        const burstRss = sampler(() => memory(pid).rss, 250);
        await runGrpc(env, stack.grpcAddr, {
          ...BURST,
          durationS: d.throughputS,
          warmupS: d.warmupS,
        }, {});
        burstPeak.push(Math.max(...burstRss.stop()));
        steadyAfter.push(
          await runGrpc(env, stack.grpcAddr, {
            ...steady,
            warmupS: AFTER_BURST_WARMUP_S,
          }, { sidecar: pid }),
        );
        await waitIdle(stack);
        report.detail(NAME, {
          variant: variant.label,
          rep,
          idle: idle.at(-1),
          rss,
          run,
        });
        const failed = failures(run.load);
        if (failed) {
          report.note(
            `${NAME}, ${hold}, ${variant.label}: failed requests: ${failed}`,
          );
        }
        if (
          run.load.requests_ok +
                Object.keys(run.load.requests_failed).length === 0 &&
          run.load.tokens === 0
        ) {
          report.note(`${NAME}, ${hold}: no tokens arrived`);
        }
      } finally {
        await stack.stop();
      }
    }
    const isDefault = v === 0;
    report.add(
      NAME,
      `RSS idle, ${variant.label}`,
      "no traffic",
      idle.map((b) => b / MiB),
      "MiB",
      {
        target: isDefault
          ? { op: "<=", value: 50 * MB / MiB, text: "≤ 50 MB (47.7 MiB)" }
          : undefined,
      },
    );
    report.add(
      NAME,
      `RSS idle: anonymous (heap, buffers), ${variant.label}`,
      "no traffic",
      idleAnon.map((b) => b / MiB),
      "MiB",
    );
    report.add(
      NAME,
      `RSS idle: file-backed (the Deno executable's pages), ${variant.label}`,
      "no traffic",
      idleFile.map((b) => b / MiB),
      "MiB",
    );
    report.add(
      NAME,
      `RSS with ${HOLD_STREAMS} streams open, ${variant.label}`,
      hold,
      during.map((b) => b / MiB),
      "MiB",
      {
        target: isDefault
          ? { op: "<=", value: 128, text: "≤ 128 MiB" }
          : undefined,
      },
    );
    report.add(
      NAME,
      `RSS peak, ${variant.label}`,
      hold,
      peak.map((b) => b / MiB),
      "MiB",
    );
    const cpuPct = (m: Measured) => 100 * m.cpuS.sidecar / m.load.window_s;
    const p = (m: Measured, k: "p50_us" | "p99_us") =>
      m.load.latency_us?.[k] ?? NaN;
    const steadyLabel = "64 streams x 50 tok/s";
    report.add(
      NAME,
      `sidecar CPU at steady load, fresh, ${variant.label}`,
      steadyLabel,
      steadyBefore.map(cpuPct),
      "% of a core",
    );
    report.add(
      NAME,
      `sidecar CPU at steady load right after a burst, ${variant.label}`,
      steadyLabel,
      steadyAfter.map(cpuPct),
      "% of a core",
    );
    report.add(
      NAME,
      `token p99 at steady load, fresh, ${variant.label}`,
      steadyLabel,
      steadyBefore.map((m) => p(m, "p99_us")),
      "µs",
      { digits: 0 },
    );
    report.add(
      NAME,
      `token p99 at steady load right after a burst, ${variant.label}`,
      steadyLabel,
      steadyAfter.map((m) => p(m, "p99_us")),
      "µs",
      { digits: 0 },
    );
    report.add(
      NAME,
      `RSS peak in the burst, ${variant.label}`,
      "64 streams, no pause",
      burstPeak.map((b) => b / MiB),
      "MiB",
    );
    report.add(
      NAME,
      `RSS idle after the streams, ${variant.label}`,
      "no traffic",
      after.map((b) => b / MiB),
      "MiB",
    );
  }

  await heapProbe(ctx);
  await grpcFloor(ctx, hold);
  await soak(ctx);
}

/**
 * The same idle wait, steady run and 1,000-stream hold against a bare
 * grpc-js server on Deno with the production V8 flags
 * (`bench/probe/grpc_ceiling.mjs`, one timer per stream, no worker, no
 * metering): what holding the streams costs the runtime and gRPC library
 * alone, the floor under the sidecar's figure.
 */
async function grpcFloor(ctx: Context, hold: string): Promise<void> {
  const { env, durations: d, report } = ctx;
  const idle: number[] = [];
  const during: number[] = [];
  for (let rep = 0; rep < ctx.options.repetitions; rep++) {
    const ceiling = await startCeiling(env, "deno");
    try {
      const pid = ceiling.proc.pid;
      await sleep(d.idleSettleS * 1000);
      idle.push(memory(pid).rss);
      await runGrpc(env, ceiling.addr, {
        ...STEADY,
        durationS: d.latencyS,
        warmupS: d.warmupS,
      }, {});
      const samples = sampler(() => memory(pid).rss, 250);
      await runGrpc(env, ceiling.addr, holdSpec(d), {});
      const rss = samples.stop();
      during.push(median(rss.slice(Math.floor(rss.length / 2))));
    } finally {
      await ceiling.proc.stop();
    }
  }
  report.add(
    NAME,
    "probe: RSS of bare grpc-js on Deno, idle",
    "no traffic",
    idle.map((b) => b / MiB),
    "MiB",
  );
  report.add(
    NAME,
    `probe: RSS of bare grpc-js on Deno with ${HOLD_STREAMS} streams open`,
    hold,
    during.map((b) => b / MiB),
    "MiB",
  );
}

/**
 * Runs `bench/probe/heap.ts` stage by stage, with the production V8 flags:
 * what an empty Deno costs, what the sidecar's modules add, and V8's heap
 * figures for a sidecar idling in-process.
 */
async function heapProbe(ctx: Context): Promise<void> {
  const { env, report } = ctx;
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "cybh" });
  const socket = `${dir}/w.sock`;
  const billing = await startBilling(env);
  const sim = await startSim(env, socket);
  try {
    await Deno.mkdir(`${dir}/usage`, { recursive: true });
    const config = `${dir}/sidecar.toml`;
    const text = sidecarToml(dir, socket, "durable", billing.url);
    await Deno.writeTextFile(config, text);
    // The probe runs a sidecar in-process, so it gets the sidecar's
    // production permission set for this config, plus --expose-gc.
    const parsed = parseConfig(text, config);
    if (!parsed.ok) {
      throw new Error(`probe config is invalid: ${JSON.stringify(parsed)}`);
    }
    const v8 = [...productionV8Flags(), "--expose-gc"].join(",");
    const flags = denoFlags(permissionSet(parsed.config, config)).map((f) =>
      f.startsWith("--v8-flags=") ? `--v8-flags=${v8}` : f
    );
    const stages: Record<string, Record<string, number>[]> = {};
    for (let rep = 0; rep < ctx.options.repetitions; rep++) {
      for (const stage of ["bare", "imports", "idle"]) {
        const out = await runTool("heap probe", env.deno, [
          "run",
          ...flags,
          `${env.root}/bench/probe/heap.ts`,
          "--stage",
          stage,
          "--config",
          config,
        ], { cwd: env.root, timeoutMs: 60_000 });
        (stages[stage] ??= []).push(JSON.parse(out.trim().split("\n").at(-1)!));
      }
    }
    report.detail(NAME, { heap_probe: stages });
    const add = (stage: string, key: string, metric: string) =>
      report.add(
        NAME,
        metric,
        "no traffic, after a full GC",
        stages[stage].map((m) => m[key] / MiB),
        "MiB",
      );
    add("bare", "rss", "probe: RSS of an empty Deno program");
    add("imports", "rss", "probe: RSS after importing the sidecar's modules");
    add("imports", "heapUsed", "probe: V8 heap used after the imports");
    add("idle", "rss", "probe: RSS of a sidecar idling in-process");
    add("idle", "heapUsed", "probe: V8 heap used, idle sidecar");
    add("idle", "heapTotal", "probe: V8 heap reserved, idle sidecar");
    add("idle", "external", "probe: V8 external memory, idle sidecar");
  } finally {
    await sim.stop();
    await billing.proc.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function soak(ctx: Context): Promise<void> {
  const { env, durations: d, report } = ctx;
  const soakS = ctx.options.soakSecs;
  const load = `${SOAK.streams} streams x 50 tok/s for ${soakS} s`;
  const stack = await startStack(env, { metering: "durable" });
  try {
    const pid = stack.sidecar.pid;
    const t0 = performance.now();
    const times: number[] = [];
    const samples = sampler(() => {
      times.push((performance.now() - t0) / 1000);
      return memory(pid).rss;
    }, d.soakSampleS * 1000);
    const run = await runGrpc(env, stack.grpcAddr, {
      ...SOAK,
      durationS: soakS,
      warmupS: Math.min(d.warmupS, soakS / 5),
    }, { sidecar: pid });
    const rss = samples.stop();
    await waitIdle(stack);

    const n = Math.min(rss.length, times.length);
    const fifth = Math.max(1, Math.floor(n / 5));
    const second = median(rss.slice(fifth, 2 * fifth));
    const last = median(rss.slice(n - fifth, n));
    const growth = last - second;
    const perHour = slope(times.slice(fifth, n), rss.slice(fifth, n)) * 3600;
    report.add(NAME, "soak: RSS at start of load (median of 2nd fifth)", load, [
      second / MiB,
    ], "MiB");
    report.add(NAME, "soak: RSS at end (median of last fifth)", load, [
      last / MiB,
    ], "MiB");
    report.add(
      NAME,
      "soak: growth, last fifth − second fifth",
      load,
      [growth / MiB],
      "MiB",
      {
        target: {
          op: "<=",
          value: GROWTH_ALLOWED_BYTES / MiB,
          text: `none (≤ ${GROWTH_ALLOWED_BYTES / MiB} MiB)`,
        },
        digits: 2,
      },
    );
    report.add(
      NAME,
      "soak: least-squares RSS trend after the first fifth",
      load,
      [perHour / MiB],
      "MiB/h",
    );
    report.add(
      NAME,
      "soak: generations completed",
      load,
      [run.load.requests_ok],
      "",
      { digits: 0 },
    );
    report.detail(NAME, { soak_secs: soakS, times, rss, run });
    const failed = failures(run.load);
    if (failed) report.note(`${NAME}, soak: failed requests: ${failed}`);
    report.note(
      `${NAME}: "no growth" means the median RSS over the last fifth of the soak exceeds the median over its second fifth ` +
        `(the first fifth is warm-up) by at most ${
          GROWTH_ALLOWED_BYTES / MiB
        } MiB; the trend line over the same samples is shown too. ` +
        "The soak is one run, not a median.",
    );
  } finally {
    await stack.stop();
  }
}
