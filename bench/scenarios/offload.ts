/**
 * Scenario 5: protocol offloading, side by side. The same token workload
 * streamed three ways:
 *
 * - the sidecar in front of the simulator (the cy_worker package speaking
 *   framed JSON over a Unix socket), on protocol version 2 (the chunks of
 *   one turn of the worker's loop in one frame) and pinned to version 1
 *   (a frame per chunk);
 * - a Python worker serving gRPC itself (grpcio's asyncio server,
 *   `bench/alt/grpc_worker.py`), called directly;
 * - the same worker behind nginx (`grpc_pass`), when nginx is installed.
 *
 * Each worker first produces its tokens from an async generator per
 * generation; the simulator and the grpcio worker then run again with the
 * tokens from the simulator's batching engine, one decode step for every
 * running generation (`--api engine`): served by `Worker(engine=...)`
 * behind the sidecar, and through a queue per RPC with grpcio.
 *
 * Reported: the worker process's CPU per 1,000 tokens, tokens/s at
 * saturation, token latency at a steady load, and the proxy's memory and
 * CPU. Further runs produce the same tokens, from either producer, with no
 * transport at all (`bench/clients/gen_only.py`): what is left of a
 * worker's CPU per token after subtracting it is what its protocol costs.
 *
 * @module
 */

import type { Context } from "../lib/context.ts";
import {
  failures,
  type LoadSpec,
  type Measured,
  promptFor,
  runGrpc,
} from "../lib/load.ts";
import { memory, runTool, sampler } from "../lib/procs.ts";
import {
  type Nginx,
  type SimApi,
  startGrpcWorker,
  startNginx,
  startStack,
  waitIdle,
} from "../lib/stack.ts";
import { MiB } from "../lib/stats.ts";

const NAME = "5. protocol offloading";

// Saturation: 64 streams of 500 tokens with no pause between tokens.
const SATURATION = { streams: 64, tokens: 500, itlMs: 0 };
const SAT_LABEL = "64 streams, no pause";
// Steady load for latency: 64 streams x 50 tokens/s (as in scenario 1).
const STEADY = { streams: 64, tokens: 50, itlMs: 20, stamp: true };
const STEADY_LABEL = "64 streams x 50 tok/s";

type ArmName =
  | "sidecar"
  | "sidecar_v1"
  | "grpcio"
  | "nginx"
  | "sidecar_engine"
  | "grpcio_engine";
const ARM_LABEL: Record<ArmName, string> = {
  sidecar: "sidecar + cy_worker (framed JSON)",
  sidecar_v1: "sidecar + cy_worker, protocol v1 (a frame per chunk)",
  grpcio: "grpcio worker, direct",
  nginx: "nginx → grpcio worker",
  sidecar_engine: "engine: sidecar + cy_worker Worker(engine=...)",
  grpcio_engine: "engine: grpcio worker, a queue per RPC",
};
const ARM_API: Record<ArmName, SimApi> = {
  sidecar: "generator",
  sidecar_v1: "generator",
  grpcio: "generator",
  nginx: "generator",
  sidecar_engine: "engine",
  grpcio_engine: "engine",
};
/** The arms that have a proxy in front of the worker, and its name. */
const PROXY_LABEL: Partial<Record<ArmName, string>> = {
  sidecar: "sidecar",
  sidecar_v1: "sidecar, protocol v1",
  nginx: "nginx (master + 1 worker)",
  sidecar_engine: "sidecar, engine API",
};

interface ArmRun {
  saturation: Measured;
  steady: Measured;
  /** Peak RSS of the proxy (sidecar, or nginx master + worker), bytes. */
  proxyPeak: number | null;
}

interface Target {
  addr: string;
  worker: number;
  /** The proxy's processes (none when the worker is called directly). */
  proxy: () => number[];
  stop(): Promise<void>;
}

async function startArm(ctx: Context, arm: ArmName): Promise<Target> {
  const { env } = ctx;
  if (arm === "sidecar" || arm === "sidecar_v1" || arm === "sidecar_engine") {
    const stack = await startStack(env, {
      metering: "durable",
      protocolVersions: arm === "sidecar_v1" ? [1] : undefined,
      simApi: ARM_API[arm],
    });
    return {
      addr: stack.grpcAddr,
      worker: stack.sim.pid,
      proxy: () => [stack.sidecar.pid],
      async stop() {
        await waitIdle(stack).catch(() => {});
        await stack.stop();
      },
    };
  }
  const alt = await startGrpcWorker(env, ARM_API[arm]);
  let nginx: Nginx | null = null;
  try {
    if (arm === "nginx") nginx = await startNginx(env.nginx!, alt.addr);
  } catch (err) {
    await alt.proc.stop();
    throw err;
  }
  return {
    addr: nginx?.addr ?? alt.addr,
    worker: alt.proc.pid,
    proxy: () => nginx?.pids() ?? [],
    async stop() {
      await nginx?.stop();
      await alt.proc.stop();
    },
  };
}

