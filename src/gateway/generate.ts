/**
 * `Sidecar.Generate`: one generation per call. Events are written as they
 * arrive; the call ends with OK after `done`, or with the failure's status
 * (and a `grpc-retry-pushback-ms` trailer when a retry is expected to work).
 *
 * @module
 */

import type * as grpc from "@grpc/grpc-js";
import type { SidecarError } from "../errors.ts";
import { statusFor } from "./status_map.ts";
import { ledgerFor } from "./call_ledger.ts";
import {
  countRejected,
  Generation,
  type GenerationDeps,
} from "./generation.ts";
import type { GenerateEventPb, GenerateRequestPb } from "./types.ts";
import { validateRequest } from "./validate.ts";

type Call = grpc.ServerWritableStream<GenerateRequestPb, GenerateEventPb>;

// A client whose deadline passes cancels the call itself, and its cancel
// can arrive before the sidecar's own deadline timer fires: the sidecar
// counts the deadline from when the request arrived, later than the client
// did. A cancel this close to the deadline is taken as the deadline; the
// cost is that a real cancel in that window is reported as one too.
const DEADLINE_SLACK_MS = 250;

/** Builds the Generate handler. */
export function generateHandler(
  deps: GenerationDeps,
): grpc.handleServerStreamingCall<GenerateRequestPb, GenerateEventPb> {
  return (call: Call) => {
    const checked = validateRequest(call.request);
    if (!checked.ok) {
      countRejected(deps, "Generate", checked.error);
      endWithError(call, checked.error, deps);
      return;
    }

    let open = true;
    const ledger = ledgerFor(call, deps);
    const gen = new Generation(deps, {
      request: checked.value,
      rpc: "Generate",
      ledger,
      output: {
        event: (ev, slot, tokens) => {
          if (open) ledger.write(ev, slot, tokens);
        },
        done: (ev) => {
          if (!open) return;
          open = false;
          ledger.write(ev, null);
          ledger.flush();
          call.end();
        },
        failed: (error) => {
          if (!open) return;
          open = false;
          ledger.flush();
          endWithError(call, error, deps);
        },
      },
    });

    call.on("cancelled", () => {
      // grpc-js also reports "cancelled" after a normal end; only a call we
      // have not ended was cancelled by the client or its deadline.
      if (!open) return;
      open = false;
      // Nothing more reaches the caller: what is still unsent is not billed.
      ledger.abandon();
      const deadline = call.getDeadline();
      const limit = Date.now() + DEADLINE_SLACK_MS;
      const expired = deadline instanceof Date
        ? deadline.getTime() <= limit
        : Number.isFinite(deadline) && deadline <= limit;
      gen.cancel(expired ? "deadline_exceeded" : "client_cancelled");
    });
    call.on("error", (err) => {
      deps.metrics.gatewaySendErrors.inc({ kind: "stream_error" });
      deps.log.debug("gateway stream error", {
        request_id: gen.requestId,
        error: err,
      });
    });

    gen.start();
  };
}

function endWithError(
  call: Call,
  error: SidecarError,
  deps: GenerationDeps,
): void {
  try {
    call.emit("error", statusFor(error));
  } catch (err) {
    deps.metrics.gatewaySendErrors.inc({ kind: "status" });
    deps.log.debug("could not send status", { error: err });
  }
}
