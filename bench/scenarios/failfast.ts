/**
 * Scenario 7: how fast the sidecar refuses a generation when its worker is
 * down. The requirement: new requests fail at once (well under 10 ms) with
 * UNAVAILABLE, and a `grpc-retry-pushback-ms` trailer tells the client when
 * to retry.
 *
 * Two ways for the worker to be down:
 *   - absent: the sidecar starts with no worker on its socket (the path
 *     does not exist) and keeps trying to connect;
 *   - killed: a sidecar serving a simulator sees it die (SIGKILL, so the
 *     socket file stays behind and every reconnect is refused).
 *
 * The load generator keeps 1 (or 64) requests in flight back to back and
 * times each from send to its final status.
 *
 * @module
 */

import type { Context } from "../lib/context.ts";
import {
  failures,
  type LoadSpec,
  type Measured,
  runGrpc,
} from "../lib/load.ts";
import { sleep } from "../lib/procs.ts";
import { startBilling, startSidecar, startStack } from "../lib/stack.ts";

const NAME = "7. fail fast";

// How long the killed worker's sidecar gets to notice before the run.
const AFTER_KILL_MS = 500;

const ABSENT = [
  { label: "no worker, 1 in flight", streams: 1 },
  { label: "no worker, 64 in flight", streams: 64 },
];
const KILLED = { label: "worker killed, 1 in flight", streams: 1 };
const LOADS = [...ABSENT, KILLED];

const PERCENTILES = [
  { key: "p50_us", name: "p50" },
  { key: "p99_us", name: "p99" },
  { key: "p999_us", name: "p99.9" },
] as const;

/** Requests that ended in the window, refused or not. */
function ended(m: Measured): number {
  return m.load.requests_ok +
    Object.values(m.load.requests_failed ?? {}).reduce((a, b) => a + b, 0);
}

function refused(m: Measured): number {
  return ended(m) - m.load.requests_ok;
}

/** Checks a refusal run measured something, and notes what is off in it. */
function check(ctx: Context, label: string, m: Measured): void {
  if (refused(m) === 0) {
    throw new Error(
      `${label}: no request was refused in the window (${
        JSON.stringify(m.load)
      })`,
    );
  }
  const other = failures({
    ...m.load,
    requests_failed: Object.fromEntries(
      Object.entries(m.load.requests_failed ?? {}).filter(([k]) =>
        k !== "UNAVAILABLE"
      ),
    ),
  });
  if (other) {
    ctx.report.note(
      `${NAME}, ${label}: failures other than UNAVAILABLE: ${other}`,
    );
  }
  if (m.load.requests_ok > 0) {
    ctx.report.note(
      `${NAME}, ${label}: ${m.load.requests_ok} requests succeeded with the worker down`,
    );
  }
}

/** One refusal run: a load against a sidecar whose worker is down. */
interface RefusalRun {
  load: { label: string; streams: number };
  grpcAddr: string;
  /** The sidecar's process, whose CPU time the run measures. */
  sidecarPid: number;
}

/**
 * Keeps `run.load.streams` requests in flight back to back for the
 * scenario's window, timing each to its final status, and checks that the
 * run refused some.
 */
async function measureRefusals(
  ctx: Context,
  run: RefusalRun,
): Promise<Measured> {
  const spec: LoadSpec = {
    streams: run.load.streams,
    durationS: ctx.durations.failFastS,
    warmupS: ctx.durations.warmupS,
    tokens: 1,
    itlMs: 0,
    requestLatency: true,
  };
  const m = await runGrpc(ctx.env, run.grpcAddr, spec, {
    sidecar: run.sidecarPid,
  });
  check(ctx, run.load.label, m);
  return m;
}

