/**
 * What the benchmark runs with: the tools `bench/run.sh` prepared (passed
 * in environment variables) and a description of the machine, printed with
 * every result.
 *
 * @module
 */

/** Tools and paths. */
export interface Env {
  /** The repository root. */
  root: string;
  /** The pinned Deno (the one running this orchestrator). */
  deno: string;
  /** Python with grpcio (the project's virtualenv). */
  python: string;
  /** The load generator built from `bench/load`. */
  cyload: string;
  /** nginx, or null when it is not installed. */
  nginx: string | null;
}

/** The machine, as the results describe it. */
export interface Machine {
  nproc: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  deno: string;
  v8: string;
  python: string;
  grpcio: string;
  nginx: string | null;
  go: string | null;
}

function which(name: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    const path = `${dir}/${name}`;
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch { /* not here */ }
  }
  return null;
}

/** Reads the environment `bench/run.sh` sets up. */
export function loadEnv(): Env {
  const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
  const cyload = Deno.env.get("CYLOAD") ?? `${root}/.tools/bench/cyload`;
  try {
    Deno.statSync(cyload);
  } catch {
    throw new Error(
      `no load generator at ${cyload}: run the benchmark with bash bench/run.sh`,
    );
  }
  const nginxEnv = Deno.env.get("NGINX");
  return {
    root,
    deno: Deno.execPath(),
    python: Deno.env.get("PY") ?? `${root}/.tools/venv/bin/python`,
    cyload,
    nginx: nginxEnv === undefined ? which("nginx") : nginxEnv || null,
  };
}

async function output(cmd: string, args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command(cmd, {
      args,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) +
      new TextDecoder().decode(out.stderr);
    return out.success ? text.trim() : null;
  } catch {
    return null;
  }
}

/** Describes the machine and the versions of what runs on it. */
export async function describeMachine(env: Env): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const meminfo = await Deno.readTextFile("/proc/meminfo");
  const memKb = Number(meminfo.match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0);
  const nginx = env.nginx ? await output(env.nginx, ["-v"]) : null;
  return {
    nproc: navigator.hardwareConcurrency,
    cpuModel: cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown",
    memoryGiB: Math.round(memKb / 1024 / 1024 * 10) / 10,
    kernel: (await output("uname", ["-r"])) ?? "unknown",
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    python: (await output(env.python, ["--version"])) ?? "unknown",
    grpcio: (await output(env.python, [
      "-c",
      "import grpc; print(grpc.__version__)",
    ])) ?? "unknown",
    nginx: nginx?.replace(/^nginx version: /, "") ?? null,
    go: await output("go", ["version"]),
  };
}
