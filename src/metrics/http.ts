/**
 * The observability port: Prometheus text on `/metrics`, liveness on
 * `/healthz` (the process answers) and readiness on `/readyz` (the sidecar
 * takes new generations: the decision of `src/lifecycle/readiness.ts`,
 * which gRPC health reports too).
 *
 * @module
 */

import type { Readiness } from "../lifecycle/readiness.ts";
import type { WorkerClient } from "../worker/client.ts";
import type { SidecarMetrics } from "./registry.ts";

/** Options of {@link startMetricsServer}. */
export interface MetricsServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  metrics: SidecarMetrics;
  worker: WorkerClient;
  /** Decides `/readyz` (200 exactly when serving). */
  readiness: Readiness;
}

/** Serves the observability endpoints; returns the server and bound port. */
export function startMetricsServer(
  options: MetricsServerOptions,
): { server: Deno.HttpServer; port: number } {
  const { metrics, worker, readiness } = options;
  let bound = 0;
  const listening = (addr: Deno.NetAddr) => {
    bound = addr.port;
  };
  const server = Deno.serve({
    hostname: options.host,
    port: options.port,
    onListen: listening,
  }, async (req) => {
    const path = new URL(req.url).pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405 });
    }
    switch (path) {
      case "/metrics":
        return new Response(await metrics.render(), {
          headers: { "content-type": metrics.contentType },
        });
      case "/healthz":
        return Response.json({ status: "ok" });
      case "/readyz": {
        const s = worker.state;
        const verdict = readiness.verdict;
        return Response.json(
          {
            ready: verdict.serving,
            reasons: verdict.reasons,
            worker_state: s.state,
            // Named for its commonest cause, kept for readers of this body:
            // true whenever the meter refuses (a full usage queue, or a
            // usage database that cannot be written).
            usage_queue_full: verdict.reasons.includes("metering_refusing"),
            ...("info" in s ? { model_id: s.info.modelId } : {}),
          },
          { status: verdict.serving ? 200 : 503 },
        );
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  });
  return { server, port: bound };
}
