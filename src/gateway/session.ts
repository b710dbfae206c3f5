/**
 * `Sidecar.Session`: many generations on one bidirectional stream. The
 * gateway sends `generate` and `cancel`; each generation ends with a `done`
 * event (finish reason `cancelled` after a cancel) or an `error` event, and
 * the stream stays open. When the gateway half-closes, the call ends once
 * every generation has; when it goes away, every generation is cancelled.
 *
 * @module
 */

import type * as grpc from "@grpc/grpc-js";
import { GrpcCode, SidecarError } from "../errors.ts";
import {
  countRejected,
  Generation,
  type GenerationDeps,
} from "./generation.ts";
import { ledgerFor } from "./call_ledger.ts";
import type { GenerateEventPb, SessionRequestPb } from "./types.ts";
import { validateRequest } from "./validate.ts";

type Call = grpc.ServerDuplexStream<SessionRequestPb, GenerateEventPb>;

/** Builds the Session handler. */
export function sessionHandler(
  deps: GenerationDeps,
): grpc.handleBidiStreamingCall<SessionRequestPb, GenerateEventPb> {
  return (call: Call) => {
    const ledger = ledgerFor(call, deps);
    const live = new Map<string, Generation>();
    let open = true;
    let halfClosed = false;

    const write = (ev: GenerateEventPb) => {
      if (open) ledger.write(ev, null);
    };
    const endIfIdle = () => {
      if (open && halfClosed && live.size === 0) {
        open = false;
        ledger.flush();
        call.end();
      }
    };
    const reject = (requestId: string, error: SidecarError) => {
      countRejected(deps, "Session", error);
      write({
        request_id: requestId,
        error: {
          code: error.grpcCode,
          message: error.message,
          retry_after_ms: error.retryAfterMs ?? 0,
          usage: { prompt_tokens: 0, completion_tokens: 0 },
        },
      });
    };

    call.on("data", (msg: SessionRequestPb) => {
      if (!open) return;
      if (msg.cancel) {
        live.get(msg.cancel.request_id)?.cancel("client_cancelled");
        return;
      }
      if (!msg.generate) {
        reject(
          "",
          new SidecarError(
            "invalid_request",
            "SessionRequest: set generate or cancel",
          ),
        );
        return;
      }

      const checked = validateRequest(msg.generate);
      if (!checked.ok) {
        reject(msg.generate.request_id, checked.error);
        return;
      }
      const id = checked.value.generation.id;
      if (live.has(id)) {
        reject(
          id,
          new SidecarError(
            "duplicate_request",
            `request_id ${
              JSON.stringify(id)
            } is already in flight on this session`,
          ),
        );
        return;
      }

      const gen = new Generation(deps, {
        request: checked.value,
        rpc: "Session",
        ledger,
        output: {
          event: (ev, slot, tokens) => {
            if (open) ledger.write(ev, slot, tokens);
          },
          done: write,
          failed: (error, usage) => {
            if (error.kind === "cancelled") {
              write({
                request_id: id,
                done: { finish_reason: "cancelled", usage, model_id: "" },
              });
              return;
            }
            write({
              request_id: id,
              error: {
                code: error.grpcCode,
                message: error.message,
                retry_after_ms: error.retryAfterMs ?? 0,
                usage,
              },
            });
          },
        },
        onEnd: () => {
          live.delete(id);
          endIfIdle();
        },
      });
      live.set(id, gen);
      gen.start();
    });

    call.on("end", () => {
      halfClosed = true;
      endIfIdle();
    });

    call.on("cancelled", () => {
      if (!open) return;
      open = false;
      // Nothing more reaches the caller: what is still unsent is not billed.
      ledger.abandon();
      for (const gen of [...live.values()]) gen.cancel("client_cancelled");
    });

    call.on("error", (err) => {
      deps.metrics.gatewaySendErrors.inc({ kind: "stream_error" });
      deps.log.debug("session stream error", {
        error: err,
        code: GrpcCode.INTERNAL,
      });
    });
  };
}
