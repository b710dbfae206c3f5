/**
 * The meter: turns each generation's outcome into a usage record, commits
 * it durably before the gateway sees the generation end, checkpoints the
 * generations in flight, and reports the queue to billing in the
 * background. Guarantees: docs/metering.md.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import { retryHint, SidecarError } from "../errors.ts";
import type { GenerationOutcome } from "../gateway/generation.ts";
import type { Logger } from "../log/logger.ts";
import type { SidecarMetrics } from "../metrics/registry.ts";
import { type Clock, realClock } from "../util/clock.ts";
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
   * cannot be committed (readiness reports it).
   */
  readonly full: boolean;
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
  full: false,
  shutdown: () => Promise.resolve(),
};

// While the queue is full, its depth is counted again in the database at
// most this often: an operator's --drain-usage in another process frees
// room the running sidecar would otherwise not see.
const RECOUNT_WHEN_FULL_MS = 1_000;

// Refused while records cannot be committed: the queue probes the
// database about this often, so a retry after this long may succeed.
const RETRY_WHILE_FAILING_MS = 1_000;

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
  metrics.gaugeFrom(
    "sidecar_usage_queue_oldest_age_seconds",
    "Age of the oldest usage record waiting for the billing endpoint, from its generation's start (0 when none).",
    async () => {
      const oldest = queue.depth > 0 ? await queue.oldestMs() : null;
      return oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000);
    },
  );

  // Generations in flight still record when they end, so the queue can
  // exceed the bound by at most the number of generations in flight.
  const isFull = () => queue.depth >= m.offlineQueueSize;
  let warnedFull = false;
  let warnedFailing = false;
  let lastRecount = -Infinity;
  const recountIfFull = () => {
    if (clock.now() - lastRecount < RECOUNT_WHEN_FULL_MS) return;
    lastRecount = clock.now();
    queue.recount().catch((err) =>
      log.warn("cannot count the usage queue", { error: err })
    );
  };

  return {
    get full() {
      if (!isFull()) return queue.failing;
      // Readiness asks this while no generation comes to ask admit().
      recountIfFull();
      return true;
    },
    async record(outcome) {
      checkpointer?.finished(outcome.recordId);
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
      if (queue.depth >= m.batchMaxRecords) reporter?.nudge();
    },
    admit() {
      if (queue.failing) {
        if (!warnedFailing) {
          warnedFailing = true;
          log.error(
            "usage records cannot be committed; refusing new generations until the usage database works",
            { path: m.usageDbPath },
          );
        }
        return new SidecarError(
          "metering_backlog",
          `usage records cannot be written to the usage database; please ${
            retryHint(RETRY_WHILE_FAILING_MS)
          }`,
          { retryAfterMs: RETRY_WHILE_FAILING_MS },
        );
      }
      if (warnedFailing) {
        warnedFailing = false;
        log.info("usage database works again; admitting generations");
      }

      if (!isFull()) {
        warnedFull = false;
        return null;
      }
      recountIfFull();
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
      // One deadline for all of it, so the shutdown fits the pod's grace.
      const until = clock.now() + flushTimeoutMs;
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
