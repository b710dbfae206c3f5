/**
 * Runs of the load generator (`bench/load`, Go) and of the Python floor
 * reader, with the CPU of the processes under test measured over the same
 * window the generator counts in (the run minus its warm-up).
 *
 * @module
 */

import type { Env } from "./env.ts";
import { cpuSeconds, runTool, sleep } from "./procs.ts";

/** A workload: how many streams, how long, and what each generation is. */
export interface LoadSpec {
  /** Generations kept in flight, back to back. */
  streams: number;
  /** Run time including the warm-up, in seconds. */
  durationS: number;
  /** Time not counted at the start, in seconds. */
  warmupS: number;
  /** Tokens per generation. */
  tokens: number;
  /** Time between tokens, in ms (0: as fast as the worker goes). */
  itlMs: number;
  /**
   * The simulator's token schedule: each generation on its own clock (the
   * default), or every generation on one decode-step grid (`batched`).
   */
  schedule?: "own" | "batched";
  /** Read each chunk's CLOCK_MONOTONIC stamp and report token latency. */
  stamp?: boolean;
  /** HTTP/2 connections (gRPC runs only); 1 by default, like one channel. */
  conns?: number;
  /** Streams start spread over this many seconds (gRPC runs only). */
  rampS?: number;
  /**
   * Time each request from send to final status, and count the gRPC
   * statuses and retry pushbacks received (gRPC runs only).
   */
  requestLatency?: boolean;
}

/** Token latency, in microseconds. */
export interface Latency {
  count: number;
  p50_us: number;
  p90_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
  mean_us: number;
}

/** What one run counted inside its window. */
export interface LoadResult {
  window_s: number;
  requests_ok: number;
  requests_failed: Record<string, number>;
  tokens: number;
  requests_per_s: number;
  tokens_per_s: number;
  latency_us?: Latency;
  client_cpu_s: number;
  client_cpu_pct: number;
  // With `requestLatency`:
  /** Every request that ended in the window, send to final status. */
  request_latency_us?: Latency;
  /** The failed ones alone. */
  failed_latency_us?: Latency;
  /** gRPC statuses received, by name ("OK", "UNAVAILABLE", ...). */
  grpc_status?: Record<string, number>;
  /** Failures that carried a `grpc-retry-pushback-ms`. */
  pushback_seen?: number;
  /** The grpc-message of the first failure in the window. */
  first_failure_message?: string;
}

/** A run's result and the CPU seconds each watched process used. */
export interface Measured {
  load: LoadResult;
  cpuS: Record<string, number>;
}

/** The prompt that makes the simulator (or the grpcio worker) do `spec`. */
export function promptFor(spec: LoadSpec): string {
  // The first token comes one interval after the request, like the rest:
  // each stream then carries a steady 1000 / itlMs tokens per second.
  const schedule = spec.schedule === "batched" ? " schedule=batched" : "";
  return `bench [[sim tokens=${spec.tokens} ttft_ms=${spec.itlMs} itl_ms=${spec.itlMs}${schedule}]]`;
}

// The most generations a run may start: far above what the fastest run
// reaches, so it only bounds a run that went wrong.
const MAX_REQUESTS_PER_S = 50_000;

function commonArgs(spec: LoadSpec, prefix: string): string[] {
  const maxRequests = Math.ceil(
    Math.max(spec.streams, MAX_REQUESTS_PER_S * spec.durationS),
  );
  return [
    "-streams",
    String(spec.streams),
    "-duration",
    `${spec.durationS}s`,
    "-warmup",
    `${spec.warmupS}s`,
    "-max-requests",
    String(maxRequests),
    "-prompt",
    promptFor(spec),
    "-prefix",
    prefix,
    ...(spec.stamp ? ["-stamp"] : []),
  ];
}

let runSeq = 0;

/** Runs `tool` while measuring the CPU of `watch` over its window. */
async function measured(
  spec: LoadSpec,
  watch: Record<string, number>,
  tool: () => Promise<string>,
): Promise<Measured> {
  const out = tool();
  const cpu = (async () => {
    await sleep(spec.warmupS * 1000);
    const before = Object.fromEntries(
      Object.entries(watch).map(([k, pid]) => [k, cpuSeconds(pid)]),
    );
    await sleep((spec.durationS - spec.warmupS) * 1000);
    return Object.fromEntries(
      Object.entries(watch).map((
        [k, pid],
      ) => [k, cpuSeconds(pid) - before[k]]),
    );
  })();
  const [text, cpuS] = await Promise.all([out, cpu]);
  return { load: JSON.parse(text) as LoadResult, cpuS };
}

function toolTimeoutMs(spec: LoadSpec): number {
  return (spec.durationS + 30) * 1000;
}

/** Streams `spec` through a gRPC server at `addr` (sidecar, grpcio, nginx). */
export function runGrpc(
  env: Env,
  addr: string,
  spec: LoadSpec,
  watch: Record<string, number> = {},
): Promise<Measured> {
  const prefix = `g${++runSeq}`;
  return measured(spec, watch, () =>
    runTool("cyload gen", env.cyload, [
      "gen",
      "-addr",
      addr,
      "-conns",
      String(spec.conns ?? 1),
      "-ramp",
      `${spec.rampS ?? 0}s`,
      ...(spec.requestLatency ? ["-request-latency"] : []),
      ...commonArgs(spec, prefix),
    ], { timeoutMs: toolTimeoutMs(spec) }));
}

/** Reads `spec` straight off the worker's socket (the Go floor reader). */
export function runFloor(
  env: Env,
  socket: string,
  spec: LoadSpec,
  watch: Record<string, number> = {},
): Promise<Measured> {
  const prefix = `f${++runSeq}`;
  return measured(spec, watch, () =>
    runTool("cyload floor", env.cyload, [
      "floor",
      "-socket",
      socket,
      ...commonArgs(spec, prefix),
    ], { timeoutMs: toolTimeoutMs(spec) }));
}

/** Reads `spec` straight off the worker's socket with the Python reader. */
export function runPyFloor(
  env: Env,
  socket: string,
  spec: LoadSpec,
  watch: Record<string, number> = {},
): Promise<Measured> {
  const prefix = `p${++runSeq}`;
  return measured(spec, watch, () =>
    runTool("floor_reader.py", env.python, [
      `${env.root}/bench/clients/floor_reader.py`,
      "--socket",
      socket,
      "--streams",
      String(spec.streams),
      "--duration",
      String(spec.durationS),
      "--warmup",
      String(spec.warmupS),
      "--prompt",
      promptFor(spec),
      "--prefix",
      prefix,
    ], { timeoutMs: toolTimeoutMs(spec) }));
}

/** Failed requests of a run, as "CODE xN, ..." (empty when none). */
export function failures(r: LoadResult): string {
  return Object.entries(r.requests_failed ?? {})
    .map(([k, n]) => `${k} x${n}`)
    .join(", ");
}
