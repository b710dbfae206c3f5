/**
 * The sidecar's configuration: the typed {@link Config} the rest of the code
 * reads, and {@link CONFIG_KEYS}, the one table of TOML keys from which
 * validation, the defaults, `sidecar.toml` and `docs/configuration.md` all
 * follow. Durations are written in seconds in the file and held in
 * milliseconds here; the field names carry the unit.
 *
 * @module
 */

import {
  absolutePath,
  address,
  type Checker,
  host,
  integer,
  oneOf,
  optionalHttpUrl,
  optionalText,
  seconds,
  socketPath,
  type ValueType,
} from "./values.ts";

/** Level below which log lines are dropped. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** How log lines are written: one JSON object per line, or plain text. */
export type LogFormat = "json" | "text";

/** How usage records are encoded when sent to the billing endpoint. */
export type UsageFormat = "json" | "cloudevents";

/** Whether usage is metered durably (`durable`) or not at all (`off`). */
export type MeteringMode = "durable" | "off";

/** `[server]`: the gRPC front facing the gateway. */
export interface ServerConfig {
  /** Host to listen on; IPv6 literals are held without brackets. */
  bindHost: string;
  /** Port to listen on; 0 picks a free port. */
  bindPort: number;
  /** Absolute path of the worker's Unix socket. */
  workerSocketPath: string;
  /** HTTP/2 streams allowed at once on one gateway connection. */
  maxConcurrentStreams: number;
  /** Largest gRPC message accepted from the gateway. */
  maxRequestBytes: number;
  /** How long in-flight streams may run on after SIGTERM. */
  shutdownGraceMs: number;
  /** A gateway stream holding unsent events that takes none for this long is reset. */
  streamStallTimeoutMs: number;
}

/** `[worker]`: the connection to the inference worker. */
export interface WorkerConfig {
  /** Largest frame payload the sidecar accepts from the worker. */
  maxFrameBytes: number;
  /** How long the worker has to answer the opening handshake. */
  handshakeTimeoutMs: number;
  /** How long a generation with credit may go without a frame. */
  requestIdleTimeoutMs: number;
  /** Chunks a generation may send ahead of the gateway (its window). */
  streamCreditChunks: number;
  /** Requests that may wait for a worker slot; 0 fails them at once. */
  maxQueuedRequests: number;
  /** The longest a request waits for a worker slot. */
  queueTimeoutMs: number;
}

/** `[metering]`: usage records and their delivery to billing. */
export interface MeteringConfig {
  /** `off` records no usage at all; for benchmarks and development only. */
  mode: MeteringMode;
  /** Where usage batches are posted; null keeps records without sending. */
  billingEndpoint: string | null;
  /** How often a batch of usage records is sent. */
  batchIntervalMs: number;
  /** Records kept while billing is unreachable. */
  offlineQueueSize: number;
  /** Absolute path of the Deno KV file holding the usage queue. */
  usageDbPath: string;
  /** Most records sent in one batch. */
  batchMaxRecords: number;
  /** Timeout of one billing HTTP request. */
  requestTimeoutMs: number;
  /** Encoding of the records sent to billing. */
  format: UsageFormat;
  /** Names this sidecar in usage records; null means the host name. */
  instanceId: string | null;
  /**
   * How often the usage of generations in flight is checkpointed: at most
   * this much of a generation's delivered tokens goes unbilled when the
   * sidecar is killed mid-stream.
   */
  checkpointIntervalMs: number;
}

/** `[health]`: heartbeats, reconnection and worker reloads. */
export interface HealthConfig {
  /** Period between heartbeats to the worker. */
  checkIntervalMs: number;
  /** How long a heartbeat may go unanswered before the worker is hung. */
  heartbeatTimeoutMs: number;
  /** First delay before reconnecting to the worker. */
  reconnectDelayMs: number;
  /** Cap on the reconnect delay as it backs off. */
  reconnectMaxDelayMs: number;
  /** Slack added to a reload's announced ETA when holding requests. */
  reloadGraceMs: number;
  /** Absolute cap on holding a request during a reload. */
  maxHoldMs: number;
  /** Requests that may be held during a reload. */
  maxHeldRequests: number;
}

