/**
 * Prints, one per line, the Deno flags the sidecar runs with for a given
 * configuration file (or the embedded defaults), exactly the flags
 * `deno task start --config FILE` uses:
 *
 *   deno run --allow-read tools/sidecar_flags.ts [sidecar.toml]
 *
 * The file is granted by the path given (made absolute against the working
 * directory), not by where a symbolic link points: Deno checks the path the
 * sidecar opens, and a ConfigMap's links change target on every update.
 *
 * @module
 */

import { ConfigError, loadConfig } from "../src/config/mod.ts";
import { absolutePath, denoFlags, permissionSet } from "../src/permissions.ts";

/**
 * The flags for the config file at `path` (relative to `cwd`), or for the
 * embedded defaults when `path` is undefined.
 *
 * @throws {ConfigError} If the configuration has problems.
 */
export async function sidecarFlags(
  path: string | undefined,
  cwd: string,
): Promise<string[]> {
  const abs = path === undefined ? undefined : absolutePath(path, cwd);
  return denoFlags(permissionSet(await loadConfig(abs), abs));
}

if (import.meta.main) {
  try {
    const flags = await sidecarFlags(Deno.args[0], Deno.cwd());
    for (const f of flags) console.log(f);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(err.message);
    Deno.exit(1);
  }
}
