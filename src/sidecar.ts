/**
 * Assembles a sidecar from its configuration: the worker client, the
 * gateway gRPC server and the observability server, and the order in which
 * they stop.
 *
 * @module
 */

import type { Config } from "./config/mod.ts";
import { Readiness } from "./lifecycle/readiness.ts";
import type { Logger } from "./log/logger.ts";
import { startMeter } from "./metering/mod.ts";
import { startMetricsServer } from "./metrics/http.ts";
import { SessionSeries } from "./metrics/session_series.ts";
import { SidecarMetrics } from "./metrics/registry.ts";
import { startGatewayServer } from "./gateway/server.ts";
import type { Generation, GenerationDeps } from "./gateway/generation.ts";
import { LiveCount } from "./gateway/live_count.ts";
import { realClock } from "./util/clock.ts";
import { SIDECAR_AGENT } from "./version.ts";
import { WorkerClient } from "./worker/client.ts";
import { statusLabel } from "./worker/state.ts";

// How often idle per-session metric series are looked for, at most.
const SESSION_SWEEP_MAX_MS = 30_000;

// The last billing flush at shutdown is bounded so that it fits inside a
// pod's termination grace period after the streams have drained.
const USAGE_FLUSH_ON_SHUTDOWN_MS = 3_000;

// After the last generation ended, connections get this long to flush
// their final messages before they are torn down.
const CLOSE_GRACE_MS = 2_000;
const FORCED_CLOSE_SETTLE_MS = 500;

/** A running sidecar. */
export interface Sidecar {
  grpcPort: number;
  metricsPort: number;
  worker: WorkerClient;
  metrics: SidecarMetrics;
  /** Drains in-flight generations for at most `graceMs`, then stops everything. */
  shutdown(graceMs: number): Promise<void>;
}

/** What {@link startSidecar} can be given besides its configuration. */
export interface SidecarOptions {
  /**
   * Starts the meter; `startMeter` (src/metering/mod.ts) by default. The
   * benchmark suite passes a minimal meter to measure the floor of what
   * durable metering costs (bench/probe/floor_meter.ts).
   */
  startMeter?: typeof startMeter;
}

