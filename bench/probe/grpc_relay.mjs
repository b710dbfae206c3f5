// The floor of a relay on this runtime: a bare @grpc/grpc-js server that
// carries each Generate call to the worker over the worker protocol
// (version 2, as the sidecar speaks it: docs/worker-protocol.md) and
// writes every chunk to the call as it arrives. It does what the
// sidecar's data path must do and nothing more: no validation, metering,
// metrics, heartbeats or reconnects. Scenario 1 reads its added latency
// beside the sidecar's, so the share of the runtime and grpc-js can be
// told apart from the sidecar's own.
//
// On Deno it reads the worker's socket with Deno.connect, as the sidecar
// does; on Node.js with node:net.
//
// With `cork`, the gateway connection is corked while the chunks of one
// read from the worker are written and uncorked in a nextTick queued after
// them, so that they leave in one socket write, as the sidecar's delivery
// ledger does (src/gateway/stream_transport.ts); `done` events, which
// carry no measured token, are written as the plain relay writes them.
// Without it, Deno's node:http2 sends every message with a syscall of its
// own.
//
//   grpc_relay.mjs PROTO_DIR PORT WORKER_SOCKET [cork]
//
// Prints "listening PORT" once bound and the worker has welcomed it; stops
// on SIGTERM or SIGINT.

import * as grpc from "@grpc/grpc-js";
import process from "node:process";
import { serveOnLoopback, sidecarService } from "./grpc_probe_server.mjs";

const [protoDir, portArg, socketPath, mode] = process.argv.slice(2);
if (!protoDir || !portArg || !socketPath || (mode && mode !== "cork")) {
  console.error("usage: grpc_relay.mjs PROTO_DIR PORT WORKER_SOCKET [cork]");
  process.exit(2);
}
const CORK = mode === "cork";

// The sidecar's defaults: 32 chunks of credit, given back in halves.
const CREDIT = 32;
const GRANT = CREDIT / 2;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A byte stream to the worker: write(bytes) and an onData callback. */
async function connectWorker(path, onData) {
  if (globalThis.Deno) {
    const conn = await Deno.connect({ transport: "unix", path });
    (async () => {
      const buf = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        onData(buf.subarray(0, n));
      }
      console.error("worker closed the socket");
      process.exit(1);
    })();
    let writing = Promise.resolve();
    return (bytes) => {
      writing = writing.then(async () => {
        let off = 0;
        while (off < bytes.length) off += await conn.write(bytes.subarray(off));
      });
    };
  }
  const net = await import("node:net");
  const sock = net.createConnection(path);
  await new Promise((resolve, reject) => {
    sock.once("connect", resolve);
    sock.once("error", reject);
  });
  sock.on(
    "data",
    (b) => onData(new Uint8Array(b.buffer, b.byteOffset, b.length)),
  );
  sock.on("close", () => {
    console.error("worker closed the socket");
    process.exit(1);
  });
  return (bytes) => sock.write(bytes);
}

function frame(obj) {
  const payload = encoder.encode(JSON.stringify(obj));
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length);
  out.set(payload, 4);
  return out;
}

// Frames off the socket, reassembled from whatever the reads cut.
let pending = new Uint8Array(0);
function* frames(bytes) {
  let data = bytes;
  if (pending.length) {
    data = new Uint8Array(pending.length + bytes.length);
    data.set(pending);
    data.set(bytes, pending.length);
  }
  let off = 0;
  while (data.length - off >= 4) {
    const n = new DataView(data.buffer, data.byteOffset + off).getUint32(0);
    if (data.length - off - 4 < n) break;
    yield JSON.parse(decoder.decode(data.subarray(off + 4, off + 4 + n)));
    off += 4 + n;
  }
  pending = data.slice(off);
}

const calls = new Map(); // worker id -> { call, owed, requestId, socket }

// With `cork`: the gateway sockets corked during the current read.
const corked = new Set();

/** The socket under a grpc-js server call (grpc-js 1.14's layout), or null. */
function socketOf(call) {
  let c = call.call;
  for (let i = 0; c && i < 8 && !("stream" in c); i++) c = c.nextCall;
  return c?.stream?.session?.socket ?? null;
}

/** Writes one chunk to its call, and gives credit back in halves. */
function forward(chunk) {
  const c = calls.get(chunk.id);
  if (!c) return;
  if (CORK) {
    c.socket ??= socketOf(c.call);
    if (c.socket && !corked.has(c.socket)) {
      c.socket.cork();
      corked.add(c.socket);
    }
  }
  c.call.write({
    request_id: c.requestId,
    chunk: { text: chunk.text, token_ids: chunk.token_ids },
  });
  if (++c.owed >= GRANT) {
    send(frame({ type: "credit", id: chunk.id, chunks: c.owed }));
    c.owed = 0;
  }
}
let welcomed;
const welcome = new Promise((resolve) => (welcomed = resolve));

const send = await connectWorker(socketPath, (bytes) => {
  for (const f of frames(bytes)) {
    if (f.type === "welcome") {
      welcomed();
      continue;
    }
    if (f.type === "chunks") {
      for (const item of f.items) forward(item);
      continue;
    }
    if (f.type === "chunk") {
      forward(f);
      continue;
    }
    const c = calls.get(f.id);
    if (!c) continue;
    if (f.type === "done") {
      calls.delete(f.id);
      c.call.write({
        request_id: c.requestId,
        done: {
          finish_reason: f.finish_reason ?? "length",
          usage: {
            prompt_tokens: f.usage?.prompt_tokens ?? 0,
            completion_tokens: f.usage?.completion_tokens ?? 0,
          },
          model_id: f.model_id ?? "",
        },
      });
      c.call.end();
    } else if (f.type === "error") {
      calls.delete(f.id);
      c.call.destroy(
        Object.assign(new Error(f.message ?? "worker error"), {
          code: grpc.status.INTERNAL,
        }),
      );
    }
  }
  // node:http2 serializes the frames written above in nextTicks of its
  // own; an uncork queued after them lets those land in the cork first.
  if (corked.size > 0) {
    const sockets = [...corked];
    corked.clear();
    process.nextTick(() => {
      for (const sock of sockets) sock.uncork();
    });
  }
});
send(frame({
  type: "hello",
  versions: [2],
  sidecar: "cy-bench-relay/1",
  max_frame_bytes: 1 << 20,
  heartbeat_interval_ms: 0,
}));
await welcome;

const service = sidecarService(protoDir);

let seq = 0;
const server = new grpc.Server({ "grpc.max_concurrent_streams": 1024 });
server.addService(service, {
  Generate(call) {
    const id = `r${++seq}`;
    const req = call.request;
    calls.set(id, { call, owed: 0, requestId: req.request_id });
    send(frame({
      type: "generate",
      id,
      session_id: req.session_id ?? "",
      model_id: "",
      prompt: req.prompt ?? "",
      sampling: { max_tokens: req.sampling?.max_tokens || 0 },
      credit: CREDIT,
    }));
    call.on("cancelled", () => {
      if (calls.delete(id)) send(frame({ type: "cancel", id }));
    });
  },
  Session(call) {
    call.end();
  },
  GetStatus(_call, callback) {
    callback(null, { state: "CONNECTED", model_id: "relay" });
  },
});

serveOnLoopback(server, portArg);
