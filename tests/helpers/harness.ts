/**
 * Real processes for end-to-end tests: the Python simulator worker, the
 * sidecar launched exactly as in production (same entry point, the
 * permission set from src/permissions.ts), and a grpc-js gateway client.
 */

// deno-lint-ignore-file no-explicit-any -- grpc-js clients are untyped stubs
import * as grpc from "@grpc/grpc-js";
import { parseConfig } from "../../src/config/mod.ts";
import { HealthClient, SidecarClient } from "../../src/gateway/proto.ts";
import type {
  GenerateEventPb,
  WorkerStatusPb,
} from "../../src/gateway/types.ts";
import { denoFlags, permissionSet } from "../../src/permissions.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** The project's pinned Deno, the one running this test. */
export const DENO = Deno.execPath();

/** The test virtualenv's Python when present, else the system's. */
export const PYTHON = await (async () => {
  const venv = `${ROOT}.tools/venv/bin/python`;
  try {
    await Deno.stat(venv);
    return venv;
  } catch {
    return "python3";
  }
})();

/** A child process with its stderr collected line by line. */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  #waiters: (() => void)[] = [];
  readonly exited: Promise<Deno.CommandStatus>;

  constructor(
    cmd: string,
    args: string[],
    env: Record<string, string> = {},
    cwd = ROOT,
  ) {
    this.child = new Deno.Command(cmd, {
      args,
      env,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    void this.#collect(this.child.stderr);
    void this.#collect(this.child.stdout);
    this.exited = this.child.status;
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
      for (const w of this.#waiters.splice(0)) w();
    }
    if (buf) this.lines.push(buf);
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Waits for an output line matching `re`; returns it. */
  async waitFor(re: RegExp, timeoutMs = 10_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find((l) => re.test(l));
      if (hit) return hit;
      if (Date.now() > until) {
        throw new Error(
          `no line matching ${re} within ${timeoutMs} ms; output:\n${
            this.lines.join("\n")
          }`,
        );
      }
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 25);
      });
    }
  }

  /** Parsed JSON log lines. */
  logs(): Record<string, unknown>[] {
    return this.lines.flatMap((l) => {
      try {
        const v = JSON.parse(l);
        return typeof v === "object" && v ? [v] : [];
      } catch {
        return [];
      }
    });
  }

  signal(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* already gone */ }
  }

  /** Kills (SIGKILL) and waits. */
  async kill(): Promise<void> {
    this.signal("SIGKILL");
    await this.exited;
  }
}

/** A temporary directory short enough for Unix socket paths. */
export async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ dir: "/tmp", prefix: "cy" });
}

/** Starts the simulator worker on `socketPath` and waits until it listens. */
export async function startSim(
  socketPath: string,
  args: string[] = [],
): Promise<Proc> {
  const proc = new Proc(PYTHON, [
    "-m",
    "cy_worker.sim",
    "--socket",
    socketPath,
    ...args,
  ], {
    PYTHONPATH: `${ROOT}python`,
    PYTHONUNBUFFERED: "1",
  });
  await proc.waitFor(/cy_worker\.sim listening on/);
  return proc;
}

/** A running sidecar process and its bound addresses. */
export interface SidecarProc {
  proc: Proc;
  grpcAddr: string;
  metricsUrl: string;
  configPath: string;
  dir: string;
}

/**
 * Starts the sidecar (`main.ts`) with a config built from `toml` (sections
 * merged over test defaults: loopback, free ports, short health timers) and
 * the production permission set for that config.
 */
export async function startSidecar(
  dir: string,
  socketPath: string,
  toml = "",
  options: { extraFlags?: string[]; waitReady?: boolean } = {},
): Promise<SidecarProc> {
  const configPath = `${dir}/sidecar.toml`;
  const text = mergeToml(
    `[server]
bind_addr = "127.0.0.1:0"
worker_uds = "unix://${socketPath}"
shutdown_grace_secs = 5
[metering]
usage_db_path = "${dir}/usage/usage.kv"
batch_interval_secs = 0.2
[health]
check_interval_secs = 0.5
heartbeat_timeout_secs = 0.5
reconnect_delay_secs = 0.1
reconnect_max_delay_secs = 0.5
[observability]
metrics_host = "127.0.0.1"
metrics_port = 0
log_level = "debug"
`,
    toml,
  );
  await Deno.writeTextFile(configPath, text);
  const parsed = parseConfig(text, configPath);
  if (!parsed.ok) {
    throw new Error(
      `test config is invalid: ${JSON.stringify(parsed.problems)}`,
    );
  }
  await Deno.mkdir(`${dir}/usage`, { recursive: true });

  const flags = denoFlags(permissionSet(parsed.config, configPath));
  const proc = new Proc(DENO, [
    "run",
    ...flags,
    ...(options.extraFlags ?? []),
    "main.ts",
    "--config",
    configPath,
  ]);
  const started = JSON.parse(
    await proc.waitFor(/"msg":"cy-sidecar started"/, 30_000),
  );
  const metricsPort = String(started.metrics_addr).split(":").at(-1);
  const sidecar = {
    proc,
    grpcAddr: started.grpc_addr as string,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    configPath,
    dir,
  };
  if (options.waitReady !== false) await waitReady(sidecar);
  return sidecar;
}

/** Waits until `/readyz` answers 200. */
export async function waitReady(
  s: SidecarProc,
  timeoutMs = 10_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${s.metricsUrl}/readyz`).catch(() => null);
    const ok = res?.status === 200;
    await res?.body?.cancel();
    if (ok) return;
    if (Date.now() > until) throw new Error("sidecar did not become ready");
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Reads one metric's value from /metrics (sum over series matching `labels`). */
export async function metric(
  s: SidecarProc,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await (await fetch(`${s.metricsUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    if (
      !Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))
    ) continue;
    sum += Number(line.split(" ").at(-1));
  }
  return sum;
}