/** `[observability]`: metrics and logs. */
export interface ObservabilityConfig {
  /** Port of the Prometheus endpoint; 0 picks a free port. */
  metricsPort: number;
  /** Host the Prometheus endpoint listens on. */
  metricsHost: string;
  /** Level below which log lines are dropped. */
  logLevel: LogLevel;
  /** How log lines are written. */
  logFormat: LogFormat;
  /** Idle time after which a per-session metric series is removed. */
  sessionSeriesTtlMs: number;
  /** Most per-session metric series kept at once. */
  maxSessionSeries: number;
}

/** The whole configuration, one field per TOML section. */
export interface Config {
  /** `[server]` */
  server: ServerConfig;
  /** `[worker]` */
  worker: WorkerConfig;
  /** `[metering]` */
  metering: MeteringConfig;
  /** `[health]` */
  health: HealthConfig;
  /** `[observability]` */
  observability: ObservabilityConfig;
}

/** The TOML sections, in the order the docs and the example list them. */
export const SECTIONS = [
  "server",
  "worker",
  "metering",
  "health",
  "observability",
] as const;

/** The name of a TOML section. */
export type SectionName = typeof SECTIONS[number];

/** One TOML key: how it is written, checked, defaulted and documented. */
export interface ConfigKey {
  /** The section the key lives in. */
  readonly section: SectionName;
  /** The key within its section, as written in TOML. */
  readonly key: string;
  /** `section.key`, as used in messages and the docs. */
  readonly name: string;
  /** The TOML type of the value. */
  readonly type: ValueType;
  /** The default, as written in `sidecar.toml`. */
  readonly default: string | number;
  /** The values allowed, in words. */
  readonly allowed: string;
  /** What the key does, in one line (the comment in `sidecar.toml`). */
  readonly doc: string;
  /**
   * Checks a raw TOML value and, if it is good, stores it in `config`.
   * Returns the problem message when it is not.
   */
  readonly apply: (value: unknown, config: Config) => string | undefined;
}

interface KeySpec<T> {
  section: SectionName;
  key: string;
  default: string | number;
  check: Checker<T>;
  doc: string;
  set: (config: Config, value: T) => void;
}

function key<T>(spec: KeySpec<T>): ConfigKey {
  return {
    section: spec.section,
    key: spec.key,
    name: `${spec.section}.${spec.key}`,
    type: spec.check.type,
    default: spec.default,
    allowed: spec.check.allowed,
    doc: spec.doc,
    apply(value, config) {
      const checked = spec.check.check(value);
      if (!checked.ok) return checked.message;
      spec.set(config, checked.value);
    },
  };
}

