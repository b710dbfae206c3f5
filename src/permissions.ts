/**
 * The sidecar's runtime permissions, defined once. Everything that launches
 * the sidecar (the compile task, `deno run` tasks, the tests, the image)
 * takes its flags from here, derived from the configuration it will run
 * with: network only for its own listeners and the billing endpoint, file
 * access only for the worker socket, the usage queue and its config file.
 *
 * @module
 */

import type { Config } from "./config/mod.ts";

/**
 * Environment variables grpc-js reads at start-up (logging, tracing, TLS
 * roots, proxies). Granting exactly these keeps the rest of the
 * environment, which may hold secrets of the pod, out of reach.
 */
export const ENV_VARS: readonly string[] = [
  "GRPC_NODE_VERBOSITY",
  "GRPC_NODE_TRACE",
  "GRPC_VERBOSITY",
  "GRPC_TRACE",
  "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
  "GRPC_EXPERIMENTAL_ENABLE_OUTLIER_DETECTION",
  "GRPC_NODE_DEBUG_SEND_ERROR_DETAILS",
  "GRPC_NODE_USE_ALTERNATIVE_RESOLVER",
  "GRPC_SSL_CIPHER_SUITES",
];

/** The permission set for one configuration. */
export interface PermissionSet {
  /** `host:port` entries (host only where the port is chosen at bind time). */
  net: string[];
  read: string[];
  write: string[];
  env: string[];
  sys: string[];
}

function listen(host: string, port: number): string {
  const h = host.includes(":") ? `[${host}]` : host;
  return port === 0 ? h : `${h}:${port}`;
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

/** Derives the permission set from a configuration and its file's path. */
export function permissionSet(
  config: Config,
  configPath?: string,
): PermissionSet {
  const net = [
    listen(config.server.bindHost, config.server.bindPort),
    listen(config.observability.metricsHost, config.observability.metricsPort),
  ];
  if (config.metering.billingEndpoint) {
    const url = new URL(config.metering.billingEndpoint);
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    net.push(`${url.hostname}:${port}`);
  }

  const socket = config.server.workerSocketPath;
  // Deno KV keeps -wal and -shm files beside the database.
  const usageDir = dirOf(config.metering.usageDbPath);
  const read = [socket, usageDir];
  if (configPath) read.push(configPath);

  return {
    net: [...new Set(net)],
    read,
    write: [socket, usageDir],
    env: [...ENV_VARS],
    sys: ["hostname"],
  };
}

/** The `deno run` / `deno compile` flags for a permission set. */
export function denoFlags(set: PermissionSet): string[] {
  return [
    "--no-prompt",
    // The usage queue is a Deno KV database.
    "--unstable-kv",
    `--allow-net=${set.net.join(",")}`,
    `--allow-read=${set.read.join(",")}`,
    `--allow-write=${set.write.join(",")}`,
    `--allow-env=${set.env.join(",")}`,
    `--allow-sys=${set.sys.join(",")}`,
  ];
}
