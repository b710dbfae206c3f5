/**
 * Shutdown signals. The first SIGTERM or SIGINT starts a graceful drain; a
 * second one (an impatient operator pressing Ctrl-C again, or a supervisor
 * that will not wait) exits at once with {@link SECOND_SIGNAL_EXIT_CODE}.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";

/** Signals that begin a graceful shutdown. */
export type ShutdownSignal = "SIGTERM" | "SIGINT";

/**
 * Exit status when a second signal cuts the drain short: 128 + SIGINT's
 * number, the shell's convention for "interrupted", whichever signal came.
 * A drain that completes exits 0.
 */
export const SECOND_SIGNAL_EXIT_CODE = 130;

/** What {@link waitForShutdownSignal} needs from the process (tests replace it). */
export interface SignalHost {
  addSignalListener(signal: ShutdownSignal, handler: () => void): void;
  exit(code: number): void;
}

const denoHost: SignalHost = {
  addSignalListener: (signal, handler) =>
    Deno.addSignalListener(signal, handler),
  exit: (code) => Deno.exit(code),
};

/**
 * Resolves with the first shutdown signal received; a later one logs and
 * exits at once with {@link SECOND_SIGNAL_EXIT_CODE}.
 */
export function waitForShutdownSignal(
  log: Logger,
  host: SignalHost = denoHost,
): Promise<ShutdownSignal> {
  return new Promise((resolve) => {
    let seen = false;
    const on = (signal: ShutdownSignal) => () => {
      if (seen) {
        log.warn("second signal, exiting now", {
          signal,
          exit_code: SECOND_SIGNAL_EXIT_CODE,
        });
        host.exit(SECOND_SIGNAL_EXIT_CODE);
        return;
      }
      seen = true;
      resolve(signal);
    };
    host.addSignalListener("SIGTERM", on("SIGTERM"));
    host.addSignalListener("SIGINT", on("SIGINT"));
  });
}
