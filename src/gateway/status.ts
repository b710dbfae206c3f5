/**
 * `Sidecar.GetStatus` and the standard `grpc.health.v1.Health` service.
 * Health is SERVING only while the worker is connected and ready; the empty
 * service name and `cy.sidecar.v1.Sidecar` report the same status.
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import { SIDECAR_VERSION } from "../version.ts";
import type { WorkerClient } from "../worker/client.ts";
import type { WorkerStatusPb } from "./types.ts";

/** Service names the health service answers for. */
export const HEALTH_SERVICE_NAMES = ["", "cy.sidecar.v1.Sidecar"];

type ServingStatus = "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/** The worker status message for a state. */
export function workerStatus(worker: WorkerClient): WorkerStatusPb {
  const s = worker.state;
  const base: WorkerStatusPb = {
    state: "DISCONNECTED",
    model_id: "",
    protocol_version: 0,
    in_flight: worker.inFlight,
    max_concurrency: 0,
    eta_ms: 0,
    detail: "",
    sidecar_version: SIDECAR_VERSION,
  };
  if ("info" in s) {
    base.model_id = s.info.modelId;
    base.protocol_version = s.info.protocolVersion;
    base.max_concurrency = s.info.maxConcurrency;
  }
  switch (s.state) {
    case "ready":
      return { ...base, state: "CONNECTED" };
    case "reloading":
      return {
        ...base,
        state: "RELOADING",
        eta_ms: Math.max(
          0,
          Math.round(s.etaMs - (performance.now() - s.since)),
        ),
        detail: s.message,
      };
    case "draining":
      return { ...base, state: "DRAINING" };
    case "disconnected":
      return { ...base, detail: s.lastError };
    case "connecting":
      return { ...base, detail: "connecting" };
    case "stopped":
      return { ...base, detail: "sidecar is shutting down" };
  }
}

/** SERVING while the worker is ready and the sidecar takes new work. */
export function servingStatus(worker: WorkerClient): ServingStatus {
  return worker.accepting ? "SERVING" : "NOT_SERVING";
}

/** Handlers of `Sidecar.GetStatus`. */
export function getStatusHandler(
  worker: WorkerClient,
): grpc.handleUnaryCall<unknown, WorkerStatusPb> {
  return (_call, callback) => callback(null, workerStatus(worker));
}

/** Handlers of `grpc.health.v1.Health`. */
export function healthHandlers(
  worker: WorkerClient,
): grpc.UntypedServiceImplementation {
  const watchers = new Set<(s: ServingStatus) => void>();
  let last = servingStatus(worker);
  worker.onStateChange(() => {
    const next = servingStatus(worker);
    if (next === last) return;
    last = next;
    for (const w of watchers) w(next);
  });

  const known = (service: string) => HEALTH_SERVICE_NAMES.includes(service);

  return {
    Check(
      call: grpc.ServerUnaryCall<{ service: string }, unknown>,
      callback: grpc.sendUnaryData<unknown>,
    ) {
      if (!known(call.request.service)) {
        callback({
          code: grpc.status.NOT_FOUND,
          details: `unknown service ${call.request.service}`,
        });
        return;
      }
      callback(null, { status: servingStatus(worker) });
    },
    Watch(call: grpc.ServerWritableStream<{ service: string }, unknown>) {
      if (!known(call.request.service)) {
        call.write({ status: "SERVICE_UNKNOWN" });
        return; // stays open, as the protocol asks: the service may appear
      }
      const send = (status: ServingStatus) => call.write({ status });
      send(servingStatus(worker));
      watchers.add(send);
      call.on("cancelled", () => watchers.delete(send));
      call.on("close", () => watchers.delete(send));
    },
  };
}
