/**
 * The processes a scenario measures: the simulator worker, a billing
 * endpoint, the sidecar (launched as in production: `main.ts` with the
 * permission set `src/permissions.ts` derives from its config), and the
 * alternative the sidecar is compared with (a grpcio worker, alone or
 * behind nginx).
 *
 * @module
 */

import { parseConfig } from "../../src/config/mod.ts";
import { denoFlags, permissionSet } from "../../src/permissions.ts";
import type { Env } from "./env.ts";
import { childrenOf, Proc, sleep } from "./procs.ts";

/**
 * How the sidecar meters in a run: its own meter durable, off, or the
 * floor meter of `probe/floor_meter.ts` (durable metering's least work,
 * for scenario 6) in its place.
 */
export type MeteringMode = "durable" | "off" | "floor";

/** What a stack is started with. */
export interface StackOptions {
  metering: MeteringMode;
  /**
   * V8 flags instead of the production ones (`src/permissions.ts`); an
   * empty list launches with Deno's defaults. Unset: the production flags.
   */
  v8Flags?: string[];
  /** Extra `deno run` flags, e.g. `--cpu-prof-dir=...`. */
  denoFlags?: string[];
  /**
   * Whether starting the sidecar waits for `/readyz` to answer 200 (the
   * default). A sidecar with no worker never becomes ready: with false,
   * the start waits only for its "cy-sidecar started" line.
   */
  waitReady?: boolean;
  /**
   * The worker protocol versions the simulator accepts (`--protocol-versions`);
   * unset: every version it speaks. `[1]` sends one chunk frame per chunk.
   */
  protocolVersions?: number[];
  /**
   * How the simulator serves (`--api`): an async generator per generation
   * (the default), or its batching engine, one step for every generation.
   */
  simApi?: SimApi;
}

/** The worker package's two entry points, as the simulator's `--api`. */
export type SimApi = "generator" | "engine";

/** The V8 flags of the production launch (empty when it sets none). */
export function productionV8Flags(): string[] {
  const parsed = parseConfig("", "(defaults)");
  if (!parsed.ok) return [];
  const flag = denoFlags(permissionSet(parsed.config)).find((f) =>
    f.startsWith("--v8-flags=")
  );
  return flag ? flag.slice("--v8-flags=".length).split(",") : [];
}

/** A simulator and a sidecar in front of it (and a billing endpoint). */
export interface Stack {
  sim: Proc;
  sidecar: Proc;
  billing: Proc | null;
  socket: string;
  grpcAddr: string;
  metricsUrl: string;
  dir: string;
  stop(): Promise<void>;
}

// The simulator serves every benchmark workload: each request names its
// own with a directive (`[[sim tokens=50 itl_ms=20]]`). Its concurrency
// limit is above the largest load (1,000 streams), so that the sidecar,
// not the worker, is what a run measures; and every chunk is stamped.
const SIM_ARGS = [
  "--stamp",
  "--max-concurrency",
  "1100",
  "--ttft-ms",
  "0",
  "--itl-ms",
  "0",
  "--tokens",
  "1",
  "--drain-timeout-secs",
  "1",
];

/** Starts the simulator on `socket`. */
export async function startSim(
  env: Env,
  socket: string,
  protocolVersions?: number[],
  api: SimApi = "generator",
): Promise<Proc> {
  const sim = new Proc("simulator", env.python, [
    "-m",
    "cy_worker.sim",
    "--socket",
    socket,
    ...SIM_ARGS,
    ...(protocolVersions
      ? ["--protocol-versions", protocolVersions.join(",")]
      : []),
    "--api",
    api,
  ], {
    env: { PYTHONPATH: `${env.root}/python`, PYTHONUNBUFFERED: "1" },
    cwd: env.root,
  });
  await sim.waitFor(/cy_worker\.sim listening on/);
  return sim;
}

/** Starts the billing endpoint; returns it and its URL. */
export async function startBilling(
  env: Env,
): Promise<{ proc: Proc; url: string }> {
  const proc = new Proc("billing", env.cyload, ["billing"]);
  const line = await proc.waitFor(/billing listening on /);
  const addr = line.split(" ").at(-1)!;
  return { proc, url: `http://${addr}/v1/usage` };
}