/** Runs scenario 7. */
export async function failFast(ctx: Context): Promise<void> {
  const { env, report } = ctx;
  const reps = ctx.options.repetitions;
  const byLoad = LOADS.map(() => [] as Measured[]);

  for (let rep = 0; rep < reps; rep++) {
    // Absent: a socket path in a fresh directory, never created.
    const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "cybf" });
    const billing = await startBilling(env);
    try {
      const sc = await startSidecar(
        env,
        dir,
        `${dir}/w.sock`,
        { metering: "durable", waitReady: false },
        billing.url,
      );
      try {
        const ready = await fetch(`${sc.metricsUrl}/readyz`);
        await ready.body?.cancel();
        if (ready.status === 200) {
          throw new Error("the sidecar says it is ready with no worker");
        }
        for (const [i, load] of ABSENT.entries()) {
          const m = await measureRefusals(ctx, {
            load,
            grpcAddr: sc.grpcAddr,
            sidecarPid: sc.proc.pid,
          });
          byLoad[i].push(m);
          report.detail(NAME, { load: load.label, rep, run: m });
        }
      } finally {
        await sc.proc.stop();
      }
    } finally {
      await billing.proc.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }

    // Killed: a generation goes through, then the worker dies.
    const stack = await startStack(env, { metering: "durable" });
    try {
      const probe = await runGrpc(env, stack.grpcAddr, {
        streams: 1,
        durationS: 0.5,
        warmupS: 0,
        tokens: 1,
        itlMs: 0,
      });
      if (probe.load.requests_ok === 0 || failures(probe.load)) {
        throw new Error(
          `no generation went through before the kill: ${
            JSON.stringify(probe.load)
          }`,
        );
      }
      stack.sim.signal("SIGKILL");
      await stack.sim.exited;
      await sleep(AFTER_KILL_MS);
      const m = await measureRefusals(ctx, {
        load: KILLED,
        grpcAddr: stack.grpcAddr,
        sidecarPid: stack.sidecar.pid,
      });
      byLoad[LOADS.length - 1].push(m);
      report.detail(NAME, {
        load: KILLED.label,
        rep,
        before_kill: probe,
        run: m,
      });
    } finally {
      await stack.stop();
    }
  }

  for (const [i, load] of LOADS.entries()) {
    const runs = byLoad[i];
    report.add(
      NAME,
      "requests refused per second",
      load.label,
      runs.map((m) => refused(m) / m.load.window_s),
      "req/s",
      { digits: 0 },
    );
    const lat = (m: Measured, key: string) => {
      const l = m.load.failed_latency_us as unknown as
        | Record<string, number>
        | undefined;
      return l ? l[key] : NaN;
    };
    for (const p of PERCENTILES) {
      const target = load.streams === 1 && p.name === "p99"
        ? { op: "<=" as const, value: 10_000, text: "≤ 10,000 µs (10 ms)" }
        : undefined;
      report.add(
        NAME,
        `${p.name} refusal latency (send to status)`,
        load.label,
        runs.map((m) => lat(m, p.key)),
        "µs",
        { digits: 0, target },
      );
    }
    report.add(
      NAME,
      "sidecar CPU per refusal",
      load.label,
      runs.map((m) => m.cpuS.sidecar / refused(m) * 1e6),
      "µs",
      { digits: 0 },
    );
    report.add(
      NAME,
      "share of requests refused UNAVAILABLE",
      load.label,
      runs.map((m) => (m.load.grpc_status?.UNAVAILABLE ?? 0) / ended(m)),
      "",
      { digits: 3, target: { op: ">=", value: 1, text: "1 (all)" } },
    );
    report.add(
      NAME,
      "share of refusals with grpc-retry-pushback-ms",
      load.label,
      runs.map((m) => (m.load.pushback_seen ?? 0) / refused(m)),
      "",
      { digits: 3 },
    );
  }
  const message = byLoad.flat().find((m) => m.load.first_failure_message)
    ?.load.first_failure_message;
  report.note(
    `${NAME}: refusal latency is each refused request's time from send to its final status, ` +
      "measured by the Go client (one HTTP/2 connection); requests are sent back to back, so with 64 in flight " +
      "a refusal also waits for the sidecar to refuse those ahead of it (about 64 × its CPU per refusal). " +
      `Killed: the simulator gets SIGKILL after a generation went through, and the run starts ${AFTER_KILL_MS} ms later.` +
      (message ? ` Refusal message seen: ${JSON.stringify(message)}.` : ""),
  );
}
