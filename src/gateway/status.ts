/**
 * `Sidecar.GetStatus` and the standard `grpc.health.v1.Health` service.
 * Health is SERVING exactly when {@link Readiness} says the sidecar takes
 * new generations (the same decision `/readyz` reports); the empty service
 * name and `cy.sidecar.v1.Sidecar` report the same status.
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import {
  describeVerdict,
  type Readiness,
  type ServingVerdict,
} from "../lifecycle/readiness.ts";
import { SIDECAR_VERSION } from "../version.ts";
import type { WorkerClient } from "../worker/client.ts";
import type { WorkerStatusPb } from "./types.ts";

/** Service names the health service answers for. */
export const HEALTH_SERVICE_NAMES = ["", "cy.sidecar.v1.Sidecar"];

type ServingStatus = "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/**
 * The worker status message: the worker connection's state, and in
 * `detail` why no new generations are taken while the connection is fine
 * (shutdown begun, usage queue full).
 */
export function workerStatus(
  worker: WorkerClient,
  verdict: ServingVerdict,
): WorkerStatusPb {
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
      return { ...base, state: "CONNECTED", detail: describeVerdict(verdict) };
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

/** The health status for a verdict. */
export function servingStatus(verdict: ServingVerdict): ServingStatus {
  return verdict.serving ? "SERVING" : "NOT_SERVING";
}

/** Handler of `Sidecar.GetStatus`. */
export function getStatusHandler(
  worker: WorkerClient,
  readiness: Readiness,
): grpc.handleUnaryCall<unknown, WorkerStatusPb> {
  return (_call, callback) =>
    callback(null, workerStatus(worker, readiness.verdict));
}

/** Handlers of `grpc.health.v1.Health`, reading `readiness`. */
export function healthHandlers(
  readiness: Readiness,
): grpc.UntypedServiceImplementation {
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
      callback(null, { status: servingStatus(readiness.verdict) });
    },
    Watch(call: grpc.ServerWritableStream<{ service: string }, unknown>) {
      if (!known(call.request.service)) {
        call.write({ status: "SERVICE_UNKNOWN" });
        return; // stays open, as the protocol asks: the service may appear
      }
      // Readiness reports flips of its own last reading; this watcher's
      // first status may already be newer (a meter change not yet polled),
      // so it keeps its own last status and never repeats it.
      let last = servingStatus(readiness.verdict);
      call.write({ status: last });
      const unsubscribe = readiness.onChange((v) => {
        const next = servingStatus(v);
        if (next === last) return;
        last = next;
        call.write({ status: next });
      });
      call.on("cancelled", unsubscribe);
      call.on("close", unsubscribe);
    },
  };
}
