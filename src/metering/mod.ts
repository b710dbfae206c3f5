/**
 * The meter: turns each generation's outcome into a usage record, commits
 * it durably before the gateway sees the generation end, checkpoints the
 * generations in flight, and reports the queue to billing in the
 * background. Guarantees: docs/metering.md.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import type { SidecarError } from "../errors.ts";
import type { GenerationOutcome } from "../gateway/generation.ts";
import type { Logger } from "../log/logger.ts";
import type { SidecarMetrics } from "../metrics/registry.ts";
import { type Clock, realClock } from "../util/clock.ts";
import { Admission } from "./admission.ts";
import { Checkpointer, type LiveGenerations } from "./checkpoint.ts";
import { type QueueOptions, UsageQueue } from "./queue.ts";
import { usageRecord } from "./record.ts";
import { BillingReporter } from "./reporter.ts";

/** The metering side of a running sidecar. */
export interface Meter {
  /**
   * Records a finished generation; resolves once it is durable. Never
   * rejects: a record that cannot be committed is logged in full (so it
   * can be billed by hand) and counted in
   * `sidecar_usage_record_failures_total`.
   */
  record(outcome: GenerationOutcome): Promise<void> | void;
  /** Null if a new generation may start; otherwise the refusal. */
  admit(): SidecarError | null;
  /**
   * True while new generations are refused: the queue is full, or records
   * cannot be committed. Exactly when `admit()` refuses; free of side
   * effects (readiness reads it on every probe and poll).
   */
  readonly refusing: boolean;
  /** Stops checkpoints and sending, one last send, closes the queue: all within `flushTimeoutMs`. */
  shutdown(flushTimeoutMs: number): Promise<void>;
}

/** What {@link startMeter} needs besides the configuration. */
export interface MeterDeps {
  /** The generations in flight, for checkpoints; none are taken without it. */
  live?: LiveGenerations;
  /** Timers; the process clock by default. */
  clock?: Clock;
  /** Passed to the usage queue (tests tune its retries and limits). */
  queue?: Omit<QueueOptions, "recoverInflight" | "clock">;
}

/** The instance name written into records: configured, or the host name. */
export function instanceName(config: Config): string {
  if (config.metering.instanceId) return config.metering.instanceId;
  try {
    return Deno.hostname();
  } catch {
    return "unknown";
  }
}

/** A meter that records nothing (`metering.mode = "off"`). */
export const OFF_METER: Meter = {
  record: () => {},
  admit: () => null,
  refusing: false,
  shutdown: () => Promise.resolve(),
};

/** Opens the usage queue, recovers checkpoints, and starts reporting. */
export async function startMeter(
  config: Config,
  metrics: SidecarMetrics,
  log: Logger,
  deps: MeterDeps = {},
): Promise<Meter> {
  const m = config.metering;
  if (m.mode === "off") {
    log.warn("metering is off: no usage records are kept or sent");
    return OFF_METER;
  }

  const clock = deps.clock ?? realClock;
  const queue = await UsageQueue.open(m.usageDbPath, {
    ...deps.queue,
    clock,
  });
  const instance = instanceName(config);
  log.info("usage queue opened", {
    path: m.usageDbPath,
    pending: queue.depth,
    set_aside: queue.asideCount,
    recovered_interrupted: queue.recovered,
    billing_endpoint: m.billingEndpoint ?? "(none: records are kept)",
  });
  if (queue.unrecovered > 0) {
    log.warn(
      "in-flight checkpoints could not be turned into records; they stay, and the next start tries again",
      { path: m.usageDbPath, checkpoints: queue.unrecovered },
    );
  }
  if (!m.billingEndpoint) {
    log.warn(
      "no billing endpoint: usage records are kept until exported with --drain-usage",
      { offline_queue_size: m.offlineQueueSize },
    );
  }

  const reporter = m.billingEndpoint
    ? new BillingReporter({
      endpoint: m.billingEndpoint,
      format: m.format,
      instance,
      batchIntervalMs: m.batchIntervalMs,
      batchMaxRecords: m.batchMaxRecords,
      requestTimeoutMs: m.requestTimeoutMs,
      queue,
      logger: log,
      clock,
      onSent: (n) => metrics.usageSent.inc(n),
      onFailure: (kind) => metrics.usageSendFailures.inc({ kind }),
      onSetAside: (n) => metrics.usageSetAside.inc(n),
    })
    : null;
  reporter?.start();

  const checkpointer = deps.live
    ? new Checkpointer({
      queue,
      live: deps.live,
      instance,
      intervalMs: m.checkpointIntervalMs,
      logger: log,
      clock,
    })
    : null;
  checkpointer?.start();

  metrics.gaugeFrom(
    "sidecar_usage_queue_depth",
    "Usage records waiting for the billing endpoint.",
    () => queue.depth,
  );
  metrics.gaugeFrom(
    "sidecar_usage_queue_set_aside",
    "Usage records set aside after a refusal.",
    () => queue.asideCount,
  );
  let lastAgeS = 0;
  metrics.gaugeFrom(
    "sidecar_usage_queue_oldest_age_seconds",
    "Age of the oldest usage record waiting for the billing endpoint, from its generation's start (0 when none).",
    async () => {
      // One failing gauge would fail the whole scrape: a queue that cannot
      // be read (closed at shutdown, a KV error) keeps the last age.
      try {
        const oldest = queue.depth > 0 ? await queue.oldestMs() : null;
        lastAgeS = oldest === null
          ? 0
          : Math.max(0, (Date.now() - oldest) / 1000);
      } catch (err) {
        log.warn("usage queue age could not be read", { error: err });
      }
      return lastAgeS;
    },
  );

  // Generations in flight still record when they end, so the queue can
  // exceed the bound by at most the number of generations in flight.
  const admission = new Admission({
    queue,
    offlineQueueSize: m.offlineQueueSize,
    batchIntervalMs: m.batchIntervalMs,
    usageDbPath: m.usageDbPath,
    logger: log,
    clock,
  });

  return {
    get refusing() {
      return admission.refusing;
    },
    async record(outcome) {
      const record = usageRecord(outcome, instance);
      try {
        await queue.append(record);
      } catch (err) {
        metrics.usageRecordFailures.inc();
        log.error(
          "usage record could not be committed; bill it by hand from this line",
          { record, error: err },
        );
        return;
      }
      metrics.usageRecorded.inc();
      admission.queueChanged();
      if (queue.depth >= m.batchMaxRecords) reporter?.nudge();
    },
    admit: () => admission.admit(),
    async shutdown(flushTimeoutMs) {
      // One deadline for all of it, so the shutdown fits the pod's grace.
      const until = clock.now() + flushTimeoutMs;
      await admission.stop(flushTimeoutMs);
      await checkpointer?.stop();
      if (reporter) {
        await reporter.stop();
        const left = await reporter.flush(Math.max(0, until - clock.now()));
        log.info("usage flushed", { pending: left });
      }
      await queue.close();
    },
  };
}