/** The sidecar's config for a benchmark run. */
export function sidecarToml(
  dir: string,
  socket: string,
  metering: MeteringMode,
  billingUrl: string | null,
): string {
  return `# Written by bench/run.ts for one run.
[server]
bind_addr = "127.0.0.1:0"
worker_uds = "unix://${socket}"
shutdown_grace_secs = 1

[metering]
mode = "${metering === "off" ? "off" : "durable"}"
billing_endpoint = "${billingUrl ?? ""}"
# Large enough that a saturation run never fills it: a full queue would
# refuse generations and the run would measure refusals.
offline_queue_size = 1000000
usage_db_path = "${dir}/usage/usage.kv"

[observability]
metrics_host = "127.0.0.1"
metrics_port = 0
log_level = "info"
`;
}

/**
 * Starts a sidecar for `socket`; resolves once `/readyz` answers 200, or
 * once it has started when `options.waitReady` is false.
 */
export async function startSidecar(
  env: Env,
  dir: string,
  socket: string,
  options: StackOptions,
  billingUrl: string | null,
): Promise<{ proc: Proc; grpcAddr: string; metricsUrl: string }> {
  const configPath = `${dir}/sidecar.toml`;
  const text = sidecarToml(dir, socket, options.metering, billingUrl);
  await Deno.writeTextFile(configPath, text);
  await Deno.mkdir(`${dir}/usage`, { recursive: true });
  const parsed = parseConfig(text, configPath);
  if (!parsed.ok) {
    throw new Error(
      `benchmark config is invalid: ${JSON.stringify(parsed.problems)}`,
    );
  }

  let flags = denoFlags(permissionSet(parsed.config, configPath));
  if (options.v8Flags) {
    flags = flags.filter((f) => !f.startsWith("--v8-flags="));
    if (options.v8Flags.length) {
      flags.push(`--v8-flags=${options.v8Flags.join(",")}`);
    }
  }
  const proc = new Proc("sidecar", env.deno, [
    "run",
    ...flags,
    ...(options.denoFlags ?? []),
    options.metering === "floor" ? "bench/probe/floor_meter.ts" : "main.ts",
    "--config",
    configPath,
  ], { cwd: env.root });
  const started = JSON.parse(
    await proc.waitFor(/"msg":"cy-sidecar started"/, 60_000),
  );
  const metricsPort = String(started.metrics_addr).split(":").at(-1);
  const metricsUrl = `http://127.0.0.1:${metricsPort}`;
  if (options.waitReady === false) {
    return { proc, grpcAddr: started.grpc_addr, metricsUrl };
  }

  const until = Date.now() + 30_000;
  for (;;) {
    const res = await fetch(`${metricsUrl}/readyz`).catch(() => null);
    const ok = res?.status === 200;
    await res?.body?.cancel();
    if (ok) break;
    if (Date.now() > until || proc.done) {
      throw new Error(`the sidecar did not become ready:\n${proc.tail()}`);
    }
    await sleep(50);
  }
  return { proc, grpcAddr: started.grpc_addr, metricsUrl };
}

/** Starts billing (when metering), the simulator and a sidecar. */
export async function startStack(
  env: Env,
  options: StackOptions,
): Promise<Stack> {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "cyb" });
  const socket = `${dir}/w.sock`;
  const started: Proc[] = [];
  try {
    const billing = options.metering !== "off" ? await startBilling(env) : null;
    if (billing) started.push(billing.proc);
    const sim = await startSim(
      env,
      socket,
      options.protocolVersions,
      options.simApi,
    );
    started.push(sim);
    const sc = await startSidecar(
      env,
      dir,
      socket,
      options,
      billing?.url ?? null,
    );
    started.push(sc.proc);
    return {
      sim,
      sidecar: sc.proc,
      billing: billing?.proc ?? null,
      socket,
      grpcAddr: sc.grpcAddr,
      metricsUrl: sc.metricsUrl,
      dir,
      async stop() {
        // The sidecar first, so that it does not see its worker vanish.
        for (const p of [...started].reverse()) await p.stop();
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      },
    };
  } catch (err) {
    for (const p of started.reverse()) await p.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
}

