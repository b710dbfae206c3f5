/**
 * The ceiling of the gateway side: `bench/probe/grpc_ceiling.mjs`, a bare
 * @grpc/grpc-js server that answers Generate with a one-token reply and
 * does nothing else. Loaded like the sidecar, it shows how many requests a
 * second grpc-js itself serves on this machine: under Deno (with the
 * sidecar's V8 flags) and, when `bench/run.sh` could install the same
 * package versions for it, under Node.js.
 *
 * @module
 */

import type { Env } from "./env.ts";
import { Proc } from "./procs.ts";
import { productionV8Flags } from "./stack.ts";

/** The runtime a ceiling server runs on. */
export type CeilingRuntime = "deno" | "node";

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
export async function startCeiling(
  env: Env,
  runtime: CeilingRuntime,
): Promise<Ceiling> {
  const proto = `${env.root}/proto`;
  let proc: Proc;
  if (runtime === "deno") {
    const v8 = productionV8Flags();
    proc = new Proc("ceiling-deno", env.deno, [
      "run",
      "--allow-net=127.0.0.1",
      `--allow-read=${proto}`,
      "--allow-env",
      ...(v8.length ? [`--v8-flags=${v8.join(",")}`] : []),
      "bench/probe/grpc_ceiling.mjs",
      proto,
      "0",
    ], { cwd: env.root });
  } else {
    const dir = nodeCeilingDir();
    if (!dir) throw new Error("no Node.js ceiling installed");
    proc = new Proc("ceiling-node", "node", [
      `${dir}/grpc_ceiling.mjs`,
      proto,
      "0",
    ], { cwd: dir });
  }
  const line = await proc.waitFor(/^listening \d+/, 30_000);
  const port = line.trim().split(" ")[1];
  return { proc, addr: `127.0.0.1:${port}` };
}
