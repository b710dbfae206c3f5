/**
 * The sidecar with a minimal durable meter in place of its own: the floor
 * of what durable metering costs on Deno KV, for scenario 6.
 *
 * The floor meter does only what durable metering cannot do without:
 *
 * - builds each generation's usage record (src/metering/record.ts) and
 *   resolves `record()` only once the record is committed to Deno KV;
 * - commits the records that arrived while the previous commit ran
 *   together, as chunk values of at most {@link RECORDS_PER_VALUE} records
 *   under the usage queue's own keys, in one atomic operation;
 * - every `batch_interval_ms` (at once while `batch_max_records` wait)
 *   lists up to `batch_max_records` records, posts them as the sidecar's
 *   JSON batch (src/metering/format.ts), and deletes their chunks once the
 *   endpoint answers 2xx.
 *
 * It leaves out what the sidecar's meter adds for its guarantees: sizing
 * records against Deno KV's limits, the check that a chunk's key is free,
 * retries, checkpoints of generations in flight, the reporter's splitting
 * of refused batches, versionstamp checks on removal, admission control
 * and the usage metrics. It is not a meter to run: a failed commit or post
 * is logged and dropped.
 *
 *   deno run <the sidecar's flags for sidecar.toml> \
 *     bench/probe/floor_meter.ts --config sidecar.toml
 *
 * Started by scenario 6 of `bench/run.ts` (`lib/stack.ts`, metering mode
 * "floor") with the production permission set and V8 flags of the config.
 *
 * @module
 */

import { type Config, loadConfig } from "../../src/config/mod.ts";
import { waitForShutdownSignal } from "../../src/lifecycle/signals.ts";
import { createLogger, type Logger } from "../../src/log/logger.ts";
import { encodeBatch } from "../../src/metering/format.ts";
import { instanceName, type Meter } from "../../src/metering/mod.ts";
import { PENDING } from "../../src/metering/queue_keys.ts";
import { type UsageRecord, usageRecord } from "../../src/metering/record.ts";
import { startSidecar } from "../../src/sidecar.ts";
import { hostPort } from "../../src/util/host_port.ts";

/** Records per chunk value: far under Deno KV's 64 KiB at bench sizes. */
const RECORDS_PER_VALUE = 100;

interface Waiting {
  record: UsageRecord;
  resolve: () => void;
}

/** The floor meter (module doc). */
export async function startFloorMeter(
  config: Config,
  _metrics: unknown,
  log: Logger,
): Promise<Meter> {
  const m = config.metering;
  const endpoint = m.billingEndpoint;
  if (m.mode !== "durable" || !endpoint) {
    throw new Error("the floor meter needs durable metering and an endpoint");
  }
  await Deno.mkdir(m.usageDbPath.slice(0, m.usageDbPath.lastIndexOf("/")), {
    recursive: true,
  });
  const kv = await Deno.openKv(m.usageDbPath);
  const instance = instanceName(config);

  let waiting: Waiting[] = [];
  // The commit loop while it runs.
  let committing: Promise<void> | null = null;
  let pending = 0;
  let stopped = false;
  let wake: (() => void) | null = null;

  async function commitLoop(): Promise<void> {
    while (waiting.length > 0) {
      const batch = waiting;
      waiting = [];
      const op = kv.atomic();
      for (let i = 0; i < batch.length; i += RECORDS_PER_VALUE) {
        const records = batch.slice(i, i + RECORDS_PER_VALUE).map((w) =>
          w.record
        );
        op.set([...PENDING, records[0].id], { v: 1, records });
      }
      try {
        await op.commit();
        pending += batch.length;
      } catch (err) {
        log.error("floor meter: commit failed", { error: err });
      }
      for (const w of batch) w.resolve();
      if (pending >= m.batchMaxRecords) wake?.();
    }
    committing = null;
  }

  async function report(): Promise<void> {
    while (!stopped) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(
          done,
          pending >= m.batchMaxRecords ? 0 : m.batchIntervalMs,
        );
        function done() {
          clearTimeout(timer);
          wake = null;
          resolve();
        }
        wake = done;
      });
      if (stopped) break;
      const keys: Deno.KvKey[] = [];
      const records: UsageRecord[] = [];
      const list = kv.list<{ records: UsageRecord[] }>({
        prefix: [...PENDING],
      });
      for await (const e of list) {
        keys.push(e.key);
        records.push(...e.value.records);
        if (records.length >= m.batchMaxRecords) break;
      }
      if (records.length === 0) continue;
      try {
        const { contentType, body } = encodeBatch(m.format, records, instance);
        const res = await fetch(endpoint!, {
          method: "POST",
          headers: { "content-type": contentType },
          body,
        });
        await res.body?.cancel();
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const op = kv.atomic();
        for (const key of keys) op.delete(key);
        await op.commit();
        pending -= records.length;
      } catch (err) {
        log.error("floor meter: send failed", { error: err });
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }
  const reporter = report();

  return {
    record(outcome) {
      const record = usageRecord(outcome, instance);
      return new Promise<void>((resolve) => {
        waiting.push({ record, resolve });
        committing ??= commitLoop();
      });
    },
    admit: () => null,
    refusing: false,
    async shutdown() {
      stopped = true;
      wake?.();
      await reporter;
      await committing;
      kv.close();
    },
  };
}

if (import.meta.main) {
  const args = Deno.args;
  const configPath = args.includes("--config")
    ? args[args.indexOf("--config") + 1]
    : undefined;
  const config = await loadConfig(configPath);
  const log = createLogger({
    level: config.observability.logLevel,
    format: config.observability.logFormat,
  });
  const sidecar = await startSidecar(config, log, {
    startMeter: startFloorMeter,
  });
  log.info("cy-sidecar started", {
    meter: "floor",
    grpc_addr: hostPort(config.server.bindHost, sidecar.grpcPort),
    metrics_addr: hostPort(
      config.observability.metricsHost,
      sidecar.metricsPort,
    ),
  });
  await waitForShutdownSignal(log);
  await sidecar.shutdown(config.server.shutdownGraceMs);
  Deno.exit(0);
}
