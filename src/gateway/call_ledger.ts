/**
 * The ledger of a gateway call, reporting stalls the way the sidecar logs
 * and counts them.
 *
 * @module
 */

import type { GenerationDeps } from "./generation.ts";
import { type LedgerCall, StreamLedger } from "./stream_ledger.ts";

/** A {@link StreamLedger} for `call`, with the sidecar's clock and timeout. */
export function ledgerFor(
  call: LedgerCall,
  deps: GenerationDeps,
): StreamLedger {
  return new StreamLedger(call, {
    clock: deps.clock,
    stallTimeoutMs: deps.stallTimeoutMs,
    onStall: (unsent) => {
      deps.metrics.gatewaySendErrors.inc({ kind: "stalled" });
      deps.log.warn("gateway stream accepted nothing; reset", {
        unsent_bytes: unsent,
        stall_timeout_ms: deps.stallTimeoutMs,
      });
    },
  });
}
