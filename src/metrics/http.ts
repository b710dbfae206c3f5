/**
 * The observability port: Prometheus text on `/metrics`, liveness on
 * `/healthz` (the process answers) and readiness on `/readyz` (the worker
 * is connected and ready, the same story as gRPC health).
 *
 * @module
 */

import type { WorkerClient } from "../worker/client.ts";
import type { SidecarMetrics } from "./registry.ts";

/** Options of {@link startMetricsServer}. */
export interface MetricsServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  metrics: SidecarMetrics;
  worker: WorkerClient;
  /** True once shutdown began: readiness fails so traffic moves away. */
  shuttingDown: () => boolean;
  /** True while the usage queue is full and new generations are refused. */
  meteringFull: () => boolean;
}

/** Serves the observability endpoints; returns the server and bound port. */
export function startMetricsServer(
  options: MetricsServerOptions,
): { server: Deno.HttpServer; port: number } {
  const { metrics, worker } = options;
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
        const usageFull = options.meteringFull();
        const ready = s.state === "ready" && !options.shuttingDown() &&
          !usageFull;
        return Response.json(
          {
            ready,
            worker_state: s.state,
            usage_queue_full: usageFull,
            ...("info" in s ? { model_id: s.info.modelId } : {}),
          },
          { status: ready ? 200 : 503 },
        );
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  });
  return { server, port: bound };
}