async function runArm(ctx: Context, arm: ArmName): Promise<ArmRun> {
  const { env, durations: d } = ctx;
  const t = await startArm(ctx, arm);
  try {
    const watch: Record<string, number> = { worker: t.worker };
    for (const [i, pid] of t.proxy().entries()) watch[`proxy${i}`] = pid;
    const proxyRss = () =>
      t.proxy().reduce((sum, pid) => sum + memory(pid).rss, 0);
    const rss = t.proxy().length ? sampler(proxyRss, 250) : null;
    const base = { durationS: d.throughputS, warmupS: d.warmupS };
    // The steady run first: a saturation run leaves the sidecar's heap
    // full for a while (scenario 3 measures that), which is not what a
    // latency figure at steady load should include.
    const steady = await runGrpc(
      env,
      t.addr,
      { ...base, durationS: d.latencyS, ...STEADY } satisfies LoadSpec,
      watch,
    );
    const saturation = await runGrpc(
      env,
      t.addr,
      { ...base, ...SATURATION } satisfies LoadSpec,
      watch,
    );
    const samples = rss?.stop() ?? [];
    return {
      saturation,
      steady,
      proxyPeak: samples.length ? Math.max(...samples) : null,
    };
  } finally {
    await t.stop();
  }
}

/** The saturation workload with no transport: CPU µs per token. */
async function generationAlone(ctx: Context, api: SimApi): Promise<number> {
  const { env, durations: d } = ctx;
  const out = await runTool("gen_only", env.python, [
    "bench/clients/gen_only.py",
    "--streams",
    String(SATURATION.streams),
    "--duration",
    String(d.throughputS),
    "--warmup",
    String(d.warmupS),
    "--prompt",
    promptFor({ ...SATURATION, durationS: 0, warmupS: 0 }),
    // Both workers stamp every chunk's text (the load generator reads the
    // stamps only at steady load); so does this run.
    "--stamp",
    "--api",
    api,
  ], {
    env: { PYTHONPATH: `${env.root}/python` },
    cwd: env.root,
    timeoutMs: (d.throughputS + 30) * 1000,
  });
  const r = JSON.parse(out) as { tokens: number; cpu_s: number };
  return (1e6 * r.cpu_s) / r.tokens;
}

