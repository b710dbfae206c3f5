/**
 * Shutdown signals. The first SIGTERM or SIGINT starts a graceful drain; a
 * second one (an impatient operator pressing Ctrl-C again) exits at once.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";

/** Signals that begin a graceful shutdown. */
export type ShutdownSignal = "SIGTERM" | "SIGINT";

/** Resolves with the first shutdown signal received. */
export function waitForShutdownSignal(log: Logger): Promise<ShutdownSignal> {
  return new Promise((resolve) => {
    let seen = false;
    const on = (signal: ShutdownSignal) => () => {
      if (seen) {
        log.warn("second signal, exiting now", { signal });
        Deno.exit(130);
      }
      seen = true;
      resolve(signal);
    };
    Deno.addSignalListener("SIGTERM", on("SIGTERM"));
    Deno.addSignalListener("SIGINT", on("SIGINT"));
  });
}
