/**
 * The stack most end-to-end tests run against: the simulator worker, the
 * sidecar in front of it (launched as `startSidecar` does), a gateway
 * client, and optionally a billing server the sidecar reports usage to.
 * Also the same sidecar and client in front of a scripted worker, for
 * faults the simulator cannot make.
 */

import type { BillingServer } from "./billing_server.ts";
import {
  gateway,
  healthClient,
  type Proc,
  type SidecarProc,
  startSidecar,
  startSim,
  tempDir,
} from "./harness.ts";
import { ScriptedWorker } from "./scripted_worker.ts";

type Client = ReturnType<typeof gateway>;

// How long a generation's end may take to be logged: a loaded machine
// makes it slower, never wrong.
const ENDED_WITHIN_MS = 15_000;

/** What {@link startStack} starts. */
export interface StackOptions {
  /** The simulator's command-line arguments. Default: none (its own defaults). */
  simArgs?: string[];
  /** TOML merged into the sidecar's test config, after the billing keys. */
  toml?: string;
  /**
   * A started billing server: the sidecar reports to it every 0.1 s, and
   * `close` closes it. Default: none, so usage stays in the queue.
   */
  billing?: BillingServer;
}

/** A running stack. */
export interface Stack {
  /** The temporary folder of the socket, config and usage queue. */
  dir: string;
  /** The worker's socket path. */
  sock: string;
  /** The simulator now serving `sock` (replaced by `restartSim`). */
  sim: Proc;
  sidecar: SidecarProc;
  /** A gateway client of the sidecar. */
  client: Client;
  /** A `grpc.health.v1.Health` client of the sidecar, made on first use. */
  readonly health: Client;
  /**
   * The sidecar's own "generation ended" log line for request `id`,
   * parsed, once it is logged.
   */
  // deno-lint-ignore no-explicit-any -- a parsed JSON log line
  sidecarEnd(id: string): Promise<any>;
  /**
   * Waits until the simulator logs that generation `id` ended as
   * cancelled (it logs generations at `--log-level debug`).
   */
  workerCancelled(id: string): Promise<string>;
  /** Starts a simulator again on `sock`, with the same arguments. */
  restartSim(): Promise<void>;
  /** Closes the clients, kills the sidecar and the simulator, closes billing. */
  close(): Promise<void>;
}

/** Starts a simulator, then a sidecar that is ready to serve it. */
export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const { simArgs = [], toml = "", billing } = options;
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, simArgs);
  const metering = billing
    ? `[metering]
billing_endpoint = "${billing.url}"
batch_interval_secs = 0.1
`
    : "";
  const sidecar = await startSidecar(dir, sock, metering + toml);
  let health: Client | null = null;

  const stack: Stack = {
    dir,
    sock,
    sim,
    sidecar,
    client: gateway(sidecar.grpcAddr),
    get health() {
      health ??= healthClient(sidecar.grpcAddr);
      return health;
    },
    async sidecarEnd(id) {
      return JSON.parse(
        await sidecar.proc.waitFor(
          new RegExp(`"msg":"generation ended".*"request_id":"${id}"`),
          ENDED_WITHIN_MS,
        ),
      );
    },
    workerCancelled(id) {
      return stack.sim.waitFor(
        new RegExp(`generation ended id=${id} outcome=cancelled$`),
        ENDED_WITHIN_MS,
      );
    },
    async restartSim() {
      stack.sim = await startSim(sock, simArgs);
    },
    async close() {
      stack.client.close();
      health?.close();
      await sidecar.proc.kill();
      await stack.sim.kill();
      await billing?.close();
    },
  };
  return stack;
}

/** A sidecar in front of a scripted worker, and a gateway client. */
export interface ScriptedStack {
  worker: ScriptedWorker;
  sidecar: SidecarProc;
  client: Client;
  /** Closes the client, kills the sidecar, closes the worker. */
  close(): Promise<void>;
}

/**
 * Starts a sidecar (`toml` merged into its test config) against a
 * scripted worker. It does not wait for the sidecar to be ready: the test
 * decides when, and whether, the worker answers.
 */
export async function startScriptedStack(toml = ""): Promise<ScriptedStack> {
  const worker = await ScriptedWorker.listen();
  const dir = await tempDir();
  const sidecar = await startSidecar(dir, worker.path, toml, {
    waitReady: false,
  });
  const client = gateway(sidecar.grpcAddr);
  return {
    worker,
    sidecar,
    client,
    async close() {
      client.close();
      await sidecar.proc.kill();
      worker.close();
    },
  };
}