/** Starts every part of the sidecar described by `config`. */
export async function startSidecar(
  config: Config,
  log: Logger,
  options: SidecarOptions = {},
): Promise<Sidecar> {
  const metrics = new SidecarMetrics();
  const clock = realClock;

  const worker = new WorkerClient({
    socketPath: config.server.workerSocketPath,
    maxFrameBytes: config.worker.maxFrameBytes,
    handshakeTimeoutMs: config.worker.handshakeTimeoutMs,
    checkIntervalMs: config.health.checkIntervalMs,
    heartbeatTimeoutMs: config.health.heartbeatTimeoutMs,
    reconnectDelayMs: config.health.reconnectDelayMs,
    reconnectMaxDelayMs: config.health.reconnectMaxDelayMs,
    requestIdleTimeoutMs: config.worker.requestIdleTimeoutMs,
    streamCreditChunks: config.worker.streamCreditChunks,
    maxQueuedRequests: config.worker.maxQueuedRequests,
    queueTimeoutMs: config.worker.queueTimeoutMs,
    reloadGraceMs: config.health.reloadGraceMs,
    maxHoldMs: config.health.maxHoldMs,
    maxHeldRequests: config.health.maxHeldRequests,
    agent: SIDECAR_AGENT,
    logger: log.child({ component: "worker" }),
    clock,
    onConnectionError: (kind) => metrics.workerConnectionErrors.inc({ kind }),
  });
  worker.onStateChange((s) => metrics.setWorkerStatus(statusLabel(s)));
  metrics.gaugeFrom(
    "sidecar_generations_in_flight",
    "Generations sent to the worker and not yet finished.",
    () => worker.inFlight,
  );
  metrics.gaugeFrom(
    "sidecar_generations_waiting",
    "Generations waiting for a worker slot or held during a reload.",
    () => worker.waiting,
  );

  // The meter checkpoints the usage of the generations this counts.
  const live = new LiveCount<Generation>();
  const meter = await (options.startMeter ?? startMeter)(
    config,
    metrics,
    log.child({ component: "metering" }),
    { live, clock },
  );
  const sessions = new SessionSeries({
    counter: metrics.tokensProcessed,
    ttlMs: config.observability.sessionSeriesTtlMs,
    maxSeries: config.observability.maxSessionSeries,
    clock,
  });
  sessions.start(
    Math.min(config.observability.sessionSeriesTtlMs, SESSION_SWEEP_MAX_MS),
  );

  const deps: GenerationDeps = {
    worker,
    metrics,
    log: log.child({ component: "gateway" }),
    clock,
    record: (outcome) => meter.record(outcome),
    admit: () => meter.admit(),
    sessions,
    live,
    stallTimeoutMs: config.server.streamStallTimeoutMs,
  };

  // One decision for gRPC health, /readyz, sidecar_ready and GetStatus
  // (docs/deployment.md, "Health signals"). `meterRefusing` must cover
  // every reason `meter.admit()` refuses; a meter that can announce its
  // admit state changing is wired to `meterChanges` as well.
  const readiness = new Readiness({
    worker,
    meterRefusing: () => meter.refusing,
    clock,
  });
  metrics.gaugeFrom(
    "sidecar_ready",
    "1 while the sidecar takes new generations (gRPC health SERVING, /readyz 200), else 0.",
    () => readiness.verdict.serving ? 1 : 0,
  );

  const grpcServer = await startGatewayServer(deps, {
    host: config.server.bindHost,
    port: config.server.bindPort,
    maxConcurrentStreams: config.server.maxConcurrentStreams,
    maxRequestBytes: config.server.maxRequestBytes,
    readiness,
  });
  const metricsServer = startMetricsServer({
    host: config.observability.metricsHost,
    port: config.observability.metricsPort,
    metrics,
    worker,
    readiness,
  });
  worker.start();
  readiness.start();

  return {
    grpcPort: grpcServer.port,
    metricsPort: metricsServer.port,
    worker,
    metrics,
    async shutdown(graceMs: number) {
      // New generations are refused from now on and readiness fails, so
      // traffic moves to other pods; GOAWAY tells connected gateways to
      // open no new streams here, while the streams in flight go on.
      readiness.beginShutdown();
      worker.refuseNew();
      const closed = new Promise<true>((resolve) =>
        grpcServer.server.tryShutdown(() => resolve(true))
      );
      const drained = await deps.live.idle(graceMs);
      if (!drained) {
        log.warn("shutdown grace ran out; cancelling generations", {
          in_flight: deps.live.count,
        });
      }

      // What is left fails with UNAVAILABLE and is metered; then the final
      // messages get a moment to flush before connections are torn down.
      const workerClosed = worker.stop();
      // These waits share one CLOSE_GRACE_MS, the figure the pod's
      // termination grace period is computed with; its last
      // FORCED_CLOSE_SETTLE_MS is kept for generations whose streams a
      // forced close ends, so that they are recorded before the queue
      // closes.
      const start = Date.now();
      const closeBy = start + CLOSE_GRACE_MS - FORCED_CLOSE_SETTLE_MS;
      await deps.live.idle(CLOSE_GRACE_MS - FORCED_CLOSE_SETTLE_MS);
      const timeout = new Promise<false>((r) =>
        setTimeout(() => r(false), Math.max(0, closeBy - Date.now()))
      );
      if (!await Promise.race([closed, timeout])) {
        grpcServer.server.forceShutdown();
        await deps.live.idle(
          Math.max(0, start + CLOSE_GRACE_MS - Date.now()),
        );
      }
      sessions.stop();
      await workerClosed;
      readiness.stop();

      // Every record is already durable; this only shortens the backlog
      // the next start will send. It ends within USAGE_FLUSH_ON_SHUTDOWN_MS
      // (a billing request in flight is abandoned, not waited for).
      await meter.shutdown(USAGE_FLUSH_ON_SHUTDOWN_MS);
      await metricsServer.server.shutdown();
    },
  };
}
