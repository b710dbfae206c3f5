/**
 * The gRPC service definitions, built from the embedded .proto sources.
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import { fromJSON, type Options } from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { serializeEvent } from "./event_codec.ts";
import { HEALTH_PROTO, SIDECAR_PROTO } from "./proto_source.ts";

// Field names stay as written in the .proto (snake_case), 64-bit integers
// arrive as strings (validated before use), enums as their names, and
// absent fields as their defaults so handlers need no undefined checks.
const LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

function load(source: string): grpc.GrpcObject {
  const root = protobuf.parse(source, { keepCase: true }).root;
  return grpc.loadPackageDefinition(fromJSON(root.toJSON(), LOADER_OPTIONS));
}

function lookup(
  pkg: grpc.GrpcObject,
  path: string,
): grpc.ServiceClientConstructor {
  let node: unknown = pkg;
  for (const part of path.split(".")) {
    node = (node as Record<string, unknown>)[part];
  }
  return node as grpc.ServiceClientConstructor;
}

const sidecarPkg = load(SIDECAR_PROTO);
const healthPkg = load(HEALTH_PROTO);

/** Client constructor of `cy.sidecar.v1.Sidecar`, for tests and tools. */
export const SidecarClient: grpc.ServiceClientConstructor = lookup(
  sidecarPkg,
  "cy.sidecar.v1.Sidecar",
);

/** Client constructor of `grpc.health.v1.Health`. */
export const HealthClient: grpc.ServiceClientConstructor = lookup(
  healthPkg,
  "grpc.health.v1.Health",
);

/**
 * `cy.sidecar.v1.Sidecar`, as the server registers it: the streaming
 * methods write their events with the hand encoder (event_codec.ts), also
 * where an event goes through grpc-js's own writer.
 */
export const SIDECAR_SERVICE: grpc.ServiceDefinition = withEventSerializer(
  SidecarClient.service,
);

function withEventSerializer(
  service: grpc.ServiceDefinition,
): grpc.ServiceDefinition {
  return Object.fromEntries(
    Object.entries(service).map(([name, method]) => [
      name,
      name === "Generate" || name === "Session"
        ? { ...method, responseSerialize: serializeEvent }
        : method,
    ]),
  );
}

/** `grpc.health.v1.Health`. */
export const HEALTH_SERVICE: grpc.ServiceDefinition = HealthClient.service;
