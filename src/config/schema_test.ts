import {
  deepStrictEqual as assertEquals,
  throws as assertThrows,
} from "node:assert/strict";
import {
  type Config,
  CONFIG_KEYS,
  DEFAULT_CONFIG,
  defaultConfig,
  SECTIONS,
} from "./schema.ts";

Deno.test("DEFAULT_CONFIG holds the documented defaults in milliseconds", () => {
  const expected: Config = {
    server: {
      bindHost: "0.0.0.0",
      bindPort: 50051,
      workerSocketPath: "/tmp/cy_worker.sock",
      maxConcurrentStreams: 1024,
      maxRequestBytes: 4_194_304,
      shutdownGraceMs: 30_000,
      streamStallTimeoutMs: 60_000,
    },
    worker: {
      maxFrameBytes: 1_048_576,
      handshakeTimeoutMs: 5_000,
      requestIdleTimeoutMs: 60_000,
      streamCreditChunks: 32,
      maxQueuedRequests: 256,
      queueTimeoutMs: 5_000,
    },
    metering: {
      mode: "durable",
      billingEndpoint: null,
      batchIntervalMs: 10_000,
      offlineQueueSize: 10_000,
      usageDbPath: "/tmp/cy-sidecar/usage.kv",
      batchMaxRecords: 500,
      requestTimeoutMs: 10_000,
      format: "json",
      instanceId: null,
      checkpointIntervalMs: 1_000,
    },
    health: {
      checkIntervalMs: 5_000,
      heartbeatTimeoutMs: 2_000,
      reconnectDelayMs: 2_000,
      reconnectMaxDelayMs: 30_000,
      reloadGraceMs: 10_000,
      maxHoldMs: 300_000,
      maxHeldRequests: 1024,
    },
    observability: {
      metricsPort: 9090,
      metricsHost: "0.0.0.0",
      logLevel: "info",
      logFormat: "json",
      sessionSeriesTtlMs: 300_000,
      maxSessionSeries: 10_000,
    },
  };

  assertEquals(DEFAULT_CONFIG, expected);
});

Deno.test("DEFAULT_CONFIG is frozen while defaultConfig gives a mutable copy", () => {
  assertThrows(() => {
    (DEFAULT_CONFIG.server as { bindPort: number }).bindPort = 1;
  }, TypeError);

  const copy = defaultConfig();
  copy.server.bindPort = 0;
  assertEquals(DEFAULT_CONFIG.server.bindPort, 50051);
});

Deno.test("CONFIG_KEYS names each key once and only in a known section", () => {
  const names = CONFIG_KEYS.map((spec) => spec.name);
  const bareNames = CONFIG_KEYS.map((spec) => spec.key);

  assertEquals(new Set(names).size, names.length);
  // Unique bare names let a key written in the wrong section be pointed home.
  assertEquals(new Set(bareNames).size, bareNames.length);
  for (const spec of CONFIG_KEYS) {
    assertEquals(SECTIONS.includes(spec.section), true, spec.name);
    assertEquals(spec.name, `${spec.section}.${spec.key}`);
  }
});

Deno.test("CONFIG_KEYS docs fit on one comment line of sidecar.toml", () => {
  for (const spec of CONFIG_KEYS) {
    assertEquals(/^[^\n]{1,78}$/.test(spec.doc), true, spec.name);
  }
});

Deno.test("CONFIG_KEYS lists durations as numbers and nothing else as one", () => {
  for (const spec of CONFIG_KEYS) {
    assertEquals(spec.key.endsWith("_secs"), spec.type === "number", spec.name);
  }
});
