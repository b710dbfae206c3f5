/**
 * A gateway connection made by hand over `node:http2`, for what grpc-js
 * will not do: drop the TCP connection under a call that is still
 * streaming (closing a grpc-js channel leaves its calls running), or send a
 * `grpc-timeout` without a client-side deadline racing the server's.
 */

import http2 from "node:http2";
import protobuf from "protobufjs";
import { SIDECAR_PROTO } from "../../src/gateway/proto_source.ts";

const root = protobuf.parse(SIDECAR_PROTO, { keepCase: true }).root;

/** A call started by hand. */
export interface RawCall {
  /** Resolves when the first response message arrives. */
  firstData: Promise<void>;
  /** Resolves with the call's gRPC status. */
  status: Promise<{ code: number; message: string }>;
}

/** One HTTP/2 connection to the sidecar's gRPC port. */
export class RawGatewayConnection {
  readonly #session: http2.ClientHttp2Session;

  constructor(addr: string) {
    this.#session = http2.connect(`http://${addr}`);
    // The connection is dropped on purpose; its errors are expected.
    this.#session.on("error", () => {});
  }

  /**
   * Starts a call of `method` (`Generate` or `Session`) with the given
   * request messages of `type`. A Generate request stream is ended; a
   * Session's is left open. `headers` go out with the call (for instance
   * `grpc-timeout`).
   */
  startCall(
    method: "Generate" | "Session",
    type: "GenerateRequest" | "SessionRequest",
    messages: Record<string, unknown>[],
    headers: Record<string, string> = {},
  ): RawCall {
    const stream = this.#session.request({
      ":method": "POST",
      ":path": `/cy.sidecar.v1.Sidecar/${method}`,
      "content-type": "application/grpc",
      "te": "trailers",
      ...headers,
    });
    stream.on("error", () => {});
    const codec = root.lookupType(`cy.sidecar.v1.${type}`);
    for (const message of messages) {
      const body = codec.encode(codec.fromObject(message)).finish();
      const frame = new Uint8Array(5 + body.length);
      new DataView(frame.buffer).setUint32(1, body.length);
      frame.set(body, 5);
      stream.write(frame);
    }
    if (method === "Generate") stream.end();

    const closed = () => new Error(`${method} call closed`);
    const call: RawCall = {
      firstData: new Promise((resolve, reject) => {
        stream.once("data", () => resolve());
        stream.once("close", () => reject(closed()));
      }),
      // A status comes in the trailers, or alone in the response headers
      // when the call fails before any message.
      status: new Promise((resolve, reject) => {
        const take = (h: http2.IncomingHttpHeaders) => {
          if (h["grpc-status"] === undefined) return;
          resolve({
            code: Number(h["grpc-status"]),
            message: decodeURIComponent(String(h["grpc-message"] ?? "")),
          });
        };
        stream.on("response", take);
        stream.on("trailers", take);
        stream.resume();
        stream.once("close", () => reject(closed()));
      }),
    };
    // Either may go unawaited when the test drops the connection on purpose.
    call.firstData.catch(() => {});
    call.status.catch(() => {});
    return call;
  }

  /** Drops the connection without ending its calls. */
  destroy(): void {
    this.#session.destroy();
  }
}
