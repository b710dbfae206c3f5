/**
 * The gateway-facing gRPC server: plain HTTP/2 (h2c) with the Sidecar and
 * Health services.
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import { hostPort } from "../util/host_port.ts";
import type { Readiness } from "../lifecycle/readiness.ts";
import { generateHandler } from "./generate.ts";
import type { GenerationDeps } from "./generation.ts";
import { HEALTH_SERVICE, SIDECAR_SERVICE } from "./proto.ts";
import { sessionHandler } from "./session.ts";
import { getStatusHandler, healthHandlers } from "./status.ts";

/** Options of {@link startGatewayServer}. */
export interface GatewayServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  maxConcurrentStreams: number;
  maxRequestBytes: number;
  /** Decides gRPC health and the `GetStatus` detail. */
  readiness: Readiness;
}

/** A bound server. */
export interface GatewayServer {
  server: grpc.Server;
  /** The bound port (useful when 0 was asked for). */
  port: number;
}

// Keepalive pings from the sidecar find gateways that vanished without
// closing their TCP connection (node crash, network partition) within
// about 30 s, and free their streams; clients may ping every 10 s.
const KEEPALIVE_TIME_MS = 20_000;
const KEEPALIVE_TIMEOUT_MS = 10_000;
const MIN_CLIENT_PING_INTERVAL_MS = 10_000;

/** Builds and binds the server. */
export async function startGatewayServer(
  deps: GenerationDeps,
  options: GatewayServerOptions,
): Promise<GatewayServer> {
  const server = new grpc.Server({
    "grpc.max_concurrent_streams": options.maxConcurrentStreams,
    "grpc.max_receive_message_length": options.maxRequestBytes,
    "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
    "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
    "grpc.http2.min_ping_interval_without_data_ms": MIN_CLIENT_PING_INTERVAL_MS,
    "grpc.keepalive_permit_without_calls": 1,
  });
  server.addService(SIDECAR_SERVICE, {
    Generate: generateHandler(deps),
    Session: sessionHandler(deps),
    GetStatus: getStatusHandler(deps.worker, options.readiness),
  });
  server.addService(HEALTH_SERVICE, healthHandlers(options.readiness));

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(
      hostPort(options.host, options.port),
      grpc.ServerCredentials.createInsecure(),
      (err, port) => {
        if (err) reject(err);
        else resolve(port);
      },
    );
  });
  return { server, port };
}
