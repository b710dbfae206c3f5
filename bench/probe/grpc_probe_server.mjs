// What the probe servers (grpc_ceiling.mjs, grpc_relay.mjs) share: the
// Sidecar service loaded from the repository's proto, and serving it on a
// loopback port the way the benchmark expects: "listening PORT" on stdout
// once bound, a clean stop on SIGTERM or SIGINT. It runs unchanged under
// Deno and Node.js, like the probes themselves.

import * as grpc from "@grpc/grpc-js";
import * as loader from "@grpc/proto-loader";
import process from "node:process";

/** The Sidecar service definition from `PROTO_DIR/cy/sidecar/v1/sidecar.proto`. */
export function sidecarService(protoDir) {
  const def = loader.loadSync(`${protoDir}/cy/sidecar/v1/sidecar.proto`, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).cy.sidecar.v1.Sidecar.service;
}

/**
 * Binds `server` to 127.0.0.1:`port` (0 picks one), prints the bound port,
 * and shuts the server down on SIGTERM or SIGINT. Exits the process with 1
 * when the port cannot be bound.
 */
export function serveOnLoopback(server, port) {
  server.bindAsync(
    `127.0.0.1:${port}`,
    grpc.ServerCredentials.createInsecure(),
    (err, bound) => {
      if (err) {
        console.error(`bind failed: ${err.message}`);
        process.exit(1);
      }
      console.log(`listening ${bound}`);
    },
  );
  for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => server.tryShutdown(() => process.exit(0)));
  }
}
