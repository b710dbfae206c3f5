/**
 * Turns a {@link SidecarError} into what grpc-js sends: status code,
 * details, and trailers (`grpc-retry-pushback-ms` when a retry after a
 * known delay is expected to work).
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import type { SidecarError } from "../errors.ts";

/** The standard trailer that tells gRPC clients when to retry. */
export const RETRY_PUSHBACK_TRAILER = "grpc-retry-pushback-ms";

/** The status object grpc-js expects on `emit("error")` or a unary callback. */
export function statusFor(
  error: SidecarError,
): Partial<grpc.StatusObject> & { code: number; details: string } {
  const metadata = new grpc.Metadata();
  if (error.retryAfterMs !== undefined) {
    metadata.set(
      RETRY_PUSHBACK_TRAILER,
      String(Math.max(0, Math.round(error.retryAfterMs))),
    );
  }
  return { code: error.grpcCode, details: error.message, metadata };
}
