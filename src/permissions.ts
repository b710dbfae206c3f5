/**
 * The sidecar's runtime permissions, defined once. Everything that launches
 * the sidecar (the compile task, `deno run` tasks, the tests, the image)
 * takes its flags from here, derived from the configuration it will run
 * with: network only for its own listeners and the billing endpoint, file
 * access only for the worker socket, the usage queue and its config file.
 * The start-up check (`src/lifecycle/sandbox_check.ts`) reads the same
 * requirements to tell a configuration that needs more than the process
 * was given.
 *
 * @module
 */

import type { Config } from "./config/mod.ts";
import { bracketHost, hostPort } from "./util/host_port.ts";

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

/**
 * V8 flags the sidecar runs with, settled by the benchmark suite
 * (docs/benchmarks.md). The old-generation cap bounds the heap so that the
 * process stays inside the container's 128Mi memory limit under load. On
 * its own it also shrinks the young generation, and the garbage collector
 * then took a quarter of the CPU; a 2 MB semi-space restores throughput and
 * lowers the RSS under 1,000 open streams. Changed here and nowhere else.
 *
 * TODO(#5): with these, 1,000 open streams take 125 to 130 MiB, on the
 * 128 MiB line, and the garbage collector still takes 25-28% of the CPU at
 * saturation with short generations; a larger semi-space trades one for
 * the other (8 MB: about 5,100/s, 135 MiB).
 */
export const V8_FLAGS: readonly string[] = [
  "--max-old-space-size=64",
  "--max-semi-space-size=2",
];

/** A kind of Deno permission the sidecar is given. */
export type PermissionName = "net" | "read" | "write" | "env" | "sys";

/** One permission the sidecar needs, and the setting it follows from. */
export interface Requirement {
  name: PermissionName;
  /** `host[:port]`, an absolute path, a variable name or a `sys` API. */
  target: string;
  /** The configuration key (or library) that needs it, for messages. */
  reason: string;
}

/** The permission set for one configuration. */
export interface PermissionSet {
  /** `host:port` entries (host only where the port is chosen at bind time). */
  net: string[];
  read: string[];
  write: string[];
  env: string[];
  sys: string[];
}

/**
 * The `--allow-net` entry for a host and port. `host` is bare: an IPv6
 * address without brackets (`::1`), which gets them here, once.
 */
function listen(host: string, port: number): string {
  // Port 0 is chosen at bind time: the host alone is granted.
  return port === 0 ? bracketHost(host) : hostPort(host, port);
}

/** A URL's host without the brackets `URL.hostname` keeps on IPv6 addresses. */
function bareHost(url: URL): string {
  const h = url.hostname;
  return h.startsWith("[") && h.endsWith("]") ? h.slice(1, -1) : h;
}

/**
 * `path` made absolute against `cwd`, with `.` and `..` segments resolved
 * by name, as Deno resolves the paths it checks permissions for. Symbolic
 * links are kept, never followed: Deno checks a file's path as the program
 * names it, so a config mounted through links (a Kubernetes ConfigMap's
 * `..data/`) is granted by the path the sidecar is given, and stays
 * granted when the links move to a new version of the file.
 */
export function absolutePath(path: string, cwd: string): string {
  const parts: string[] = [];
  for (
    const part of (path.startsWith("/") ? path : `${cwd}/${path}`).split("/")
  ) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

/** The folder of an absolute path (`/` for a file at the root). */
export function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

/**
 * Every permission a configuration needs, each with the key it follows
 * from. `configPath`, when given, adds read access to the config file.
 */
export function requirements(
  config: Config,
  configPath?: string,
): Requirement[] {
  const out: Requirement[] = [];
  const need = (name: PermissionName, target: string, reason: string) =>
    out.push({ name, target, reason });

  need(
    "net",
    listen(config.server.bindHost, config.server.bindPort),
    "server.bind_addr",
  );
  need(
    "net",
    listen(config.observability.metricsHost, config.observability.metricsPort),
    "observability.metrics_host and metrics_port",
  );
  if (config.metering.billingEndpoint) {
    const url = new URL(config.metering.billingEndpoint);
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    need(
      "net",
      listen(bareHost(url), Number(port)),
      "metering.billing_endpoint",
    );
  }

  // Connecting to a Unix socket needs both read and write on its path.
  const socket = config.server.workerSocketPath;
  need("read", socket, "server.worker_uds");
  need("write", socket, "server.worker_uds");

  // Deno KV keeps -wal and -shm files beside the database.
  const usageDir = dirOf(config.metering.usageDbPath);
  need("read", usageDir, "metering.usage_db_path");
  need("write", usageDir, "metering.usage_db_path");

  if (configPath) need("read", configPath, "the config file");
  for (const v of ENV_VARS) need("env", v, "grpc-js");
  need("sys", "hostname", "metering.instance_id (the host name when unset)");
  return out;
}

/** Derives the permission set from a configuration and its file's path. */
export function permissionSet(
  config: Config,
  configPath?: string,
): PermissionSet {
  const set: PermissionSet = { net: [], read: [], write: [], env: [], sys: [] };
  for (const r of requirements(config, configPath)) {
    if (!set[r.name].includes(r.target)) set[r.name].push(r.target);
  }
  return set;
}

/** The `deno run` / `deno compile` flags for a permission set. */
export function denoFlags(set: PermissionSet): string[] {
  return [
    "--no-prompt",
    // The usage queue is a Deno KV database.
    "--unstable-kv",
    `--v8-flags=${V8_FLAGS.join(",")}`,
    `--allow-net=${set.net.join(",")}`,
    `--allow-read=${set.read.join(",")}`,
    `--allow-write=${set.write.join(",")}`,
    `--allow-env=${set.env.join(",")}`,
    `--allow-sys=${set.sys.join(",")}`,
  ];
}
