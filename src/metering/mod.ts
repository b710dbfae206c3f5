/**
 * The meter: turns each generation's outcome into a usage record, commits
 * it durably before the gateway sees the generation end, and reports the
 * queue to billing in the background. Guarantees: docs/metering.md.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import { retryHint, SidecarError } from "../errors.ts";
import type { GenerationOutcome } from "../gateway/generation.ts";
import type { Logger } from "../log/logger.ts";
import type { SidecarMetrics } from "../metrics/registry.ts";
import { UsageQueue } from "./queue.ts";
import { usageRecord } from "./record.ts";
import { BillingReporter } from "./reporter.ts";

/** The metering side of a running sidecar. */
export interface Meter {
  /** Records a finished generation; resolves once it is durable. */
  record(outcome: GenerationOutcome): Promise<void> | void;
  /** Null if a new generation may start; the refusal when the queue is full. */
  admit(): SidecarError | null;
  /** True while the queue is full (readiness reports it). */
  readonly full: boolean;
  /** One last send within `flushTimeoutMs`, then closes the queue. */
  shutdown(flushTimeoutMs: number): Promise<void>;
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
  full: false,
  shutdown: () => Promise.resolve(),
};

/** Opens the usage queue and starts reporting, as configured. */
export async function startMeter(
  config: Config,
  metrics: SidecarMetrics,
  log: Logger,
): Promise<Meter> {
  const m = config.metering;
  if (m.mode === "off") {
    log.warn("metering is off: no usage records are kept or sent");
    return OFF_METER;
  }

  const queue = await UsageQueue.open(m.usageDbPath);
  const instance = instanceName(config);
  log.info("usage queue opened", {
    path: m.usageDbPath,
    pending: queue.depth,
    set_aside: queue.asideCount,
    billing_endpoint: m.billingEndpoint ?? "(none: records are kept)",
  });

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
      onSent: (n) => metrics.usageSent.inc(n),
      onFailure: (kind) => metrics.usageSendFailures.inc({ kind }),
      onSetAside: (n) => metrics.usageSetAside.inc(n),
    })
    : null;
  reporter?.start();

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
  metrics.gaugeFrom(
    "sidecar_usage_queue_oldest_age_seconds",
    "Age of the oldest usage record waiting for the billing endpoint (0 when none).",
    async () => {
      const oldest = queue.depth > 0 ? await queue.oldestMs() : null;
      return oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000);
    },
  );

  // Generations in flight still record when they end, so the queue can
  // exceed the bound by at most the number of generations in flight.
  const isFull = () => queue.depth >= m.offlineQueueSize;
  let warnedFull = false;

  return {
    get full() {
      return isFull();
    },
    async record(outcome) {
      await queue.append(usageRecord(outcome, instance));
      metrics.usageRecorded.inc();
      if (queue.depth >= m.batchMaxRecords) reporter?.nudge();
    },
    admit() {
      if (!isFull()) {
        warnedFull = false;
        return null;
      }
      if (!warnedFull) {
        warnedFull = true;
        log.error(
          "usage queue is full; refusing new generations until billing catches up",
          {
            depth: queue.depth,
            offline_queue_size: m.offlineQueueSize,
          },
        );
      }
      const wait = Math.max(m.batchIntervalMs, 1000);
      return new SidecarError(
        "metering_backlog",
        `usage queue is full (${queue.depth} records waiting for billing); please ${
          retryHint(wait)
        }`,
        { retryAfterMs: wait },
      );
    },
    async shutdown(flushTimeoutMs) {
      if (reporter) {
        await reporter.stop();
        const left = await reporter.flush(flushTimeoutMs);
        log.info("usage flushed", { pending: left });
      }
      await queue.close();
    },
  };
}