/** Runs scenario 5. */
export async function offload(ctx: Context): Promise<void> {
  const { env, report, options } = ctx;
  const arms: ArmName[] = ["sidecar", "sidecar_v1", "grpcio"];
  if (env.nginx) arms.push("nginx");
  else {
    report.note(
      `${NAME}: nginx is not installed, so the "nginx → grpcio worker" arm was skipped ` +
        "(bash bench/run.sh installs Debian's nginx package unless --smoke or --no-install is given).",
    );
  }

  arms.push("sidecar_engine", "grpcio_engine");

  const runs: Record<ArmName, ArmRun[]> = {
    sidecar: [],
    sidecar_v1: [],
    grpcio: [],
    nginx: [],
    sidecar_engine: [],
    grpcio_engine: [],
  };
  const alone: Record<SimApi, number[]> = { generator: [], engine: [] };
  for (let rep = 0; rep < options.repetitions; rep++) {
    for (const api of ["generator", "engine"] as const) {
      alone[api].push(await generationAlone(ctx, api));
    }
    for (const arm of arms) {
      const r = await runArm(ctx, arm);
      runs[arm].push(r);
      report.detail(NAME, { arm, rep, ...r });
      for (
        const [what, m] of [["saturation", r.saturation], [
          "steady",
          r.steady,
        ]] as const
      ) {
        const failed = failures(m.load);
        if (failed) {
          report.note(
            `${NAME}, ${ARM_LABEL[arm]}, ${what}: failed requests: ${failed}`,
          );
        }
      }
    }
  }

  const perK = (m: Measured, who: string) =>
    (1000 * m.cpuS[who]) / m.load.tokens * 1000;
  const proxyCpu = (m: Measured) =>
    Object.entries(m.cpuS).filter(([k]) => k.startsWith("proxy")).reduce(
      (a, [, v]) => a + v,
      0,
    );

  for (const arm of arms) {
    const r = runs[arm];
    const label = ARM_LABEL[arm];
    report.add(
      NAME,
      `worker CPU per 1,000 tokens: ${label}`,
      SAT_LABEL,
      r.map((x) => perK(x.saturation, "worker")),
      "ms",
    );
  }
  // Each producer's pair: the sidecar's worker against grpcio's, same tokens.
  const PAIRS = [
    { api: "generator", ours: "sidecar", theirs: "grpcio", what: "" },
    {
      api: "engine",
      ours: "sidecar_engine",
      theirs: "grpcio_engine",
      what: ", engine API (one step for all)",
    },
  ] as const;
  const ratio = (ours: ArmName, theirs: ArmName, m: "saturation" | "steady") =>
    runs[ours].map((s, i) =>
      perK(s[m], "worker") / perK(runs[theirs][i][m], "worker")
    );
  for (const { api, ours, theirs, what } of PAIRS) {
    report.add(
      NAME,
      `worker CPU per token${what}: cy_worker / grpcio worker`,
      SAT_LABEL,
      ratio(ours, theirs, "saturation"),
      "",
      {
        digits: 3,
        target: { op: "<=", value: 0.1, text: "≤ 0.100 (1/10)" },
      },
    );
    report.add(
      NAME,
      `worker CPU per 1,000 tokens${what}: the same tokens, no transport`,
      SAT_LABEL,
      alone[api],
      "ms",
    );
    report.add(
      NAME,
      `protocol CPU per token${what} (worker − no transport): cy_worker / grpcio`,
      SAT_LABEL,
      runs[ours].map((s, i) =>
        (perK(s.saturation, "worker") - alone[api][i]) /
        (perK(runs[theirs][i].saturation, "worker") - alone[api][i])
      ),
      "",
      { digits: 3 },
    );
  }
  for (const arm of arms) {
    report.add(
      NAME,
      `worker CPU per 1,000 tokens: ${ARM_LABEL[arm]}`,
      STEADY_LABEL,
      runs[arm].map((x) => perK(x.steady, "worker")),
      "ms",
    );
  }
  for (const { ours, theirs, what } of PAIRS) {
    report.add(
      NAME,
      `worker CPU per token${what}: cy_worker / grpcio worker`,
      STEADY_LABEL,
      ratio(ours, theirs, "steady"),
      "",
      { digits: 3 },
    );
  }
  for (const arm of arms) {
    report.add(
      NAME,
      `tokens/s at saturation: ${ARM_LABEL[arm]}`,
      SAT_LABEL,
      runs[arm].map((x) => x.saturation.load.tokens_per_s),
      "/s",
      { digits: 0 },
    );
  }
  for (const arm of arms) {
    report.add(
      NAME,
      `p99 token latency: ${ARM_LABEL[arm]}`,
      STEADY_LABEL,
      runs[arm].map((x) => x.steady.load.latency_us?.p99_us ?? NaN),
      "µs",
      { digits: 0 },
    );
  }
  for (const arm of arms) {
    report.add(
      NAME,
      `p50 token latency: ${ARM_LABEL[arm]}`,
      STEADY_LABEL,
      runs[arm].map((x) => x.steady.load.latency_us?.p50_us ?? NaN),
      "µs",
      { digits: 0 },
    );
  }
  for (const arm of arms) {
    const proxy = PROXY_LABEL[arm];
    if (!proxy) continue;
    report.add(
      NAME,
      `proxy RSS peak: ${proxy}`,
      "both runs",
      runs[arm].map((x) => (x.proxyPeak ?? NaN) / MiB),
      "MiB",
    );
    report.add(
      NAME,
      `proxy CPU per 1,000 tokens: ${proxy}`,
      SAT_LABEL,
      runs[arm].map((x) =>
        (1e6 * proxyCpu(x.saturation)) / x.saturation.load.tokens
      ),
      "ms",
    );
  }
  for (const arm of arms) {
    report.add(
      NAME,
      `worker + proxy CPU per 1,000 tokens: ${ARM_LABEL[arm]}`,
      SAT_LABEL,
      runs[arm].map((x) =>
        (1e6 * (x.saturation.cpuS.worker + proxyCpu(x.saturation))) /
        x.saturation.load.tokens
      ),
      "ms",
    );
  }
  report.note(
    `${NAME}: the grpcio worker (grpc.aio server) produces the simulator's exact workload (same words, schedule and stamps); ` +
      "nginx runs one worker process with upstream keep-alive. The worker-CPU ratio pairs the runs of the same repetition. " +
      "The engine arms take the tokens from the simulator's batching engine (one decode step for every running generation): " +
      "the sidecar's worker serves it with Worker(engine=...), the grpcio worker through a queue per RPC.",
  );
}
