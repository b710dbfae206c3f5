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
 * Beside the sidecar, the same generations go through the relay floor
 * (`bench/probe/grpc_relay.mjs`): bare grpc-js carrying each call to the
 * worker and each chunk back, and nothing else, on Deno with the
 * sidecar's V8 flags and on Node.js. What the relay adds on Deno is what
 * the runtime and grpc-js cost before the sidecar does any work of its
 * own; the same relay on Deno with the sidecar's write coalescing (each
 * read's chunks corked into one socket write) shows what that technique
 * leaves of it; the Node.js relay tells the runtime's share from
 * grpc-js's, and the same relay in Go (`cyload relay`) what one more hop
 * costs this machine.
 *
 * @module
 */

import type { Context } from "../lib/context.ts";
import {
  type Ceiling,
  nodeCeilingDir,
  type RelayRuntime,
  startRelay,
} from "../lib/ceiling.ts";
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

const RUNTIME_NAME: Record<RelayRuntime, string> = {
  deno: "Deno",
  "deno-corked": "Deno, corked",
  node: "Node.js",
  go: "Go",
};

/** What the relay on `rt` is, as a row names it. */
function relayName(rt: RelayRuntime): string {
  return rt === "go"
    ? "a bare relay in Go (net/http)"
    : `a bare grpc-js relay on ${RUNTIME_NAME[rt]}`;
}

/** CPU of the process watched as `who`, over the measured window. */
function percentOfCore(m: Measured, who: string): number {
  return 100 * m.cpuS[who] / m.load.window_s;
}

/** Runs scenario 1. */
export async function latency(ctx: Context): Promise<void> {
  const { env, durations: d, report } = ctx;
  const reps = ctx.options.repetitions;
  const runtimes: RelayRuntime[] = nodeCeilingDir()
    ? ["deno", "deno-corked", "node", "go"]
    : ["deno", "deno-corked", "go"];
  if (!runtimes.includes("node")) {
    report.note(
      `${NAME}: the Node.js relay floor was skipped (bash bench/run.sh installs it with npm when Node.js is present)`,
    );
  }
  type Runs = {
    sidecar: Measured;
    floor: Measured;
    py: Measured;
    relay: Partial<Record<RelayRuntime, Measured>>;
  };
  const byLoad = LOADS.map(() => [] as Runs[]);

  for (let rep = 0; rep < reps; rep++) {
    const stack = await startStack(env, { metering: "durable" });
    const relays: Partial<Record<RelayRuntime, Ceiling>> = {};
    try {
      for (const runtime of runtimes) {
        relays[runtime] = await startRelay(env, runtime, stack.socket);
      }
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
        const relay: Runs["relay"] = {};
        for (const runtime of runtimes) {
          const r = relays[runtime]!;
          relay[runtime] = await runGrpc(env, r.addr, spec, {
            relay: r.proc.pid,
            worker: stack.sim.pid,
          });
        }
        const floor = await runFloor(env, stack.socket, spec, watch);
        const py = await runPyFloor(env, stack.socket, spec, watch);
        byLoad[i].push({ sidecar, floor, py, relay });
        report.detail(NAME, {
          load: load.label,
          rep,
          sidecar,
          floor,
          py,
          relay,
        });
        const checked: [string, Measured][] = [
          ["sidecar", sidecar],
          ["floor", floor],
          ...runtimes.map((rt): [string, Measured] => [
            `relay on ${RUNTIME_NAME[rt]}`,
            relay[rt]!,
          ]),
        ];
        for (const [what, m] of checked) {
          const failed = failures(m.load);
          if (failed) {
            report.note(
              `${NAME}, ${load.label}, ${what}: failed requests: ${failed}`,
            );
          }
        }
      }
    } finally {
      for (const r of Object.values(relays)) await r.proc.stop();
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
      if (p.name === "p99.9") continue;
      for (const rt of runtimes) {
        report.add(
          NAME,
          `${p.name} through ${relayName(rt)}`,
          load.label,
          runs.map((r) => lat(r.relay[rt]!, p.key)),
          "µs",
          { digits: 0 },
        );
        report.add(
          NAME,
          `${p.name} added by the bare relay, ${RUNTIME_NAME[rt]}`,
          load.label,
          runs.map((r) => lat(r.relay[rt]!, p.key) - lat(r.floor, p.key)),
          "µs",
          { digits: 0 },
        );
      }
    }
    for (const rt of runtimes) {
      report.add(
        NAME,
        `bare relay CPU, ${RUNTIME_NAME[rt]}`,
        load.label,
        runs.map((r) => percentOfCore(r.relay[rt]!, "relay")),
        "% of a core",
        { digits: 1 },
      );
    }
    report.add(
      NAME,
      "sidecar CPU",
      load.label,
      runs.map((r) => percentOfCore(r.sidecar, "sidecar")),
      "% of a core",
      { digits: 1 },
    );
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
      "then the median over repetitions; a relay's is its percentile minus the same floor. Both readers are Go, so the reader's own cost cancels " +
      "(the floor dates each frame by the socket read that brought it, not by when its turn to be decoded came); the Python floor is shown for reference.",
  );
  report.note(
    `${NAME}: the bare relay (bench/probe/grpc_relay.mjs on Deno and Node.js, cyload relay in Go) carries each call to the same worker over protocol version 2 ` +
      "and writes each chunk to its call as it arrives: no validation, metering, metrics or heartbeats. " +
      "Plain, it sends each message as node:http2 hands it over (on Deno, a syscall per message); corked, the chunks of one read from the worker leave in one socket write, " +
      "as the sidecar's do. Each repetition loads the sidecar, then the relays, then the floors, one after the other.",
  );
}