/** Reads one metric from the sidecar's /metrics (summed over its series). */
export async function metric(
  metricsUrl: string,
  name: string,
): Promise<number> {
  const text = await (await fetch(`${metricsUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + "{") || line.startsWith(name + " ")) {
      sum += Number(line.split(" ").at(-1));
    }
  }
  return sum;
}

/** Waits until the sidecar has no generation in flight or waiting. */
export async function waitIdle(
  stack: Stack,
  timeoutMs = 15_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const busy =
      await metric(stack.metricsUrl, "sidecar_generations_in_flight") +
      await metric(stack.metricsUrl, "sidecar_generations_waiting");
    if (busy === 0) return;
    if (Date.now() > until) {
      throw new Error(
        `the sidecar still has ${busy} generations after the run`,
      );
    }
    await sleep(50);
  }
}

/** The alternative worker: grpcio's asyncio server, same workload. */
export async function startGrpcWorker(
  env: Env,
  api: SimApi = "generator",
): Promise<{ proc: Proc; addr: string }> {
  const proc = new Proc("grpc_worker", env.python, [
    `${env.root}/bench/alt/grpc_worker.py`,
    "--api",
    api,
    "--listen",
    "127.0.0.1:0",
    "--stamp",
    "--ttft-ms",
    "0",
    "--itl-ms",
    "0",
    "--tokens",
    "1",
  ], {
    env: { PYTHONPATH: `${env.root}/python`, PYTHONUNBUFFERED: "1" },
    cwd: env.root,
  });
  const line = await proc.waitFor(/grpc_worker listening on /, 60_000);
  return { proc, addr: line.split(" ").at(-1)! };
}

/** nginx in front of `upstream` (h2c in, gRPC to the upstream). */
export interface Nginx {
  master: Proc;
  addr: string;
  /** The master and its worker processes. */
  pids(): number[];
  stop(): Promise<void>;
}

/** Finds a free loopback TCP port (for nginx, which cannot take port 0). */
function freePort(): number {
  const ln = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (ln.addr as Deno.NetAddr).port;
  ln.close();
  return port;
}

/**
 * Starts nginx as a gRPC proxy to `upstream`, with one worker process (the
 * sidecar is one process too) and upstream keep-alive.
 */
export async function startNginx(
  nginxBin: string,
  upstream: string,
): Promise<Nginx> {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "cybn" });
  await Deno.chmod(dir, 0o755);
  const port = freePort();
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((k) => `  ${k}_temp_path ${dir}/${k};`).join("\n");
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `# Written by bench/run.ts for one run.
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
${temp}
  upstream worker {
    server ${upstream};
    keepalive 1024;
  }
  server {
    listen 127.0.0.1:${port} http2;
    http2_max_concurrent_streams 1024;
    location / {
      grpc_pass grpc://worker;
      grpc_read_timeout 300s;
      grpc_send_timeout 300s;
    }
  }
}
`,
  );
  const master = new Proc("nginx", nginxBin, [
    "-p",
    dir,
    "-c",
    `${dir}/nginx.conf`,
    "-e",
    `${dir}/error.log`,
  ]);
  // nginx prints nothing when it starts well: wait for its port.
  const until = Date.now() + 15_000;
  for (;;) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      break;
    } catch {
      if (master.done || Date.now() > until) {
        const log = await Deno.readTextFile(`${dir}/error.log`).catch(() => "");
        throw new Error(`nginx did not start:\n${master.tail()}\n${log}`);
      }
      await sleep(50);
    }
  }
  return {
    master,
    addr: `127.0.0.1:${port}`,
    pids: () => [master.pid, ...childrenOf(master.pid)],
    async stop() {
      // SIGTERM is nginx's fast shutdown; the master ends its workers.
      await master.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