/** Replaces or adds keys of `over` in `base`, section by section. */
function mergeToml(base: string, over: string): string {
  const parse = (t: string) => {
    const out = new Map<string, Map<string, string>>();
    let section = "";
    for (const raw of t.split("\n")) {
      const line = raw.trim();
      if (!line || line.startsWith("#")) continue;
      const h = line.match(/^\[(.+)\]$/);
      if (h) {
        section = h[1];
        if (!out.has(section)) out.set(section, new Map());
        continue;
      }
      const eq = line.indexOf("=");
      out.get(section)!.set(
        line.slice(0, eq).trim(),
        line.slice(eq + 1).trim(),
      );
    }
    return out;
  };
  const merged = parse(base);
  for (const [sec, keys] of parse(over)) {
    if (!merged.has(sec)) merged.set(sec, new Map());
    for (const [k, v] of keys) merged.get(sec)!.set(k, v);
  }
  return [...merged].map(([sec, keys]) =>
    `[${sec}]\n${[...keys].map(([k, v]) => `${k} = ${v}`).join("\n")}\n`
  ).join(
    "\n",
  );
}

/** A gateway client for the sidecar at `addr`. */
export function gateway(addr: string): grpc.Client & Record<string, any> {
  return new SidecarClient(addr, grpc.credentials.createInsecure()) as
    & grpc.Client
    & Record<string, any>;
}

/** What a Generate call produced. */
export interface Collected {
  events: (GenerateEventPb & { kind: string })[];
  status: grpc.StatusObject | null;
  error: grpc.ServiceError | null;
  text: string;
  tokenIds: number[];
}

/** Runs Generate to its end and collects every event and the final status. */
export function generate(
  client: grpc.Client & Record<string, any>,
  request: Record<string, unknown>,
  options: grpc.CallOptions = {},
): Promise<Collected> {
  return new Promise((resolve) => {
    const out: Collected = {
      events: [],
      status: null,
      error: null,
      text: "",
      tokenIds: [],
    };
    const call = client.Generate(request, options);
    call.on("data", (ev: GenerateEventPb & { kind: string }) => {
      out.events.push(ev);
      if ("chunk" in ev && ev.kind === "chunk") {
        out.text += ev.chunk.text;
        out.tokenIds.push(...ev.chunk.token_ids);
      }
    });
    call.on("status", (s: grpc.StatusObject) => {
      out.status = s;
    });
    call.on("error", (e: grpc.ServiceError) => {
      out.error = e;
    });
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      // "status" follows "end"/"error" within the same tick in grpc-js.
      setTimeout(() => resolve(out), 0);
    };
    call.on("end", finish);
    call.on("error", finish);
  });
}

/** A request with the given id and prompt, other fields defaulted. */
export function req(
  id: string,
  prompt = "hello there",
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    request_id: id,
    session_id: "sess-1",
    prompt,
    sampling: { max_tokens: 8 },
    ...extra,
  };
}

/**
 * Polls `condition` until it holds; fails with `what` after `timeoutMs`.
 * Conditions are polled rather than slept for, so that a loaded machine
 * only makes a test slower, never wrong.
 */
export async function waitUntil(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 15_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > until) {
      throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves with `promise`, or fails naming `what` after `timeoutMs`. */
export async function within<T>(
  what: string,
  promise: Promise<T>,
  timeoutMs = 15_000,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: nothing within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Calls `Sidecar.GetStatus`. */
export function getStatus(
  client: grpc.Client & Record<string, any>,
): Promise<WorkerStatusPb> {
  return new Promise((resolve, reject) => {
    client.GetStatus(
      {},
      (err: grpc.ServiceError | null, status: WorkerStatusPb) =>
        err ? reject(err) : resolve(status),
    );
  });
}

/** Waits until the sidecar reports no generation in flight to the worker. */
export async function waitIdle(
  client: grpc.Client & Record<string, any>,
  timeoutMs = 15_000,
): Promise<void> {
  let last = -1;
  try {
    await waitUntil(
      "the sidecar has no generation in flight",
      async () => (last = (await getStatus(client)).in_flight) === 0,
      timeoutMs,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message} (in_flight: ${last})`);
  }
}

/** A `grpc.health.v1.Health` client for the sidecar at `addr`. */
export function healthClient(
  addr: string,
): grpc.Client & Record<string, any> {
  return new HealthClient(addr, grpc.credentials.createInsecure()) as
    & grpc.Client
    & Record<string, any>;
}

/** What a one-shot run of `main.ts` printed. */
export interface MainRun {
  code: number;
  stdout: string[];
  stderr: string[];
}

/**
 * Runs `main.ts --config configPath ...args` to its end (`--dump-usage`,
 * `--check-config`) with the production permission set derived from that
 * file, as `deno task start` would, never with every permission granted.
 */
export async function runMain(
  configPath: string,
  args: string[] = [],
): Promise<MainRun> {
  const text = await Deno.readTextFile(configPath);
  const parsed = parseConfig(text, configPath);
  if (!parsed.ok) {
    throw new Error(`config is invalid: ${JSON.stringify(parsed.problems)}`);
  }
  const out = await new Deno.Command(DENO, {
    args: [
      "run",
      ...denoFlags(permissionSet(parsed.config, configPath)),
      "main.ts",
      "--config",
      configPath,
      ...args,
    ],
    cwd: ROOT,
    stdin: "null",
  }).output();
  const lines = (b: Uint8Array) =>
    new TextDecoder().decode(b).split("\n").filter((l) => l !== "");
  return {
    code: out.code,
    stdout: lines(out.stdout),
    stderr: lines(out.stderr),
  };
}
