/**
 * The sidecar's Prometheus metrics, on a registry of their own. Names and
 * labels follow the product design; labels only ever carry values from
 * small fixed sets, except `session_id` on the token counter (see
 * `session_series.ts` for how its cardinality is bounded).
 *
 * @module
 */

import client from "prom-client";
import { STATUS_LABELS, type StatusLabel } from "../worker/state.ts";

// Request durations span sub-second failures to multi-minute generations.
const DURATION_BUCKETS = [
  0.005,
  0.025,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300,
  600,
];

// Time to first token is dominated by the model's prefill: tens of ms to
// tens of seconds under load. Fail-fast answers land in the lowest bucket.
const TTFT_BUCKETS = [
  0.001,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];

/** All metrics of one sidecar. */
export class SidecarMetrics {
  readonly registry: client.Registry;
  readonly tokensProcessed: client.Counter<"session_id" | "model_id">;
  readonly workerStatus: client.Gauge<"status">;
  readonly requests: client.Counter<"rpc" | "code">;
  readonly requestDuration: client.Histogram<"rpc">;
  readonly timeToFirstToken: client.Histogram<"model_id">;
  readonly workerConnectionErrors: client.Counter<"kind">;
  readonly gatewaySendErrors: client.Counter<"kind">;
  readonly usageMismatches: client.Counter<"model_id">;
  readonly usageRecorded: client.Counter;
  readonly usageSent: client.Counter;
  readonly usageSendFailures: client.Counter<"kind">;
  readonly usageSetAside: client.Counter;
  readonly usageRecordFailures: client.Counter;

  constructor() {
    const registry = new client.Registry();
    this.registry = registry;
    const registers = [registry];

    this.tokensProcessed = new client.Counter({
      name: "sidecar_tokens_processed_total",
      help: "Completion tokens delivered to the gateway.",
      labelNames: ["session_id", "model_id"] as const,
      registers,
    });
    this.workerStatus = new client.Gauge({
      name: "sidecar_worker_connection_status",
      // The connection only: it stays "connected" while a shutdown drains
      // or the usage queue is full. Readiness is sidecar_ready.
      help:
        "1 for the worker connection's current status, 0 for the others (the connection, not readiness: see sidecar_ready).",
      labelNames: ["status"] as const,
      registers,
    });
    this.requests = new client.Counter({
      name: "sidecar_requests_total",
      help: "Generations finished, by gateway RPC and gRPC status code name.",
      labelNames: ["rpc", "code"] as const,
      registers,
    });
    this.requestDuration = new client.Histogram({
      name: "sidecar_request_duration_seconds",
      help: "Time from a generation's arrival to its end.",
      labelNames: ["rpc"] as const,
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.timeToFirstToken = new client.Histogram({
      name: "sidecar_time_to_first_token_seconds",
      help:
        "Time from a generation's arrival to its first token on the gateway stream.",
      labelNames: ["model_id"] as const,
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.workerConnectionErrors = new client.Counter({
      name: "sidecar_worker_connection_errors_total",
      help:
        "Worker connection failures, by kind (refused, handshake, protocol, eof, io, heartbeat).",
      labelNames: ["kind"] as const,
      registers,
    });
    this.gatewaySendErrors = new client.Counter({
      name: "sidecar_gateway_send_errors_total",
      help: "Events that could not be delivered to the gateway, by kind.",
      labelNames: ["kind"] as const,
      registers,
    });
    this.usageMismatches = new client.Counter({
      name: "sidecar_usage_mismatch_total",
      help:
        "Generations where the worker's completion-token count differed from what the sidecar delivered.",
      labelNames: ["model_id"] as const,
      registers,
    });

    this.usageRecorded = new client.Counter({
      name: "sidecar_usage_records_total",
      help: "Usage records committed to the durable usage queue.",
      registers,
    });
    this.usageSent = new client.Counter({
      name: "sidecar_usage_records_sent_total",
      help: "Usage records the billing endpoint acknowledged.",
      registers,
    });
    this.usageSendFailures = new client.Counter({
      name: "sidecar_usage_send_failures_total",
      help:
        "Failed usage batch sends, by kind (network, timeout, http_4xx, http_5xx, http_429, http_other; queue: the usage database failed).",
      labelNames: ["kind"] as const,
      registers,
    });
    this.usageSetAside = new client.Counter({
      name: "sidecar_usage_records_set_aside_total",
      help: "Usage records the billing endpoint refused for good, moved aside.",
      registers,
    });

    this.usageRecordFailures = new client.Counter({
      name: "sidecar_usage_record_failures_total",
      help:
        "Usage records that could not be written to the usage queue (logged in full).",
      registers,
    });

    this.setWorkerStatus("disconnected");
  }

  /** Sets the status gauge: 1 for `current`, 0 for every other value. */
  setWorkerStatus(current: StatusLabel): void {
    for (const s of STATUS_LABELS) {
      this.workerStatus.set({ status: s }, s === current ? 1 : 0);
    }
  }

  /** Registers a gauge whose value is read at scrape time. */
  gaugeFrom(
    name: string,
    help: string,
    read: () => number | Promise<number>,
  ): void {
    new client.Gauge({
      name,
      help,
      registers: [this.registry],
      async collect() {
        this.set(await read());
      },
    });
  }

  /** The exposition text. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** The exposition content type. */
  get contentType(): string {
    return this.registry.contentType;
  }
}
