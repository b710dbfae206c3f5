/**
 * The ceiling of the gateway side: `bench/probe/grpc_ceiling.mjs`, a bare
 * @grpc/grpc-js server that answers Generate with a one-token reply and
 * does nothing else. Loaded like the sidecar, it shows how many requests a
 * second grpc-js itself serves on this machine: under Deno (with the
 * sidecar's V8 flags) and, when `bench/run.sh` could install the same
 * package versions for it, under Node.js.
 *
 * The relay floor is its sibling, `bench/probe/grpc_relay.mjs`: grpc-js
 * carrying each call to the worker and each chunk back, nothing more, on
 * the same two runtimes (on Deno also with the sidecar's write coalescing,
 * `deno-corked`); and the same relay in Go (`cyload relay`), to show what
 * one more hop costs in a compiled runtime (scenario 1).
 *
 * @module
 */

import type { Env } from "./env.ts";
import { Proc } from "./procs.ts";
import { productionV8Flags } from "./stack.ts";

/** The runtime a ceiling server runs on. */
export type CeilingRuntime = "deno" | "node";

/**
 * The relay floors: on the ceiling's two runtimes, on Deno with each read's
 * chunks corked into one socket write as the sidecar does, and in Go.
 */
export type RelayRuntime = CeilingRuntime | "deno-corked" | "go";

/** A running ceiling server. */
export interface Ceiling {
  proc: Proc;
  addr: string;
}

/** Where the Node.js copy of the probe lives (with its node_modules). */
export function nodeCeilingDir(): string | null {
  return Deno.env.get("CEILING_NODE_DIR") || null;
}

/** Starts the ceiling server on `runtime`; resolves once it listens. */
export function startCeiling(
  env: Env,
  runtime: CeilingRuntime,
): Promise<Ceiling> {
  return startProbe(env, runtime, "grpc_ceiling.mjs");
}

/**
 * Starts a bare relay to the worker on `socket` (scenario 1's relay
 * floor): `bench/probe/grpc_relay.mjs` on Deno (plain or corked) or
 * Node.js, or the load generator's `relay` (Go's net/http); resolves once
 * the worker has welcomed it and it listens.
 */
export async function startRelay(
  env: Env,
  runtime: RelayRuntime,
  socket: string,
): Promise<Ceiling> {
  if (runtime === "deno-corked") {
    return startProbe(env, "deno", "grpc_relay.mjs", { socket, cork: true });
  }
  if (runtime !== "go") {
    return startProbe(env, runtime, "grpc_relay.mjs", { socket });
  }
  const proc = new Proc("relay-go", env.cyload, ["relay", "-socket", socket]);
  const line = await proc.waitFor(/relay listening on /, 30_000);
  return { proc, addr: line.trim().split(" ").at(-1)! };
}

/** What a relay probe is given: the worker's socket, and whether to cork. */
interface RelayArgs {
  socket: string;
  cork?: boolean;
}

async function startProbe(
  env: Env,
  runtime: CeilingRuntime,
  script: string,
  relay?: RelayArgs,
): Promise<Ceiling> {
  const proto = `${env.root}/proto`;
  const corked = relay?.cork ? "-corked" : "";
  const name = `${script.replace(/\.mjs$/, "")}-${runtime}${corked}`;
  const args = relay
    ? [proto, "0", relay.socket, ...(relay.cork ? ["cork"] : [])]
    : [proto, "0"];
  let proc: Proc;
  if (runtime === "deno") {
    const v8 = productionV8Flags();
    proc = new Proc(name, env.deno, [
      "run",
      "--allow-net=127.0.0.1",
      // A relay reads and writes the worker's socket.
      `--allow-read=${relay ? `${proto},${relay.socket}` : proto}`,
      ...(relay ? [`--allow-write=${relay.socket}`] : []),
      "--allow-env",
      ...(v8.length ? [`--v8-flags=${v8.join(",")}`] : []),
      `bench/probe/${script}`,
      ...args,
    ], { cwd: env.root });
  } else {
    const dir = nodeCeilingDir();
    if (!dir) throw new Error("no Node.js ceiling installed");
    proc = new Proc(name, "node", [`${dir}/${script}`, ...args], { cwd: dir });
  }
  const line = await proc.waitFor(/^listening \d+/, 30_000);
  const port = line.trim().split(" ")[1];
  return { proc, addr: `127.0.0.1:${port}` };
}
