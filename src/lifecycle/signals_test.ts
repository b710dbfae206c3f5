import { deepStrictEqual, equal, match } from "node:assert/strict";
import { createLogger } from "../log/logger.ts";
import {
  SECOND_SIGNAL_EXIT_CODE,
  type ShutdownSignal,
  type SignalHost,
  waitForShutdownSignal,
} from "./signals.ts";

/** A process whose signals the test delivers and whose exits it records. */
class FakeHost implements SignalHost {
  handlers = new Map<ShutdownSignal, (() => void)[]>();
  exits: number[] = [];
  addSignalListener(signal: ShutdownSignal, handler: () => void): void {
    this.handlers.set(signal, [...(this.handlers.get(signal) ?? []), handler]);
  }
  exit(code: number): void {
    this.exits.push(code);
  }
  deliver(signal: ShutdownSignal): void {
    for (const h of this.handlers.get(signal) ?? []) h();
  }
}

function recordingLogger() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({
    level: "debug",
    sink: (line) => lines.push(JSON.parse(line)),
  });
  return { log, lines };
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`${signal} starts the graceful shutdown without exiting`, async () => {
    const host = new FakeHost();
    const { log } = recordingLogger();
    const first = waitForShutdownSignal(log, host);

    host.deliver(signal);

    equal(await first, signal);
    deepStrictEqual(host.exits, []);
  });
}

for (
  const [first, second] of [
    ["SIGINT", "SIGINT"],
    ["SIGTERM", "SIGINT"],
    ["SIGINT", "SIGTERM"],
  ] as const
) {
  Deno.test(`${second} after ${first} exits at once with status ${SECOND_SIGNAL_EXIT_CODE}`, async () => {
    const host = new FakeHost();
    const { log, lines } = recordingLogger();
    const shutdown = waitForShutdownSignal(log, host);
    host.deliver(first);
    equal(await shutdown, first);

    host.deliver(second);

    deepStrictEqual(host.exits, [SECOND_SIGNAL_EXIT_CODE]);
    const warning = lines.find((l) => l.level === "warn");
    match(String(warning?.msg), /second signal/);
    equal(warning?.signal, second);
  });
}

Deno.test("a second SIGTERM exits with the shell's interrupted status 130, not SIGTERM's own 143", async () => {
  const host = new FakeHost();
  const { log } = recordingLogger();
  const shutdown = waitForShutdownSignal(log, host);
  host.deliver("SIGTERM");
  equal(await shutdown, "SIGTERM");
  deepStrictEqual(host.exits, []);

  host.deliver("SIGTERM");

  // The status operators and supervisors see (docs/resilience.md): 128 +
  // SIGINT's number, whichever signal cut the drain short.
  deepStrictEqual(host.exits, [130]);
});
