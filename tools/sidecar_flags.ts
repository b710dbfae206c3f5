/**
 * Prints, one per line, the Deno flags the sidecar runs with for a given
 * configuration file (or the embedded defaults):
 *
 *   deno run --allow-read tools/sidecar_flags.ts [sidecar.toml]
 */

import { ConfigError, loadConfig } from "../src/config/mod.ts";
import { denoFlags, permissionSet } from "../src/permissions.ts";

const path = Deno.args[0];
try {
  const config = await loadConfig(path);
  const abs = path ? await Deno.realPath(path) : undefined;
  for (const f of denoFlags(permissionSet(config, abs))) console.log(f);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  console.error(err.message);
  Deno.exit(1);
}
