// The ceiling of the gateway side: a bare @grpc/grpc-js server that answers
// Sidecar/Generate with what the sidecar sends for a one-token generation
// (one chunk event, one done event, status OK) and does nothing else: no
// worker, no metering, no metrics, no validation.
//
// Paced generations (see DIRECTIVE) keep streams open for the memory
// scenario's floor.
//
// Load it like the sidecar (`cyload gen`); the requests per second it
// reaches is the most the sidecar could reach on the same runtime. It runs
// unchanged under Deno (`deno run --allow-net --allow-read --allow-env`,
// packages from deno.json) and under Node.js (packages from a node_modules
// beside it), so the runtime's own cost can be told apart.
//
//   grpc_ceiling.mjs PROTO_DIR PORT
//
// Prints "listening PORT" once bound; stops on SIGTERM or SIGINT.

import * as grpc from "@grpc/grpc-js";
import process from "node:process";
import { serveOnLoopback, sidecarService } from "./grpc_probe_server.mjs";

const [protoDir, portArg] = process.argv.slice(2);
if (!protoDir || !portArg) {
  console.error("usage: grpc_ceiling.mjs PROTO_DIR PORT");
  process.exit(2);
}

const service = sidecarService(protoDir);

const server = new grpc.Server({ "grpc.max_concurrent_streams": 1024 });
// A prompt's `[[sim tokens=N ... itl_ms=X]]` with X > 0 streams N tokens X
// ms apart, from one timer per stream: the floor for holding open streams.
const DIRECTIVE = /\[\[sim[^\]]*\btokens=(\d+)[^\]]*\bitl_ms=([\d.]+)/;

function finish(call, id, tokens) {
  call.write({
    request_id: id,
    done: {
      finish_reason: "length",
      usage: { prompt_tokens: 1, completion_tokens: tokens },
      model_id: "ceiling",
    },
  });
  call.end();
}

server.addService(service, {
  Generate(call) {
    const id = call.request.request_id;
    const paced = DIRECTIVE.exec(call.request.prompt ?? "");
    const tokens = paced ? Number(paced[1]) : 1;
    const itlMs = paced ? Number(paced[2]) : 0;
    if (itlMs === 0) {
      call.write({ request_id: id, chunk: { text: "a", token_ids: [1] } });
      finish(call, id, 1);
      return;
    }
    let sent = 0;
    const timer = setInterval(() => {
      call.write({ request_id: id, chunk: { text: " a", token_ids: [sent] } });
      if (++sent === tokens) {
        clearInterval(timer);
        finish(call, id, tokens);
      }
    }, itlMs);
    call.on("cancelled", () => clearInterval(timer));
  },
  Session(call) {
    call.end();
  },
  GetStatus(_call, callback) {
    callback(null, { state: "CONNECTED", model_id: "ceiling" });
  },
});

serveOnLoopback(server, portArg);
