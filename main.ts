/**
 * cy-sidecar: a data-plane proxy between an inference gateway (gRPC) and
 * the inference worker beside it (framed JSON over a Unix socket).
 *
 * Reads top to bottom: parse flags, load the configuration, start, log the
 * bound addresses, wait for a signal, drain, exit.
 */

import { ConfigError, loadConfig } from "./src/config/mod.ts";
import { exitUnlessPermitted } from "./src/lifecycle/sandbox_check.ts";
import { waitForShutdownSignal } from "./src/lifecycle/signals.ts";
import { createLogger } from "./src/log/logger.ts";
import { UsageQueue } from "./src/metering/queue.ts";
import { startSidecar } from "./src/sidecar.ts";
import { hostPort } from "./src/util/host_port.ts";
import { SIDECAR_VERSION } from "./src/version.ts";

const USAGE = `cy-sidecar ${SIDECAR_VERSION}

Usage: cy-sidecar [--config FILE] [--check-config | --dump-usage | --drain-usage]
                  [--version] [--help]

  --config FILE    read settings from FILE (TOML); without it the embedded
                   defaults are used (see docs/configuration.md)
  --check-config   validate the configuration, print every problem, and exit
  --dump-usage     print every usage record in the usage queue (pending, set
                   aside and in-flight checkpoints) as JSON lines, and exit;
                   removes nothing
  --drain-usage    print every pending usage record as a JSON line and remove
                   exactly the records printed (each only after it was
                   written out), then exit; for billing by hand when no
                   billing endpoint takes them (docs/metering.md)
  --version        print the version and exit
  --help           print this text and exit
`;

interface Flags {
  config?: string;
  checkConfig: boolean;
  dumpUsage: boolean;
  drainUsage: boolean;
}

function parseFlags(args: string[]): Flags {
  const flags: Flags = {
    checkConfig: false,
    dumpUsage: false,
    drainUsage: false,
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") {
      console.log(USAGE);
      Deno.exit(0);
    } else if (arg === "--version") {
      console.log(`cy-sidecar ${SIDECAR_VERSION}`);
      Deno.exit(0);
    } else if (arg === "--check-config") {
      flags.checkConfig = true;
    } else if (arg === "--dump-usage") {
      flags.dumpUsage = true;
    } else if (arg === "--drain-usage") {
      flags.drainUsage = true;
    } else if (arg === "--config" && i + 1 < args.length) {
      flags.config = args[++i];
    } else if (arg.startsWith("--config=")) {
      flags.config = arg.slice("--config=".length);
    } else {
      console.error(
        `cy-sidecar: unknown argument ${JSON.stringify(arg)}\n\n${USAGE}`,
      );
      Deno.exit(2);
    }
  }
  return flags;
}

const encoder = new TextEncoder();
let stdout: WritableStreamDefaultWriter<Uint8Array> | null = null;

/** Writes all of `text` to stdout (a plain write may take only part). */
async function print(text: string): Promise<void> {
  stdout ??= Deno.stdout.writable.getWriter();
  await stdout.ready;
  await stdout.write(encoder.encode(text));
}

/**
 * Prints the usage queue as JSON lines on stdout. A sidecar may be running
 * on the same database: its checkpoints are printed, never turned into
 * records here.
 */
async function dumpUsage(path: string): Promise<void> {
  const queue = await UsageQueue.open(path, { recoverInflight: false });
  for await (const entry of queue.dump()) {
    await print(JSON.stringify(entry) + "\n");
  }
  await queue.close();
}

/** Prints every pending record as a JSON line, removing what was printed. */
async function drainUsage(path: string, endpoint: string | null) {
  if (endpoint) {
    console.error(
      `cy-sidecar: warning: billing_endpoint is set (${endpoint}); a running sidecar may send records this drain also prints`,
    );
  }
  const queue = await UsageQueue.open(path, { recoverInflight: false });
  const removed = await queue.drain(async (records) => {
    await print(records.map((r) => JSON.stringify(r) + "\n").join(""));
  });
  const left = (await queue.inflight()).length;
  await queue.close();
  console.error(
    `cy-sidecar: drained ${removed} usage records` +
      (left > 0
        ? `; ${left} in-flight checkpoints stay (the next start of the sidecar turns those of a dead process into records)`
        : ""),
  );
}

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args);

  let config;
  try {
    config = await loadConfig(flags.config);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(err.message);
    Deno.exit(1);
  }
  exitUnlessPermitted(config, flags.config);
  if (flags.checkConfig) {
    console.log(`${flags.config ?? "(embedded defaults)"}: ok`);
    return;
  }
  if (flags.dumpUsage) {
    await dumpUsage(config.metering.usageDbPath);
    return;
  }
  if (flags.drainUsage) {
    await drainUsage(
      config.metering.usageDbPath,
      config.metering.billingEndpoint,
    );
    return;
  }

  const log = createLogger({
    level: config.observability.logLevel,
    format: config.observability.logFormat,
  });
  let sidecar;
  try {
    sidecar = await startSidecar(config, log);
  } catch (err) {
    log.error("cannot start", { error: err });
    Deno.exit(1);
  }
  log.info("cy-sidecar started", {
    version: SIDECAR_VERSION,
    config: flags.config ?? "(embedded defaults)",
    grpc_addr: hostPort(config.server.bindHost, sidecar.grpcPort),
    metrics_addr: hostPort(
      config.observability.metricsHost,
      sidecar.metricsPort,
    ),
    worker_socket: config.server.workerSocketPath,
  });

  const signal = await waitForShutdownSignal(log);
  log.info("shutting down", {
    signal,
    grace_ms: config.server.shutdownGraceMs,
  });
  await sidecar.shutdown(config.server.shutdownGraceMs);
  log.info("stopped");
  Deno.exit(0);
}

if (import.meta.main) await main();