/** Every key the sidecar understands, section by section. */
export const CONFIG_KEYS: readonly ConfigKey[] = [
  key({
    section: "server",
    key: "bind_addr",
    default: "0.0.0.0:50051",
    check: address(),
    doc: "Address the gRPC server listens on (port 0 picks a free port)",
    set: (c, v) => {
      c.server.bindHost = v.host;
      c.server.bindPort = v.port;
    },
  }),
  key({
    section: "server",
    key: "worker_uds",
    default: "unix:///tmp/cy_worker.sock",
    check: socketPath(),
    doc: "Unix socket the inference worker listens on",
    set: (c, v) => (c.server.workerSocketPath = v),
  }),
  key({
    section: "server",
    key: "max_concurrent_streams",
    default: 1024,
    check: integer(1, 100_000),
    doc: "HTTP/2 streams allowed at once on one gateway connection",
    set: (c, v) => (c.server.maxConcurrentStreams = v),
  }),
  key({
    section: "server",
    key: "max_request_bytes",
    default: 4_194_304,
    check: integer(1024, 67_108_864),
    doc: "Largest gRPC message accepted from the gateway",
    set: (c, v) => (c.server.maxRequestBytes = v),
  }),
  key({
    section: "server",
    key: "shutdown_grace_secs",
    default: 30,
    check: seconds(0, 3600),
    doc: "How long in-flight streams may finish after SIGTERM",
    set: (c, v) => (c.server.shutdownGraceMs = v),
  }),
  key({
    section: "server",
    key: "stream_stall_timeout_secs",
    default: 60,
    check: seconds(1, 3600),
    doc:
      "A gateway stream with unsent events that takes none for this long is reset",
    set: (c, v) => (c.server.streamStallTimeoutMs = v),
  }),

  key({
    section: "worker",
    key: "max_frame_bytes",
    default: 1_048_576,
    check: integer(1024, 67_108_864),
    doc: "Largest frame payload accepted from the worker",
    set: (c, v) => (c.worker.maxFrameBytes = v),
  }),
  key({
    section: "worker",
    key: "handshake_timeout_secs",
    default: 5,
    check: seconds(),
    doc: "How long the worker has to answer the opening handshake",
    set: (c, v) => (c.worker.handshakeTimeoutMs = v),
  }),
  key({
    section: "worker",
    key: "request_idle_timeout_secs",
    default: 60,
    check: seconds(),
    doc: "A generation with credit that gets no frame for this long fails",
    set: (c, v) => (c.worker.requestIdleTimeoutMs = v),
  }),
  key({
    section: "worker",
    key: "stream_credit_chunks",
    default: 32,
    check: integer(1, 4096),
    doc: "Per-generation flow-control window, in chunks",
    set: (c, v) => (c.worker.streamCreditChunks = v),
  }),
  key({
    section: "worker",
    key: "max_queued_requests",
    default: 256,
    check: integer(0, 100_000),
    doc: "Requests that may wait for a busy worker's slot (0 = fail at once)",
    set: (c, v) => (c.worker.maxQueuedRequests = v),
  }),
  key({
    section: "worker",
    key: "queue_timeout_secs",
    default: 5,
    check: seconds(),
    doc: "The longest a request waits for a worker slot",
    set: (c, v) => (c.worker.queueTimeoutMs = v),
  }),

  key({
    section: "metering",
    key: "mode",
    default: "durable",
    check: oneOf<MeteringMode>("durable", "off"),
    doc:
      "durable: queue every usage record on disk; off: meter nothing (benchmarks)",
    set: (c, v) => (c.metering.mode = v),
  }),
  key({
    section: "metering",
    key: "billing_endpoint",
    default: "",
    check: optionalHttpUrl(),
    doc: "URL usage batches are posted to (empty = keep records, send none)",
    set: (c, v) => (c.metering.billingEndpoint = v),
  }),
  key({
    section: "metering",
    key: "batch_interval_secs",
    default: 10,
    check: seconds(),
    doc: "How often a batch of usage records is sent",
    set: (c, v) => (c.metering.batchIntervalMs = v),
  }),
  key({
    section: "metering",
    key: "offline_queue_size",
    default: 10_000,
    check: integer(1, 10_000_000),
    doc: "Usage records kept while billing is unreachable",
    set: (c, v) => (c.metering.offlineQueueSize = v),
  }),
  key({
    section: "metering",
    key: "usage_db_path",
    default: "/tmp/cy-sidecar/usage.kv",
    check: absolutePath(),
    doc: "Deno KV file holding the usage queue",
    set: (c, v) => (c.metering.usageDbPath = v),
  }),
  key({
    section: "metering",
    key: "batch_max_records",
    default: 500,
    check: integer(1, 10_000),
    doc: "Most usage records sent in one batch",
    set: (c, v) => (c.metering.batchMaxRecords = v),
  }),
  key({
    section: "metering",
    key: "request_timeout_secs",
    default: 10,
    check: seconds(),
    doc: "Timeout of one billing HTTP request",
    set: (c, v) => (c.metering.requestTimeoutMs = v),
  }),
  key({
    section: "metering",
    key: "format",
    default: "json",
    check: oneOf<UsageFormat>("json", "cloudevents"),
    doc: "Encoding of the usage records sent to billing",
    set: (c, v) => (c.metering.format = v),
  }),
  key({
    section: "metering",
    key: "instance_id",
    default: "",
    check: optionalText(),
    doc: "Names this sidecar in usage records (empty = the host name)",
    set: (c, v) => (c.metering.instanceId = v),
  }),
  key({
    section: "metering",
    key: "checkpoint_interval_secs",
    default: 1,
    check: seconds(0.01, 60),
    doc:
      "How often in-flight usage is saved (bounds what a crash leaves unbilled)",
    set: (c, v) => (c.metering.checkpointIntervalMs = v),
  }),

  key({
    section: "health",
    key: "check_interval_secs",
    default: 5,
    check: seconds(),
    doc: "Period between heartbeats to the worker",
    set: (c, v) => (c.health.checkIntervalMs = v),
  }),
  key({
    section: "health",
    key: "heartbeat_timeout_secs",
    default: 2,
    check: seconds(),
    doc: "How long a heartbeat may go unanswered before the worker is hung",
    set: (c, v) => (c.health.heartbeatTimeoutMs = v),
  }),
  key({
    section: "health",
    key: "reconnect_delay_secs",
    default: 2,
    check: seconds(),
    doc: "First delay before reconnecting to the worker",
    set: (c, v) => (c.health.reconnectDelayMs = v),
  }),
  key({
    section: "health",
    key: "reconnect_max_delay_secs",
    default: 30,
    check: seconds(),
    doc: "Cap on the reconnect delay as it backs off",
    set: (c, v) => (c.health.reconnectMaxDelayMs = v),
  }),
  key({
    section: "health",
    key: "reload_grace_secs",
    default: 10,
    check: seconds(),
    doc: "Requests held during a worker reload wait at most its ETA + this",
    set: (c, v) => (c.health.reloadGraceMs = v),
  }),
  key({
    section: "health",
    key: "max_hold_secs",
    default: 300,
    check: seconds(),
    doc: "Absolute cap on holding a request during a reload",
    set: (c, v) => (c.health.maxHoldMs = v),
  }),
  key({
    section: "health",
    key: "max_held_requests",
    default: 1024,
    check: integer(0, 100_000),
    doc: "Requests that may be held during a reload",
    set: (c, v) => (c.health.maxHeldRequests = v),
  }),

  key({
    section: "observability",
    key: "metrics_port",
    default: 9090,
    check: integer(0, 65_535),
    doc: "Port of the Prometheus metrics endpoint (0 picks a free port)",
    set: (c, v) => (c.observability.metricsPort = v),
  }),
  key({
    section: "observability",
    key: "metrics_host",
    default: "0.0.0.0",
    check: host(),
    doc: "Host the Prometheus endpoint listens on",
    set: (c, v) => (c.observability.metricsHost = v),
  }),
  key({
    section: "observability",
    key: "log_level",
    default: "info",
    check: oneOf<LogLevel>("debug", "info", "warn", "error"),
    doc: "Lowest level of log line written",
    set: (c, v) => (c.observability.logLevel = v),
  }),
  key({
    section: "observability",
    key: "log_format",
    default: "json",
    check: oneOf<LogFormat>("json", "text"),
    doc: "Log lines as one JSON object each, or as plain text",
    set: (c, v) => (c.observability.logFormat = v),
  }),
  key({
    section: "observability",
    key: "session_series_ttl_secs",
    default: 300,
    check: seconds(),
    doc: "Per-session metric series idle this long are removed",
    set: (c, v) => (c.observability.sessionSeriesTtlMs = v),
  }),
  key({
    section: "observability",
    key: "max_session_series",
    default: 10_000,
    check: integer(1, 1_000_000),
    doc: "Most per-session metric series kept at once",
    set: (c, v) => (c.observability.maxSessionSeries = v),
  }),
];

/**
 * Builds a fresh, mutable copy of the defaults by passing each key's default
 * through its own check, so the defaults obey the same rules as a file.
 *
 * @throws {TypeError} If a default in {@link CONFIG_KEYS} fails its check.
 */
export function defaultConfig(): Config {
  // Every field is filled in by the loop below: each has exactly one key.
  const config = {
    server: {},
    worker: {},
    metering: {},
    health: {},
    observability: {},
  } as Config;

  for (const spec of CONFIG_KEYS) {
    const raw = spec.type === "integer" ? BigInt(spec.default) : spec.default;
    const problem = spec.apply(raw, config);
    if (problem !== undefined) {
      throw new TypeError(`Cannot use the default of ${spec.name}: ${problem}`);
    }
  }

  return config;
}

/** The defaults, frozen; what the sidecar runs with when given no file. */
export const DEFAULT_CONFIG: Readonly<Config> = freeze(defaultConfig());

function freeze(config: Config): Readonly<Config> {
  for (const section of SECTIONS) Object.freeze(config[section]);
  return Object.freeze(config);
}
