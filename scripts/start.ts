/**
 * Runs the sidecar from source with `deno run` and the permission set of
 * src/permissions.ts for its configuration, the same set the executable
 * and the tests use.
 *
 *   deno task start [--config FILE] [other cy-sidecar arguments]
 *
 * Without `--config` the sidecar runs on its embedded defaults. The child
 * gets this terminal: Ctrl-C reaches it directly and starts its drain;
 * a SIGTERM sent to this script is passed on to it.
 *
 * @module
 */

import { ConfigError } from "../src/config/mod.ts";
import { absolutePath } from "../src/permissions.ts";
import { sidecarFlags } from "../tools/sidecar_flags.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * The `deno run` arguments for the sidecar's own arguments `args`: the
 * config file named by `--config FILE` (or `--config=FILE`) decides the
 * permissions, and is passed on as an absolute path (symbolic links kept,
 * as `tools/sidecar_flags.ts` grants it).
 *
 * @throws {ConfigError} If the configuration has problems.
 */
export async function runArgs(args: string[]): Promise<string[]> {
  const rest: string[] = [];
  let configPath: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--config" && i + 1 < args.length) {
      configPath = args[++i];
    } else if (args[i].startsWith("--config=")) {
      configPath = args[i].slice("--config=".length);
    } else {
      rest.push(args[i]);
    }
  }
  // Absolute, links kept: the path Deno will check (see absolutePath).
  if (configPath) configPath = absolutePath(configPath, Deno.cwd());

  const flags = await sidecarFlags(configPath, Deno.cwd());
  return [
    "run",
    ...flags,
    `${ROOT}main.ts`,
    ...(configPath ? ["--config", configPath] : []),
    ...rest,
  ];
}

async function main(): Promise<void> {
  let args: string[];
  try {
    args = await runArgs(Deno.args);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(err.message);
    Deno.exit(1);
  }

  const child = new Deno.Command(Deno.execPath(), { args }).spawn();
  const forward = () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
  };
  Deno.addSignalListener("SIGTERM", forward);
  // The terminal delivers Ctrl-C to the child as well; forwarding it too
  // would count as a second signal and skip the drain.
  Deno.addSignalListener("SIGINT", () => {});

  Deno.exit((await child.status).code);
}

if (import.meta.main) await main();
