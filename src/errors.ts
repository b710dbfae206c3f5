/**
 * Every way a generation can fail, and the one table that maps each to a
 * gRPC status code (and an HTTP status, for the metrics port and logs).
 * Metric labels use {@link ErrorKind}, never a raw message.
 *
 * @module
 */

/** gRPC status codes (google.rpc.Code) used by the sidecar. */
export const GrpcCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  ALREADY_EXISTS: 6,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

/** A small fixed set of failure kinds. */
export type ErrorKind =
  | "invalid_request"
  | "duplicate_request"
  | "worker_unavailable"
  | "worker_overloaded"
  | "worker_hung"
  | "worker_protocol"
  | "worker_error"
  | "model_mismatch"
  | "deadline"
  | "cancelled"
  | "metering_backlog"
  | "shutting_down";

interface Mapping {
  grpc: number;
  http: number;
}

/** The mapping of each kind to a gRPC and an HTTP status. */
export const ERROR_STATUS: Readonly<Record<ErrorKind, Mapping>> = {
  invalid_request: { grpc: GrpcCode.INVALID_ARGUMENT, http: 400 },
  duplicate_request: { grpc: GrpcCode.ALREADY_EXISTS, http: 409 },
  worker_unavailable: { grpc: GrpcCode.UNAVAILABLE, http: 503 },
  worker_overloaded: { grpc: GrpcCode.RESOURCE_EXHAUSTED, http: 429 },
  worker_hung: { grpc: GrpcCode.UNAVAILABLE, http: 503 },
  worker_protocol: { grpc: GrpcCode.INTERNAL, http: 502 },
  // Overridden per error by the worker's own code, see WORKER_CODES.
  worker_error: { grpc: GrpcCode.INTERNAL, http: 502 },
  model_mismatch: { grpc: GrpcCode.FAILED_PRECONDITION, http: 412 },
  deadline: { grpc: GrpcCode.DEADLINE_EXCEEDED, http: 504 },
  cancelled: { grpc: GrpcCode.CANCELLED, http: 499 },
  metering_backlog: { grpc: GrpcCode.UNAVAILABLE, http: 503 },
  shutting_down: { grpc: GrpcCode.UNAVAILABLE, http: 503 },
};

/**
 * Worker `error` codes (docs/worker-protocol.md) and their gRPC status.
 * Look codes up with {@link workerCodeStatus}: a code is the worker's
 * free-form string, and a plain lookup would find `constructor` or
 * `__proto__` on the object's prototype.
 */
export const WORKER_CODES: Readonly<Record<string, number>> = {
  invalid_argument: GrpcCode.INVALID_ARGUMENT,
  model_mismatch: GrpcCode.FAILED_PRECONDITION,
  overloaded: GrpcCode.RESOURCE_EXHAUSTED,
  unavailable: GrpcCode.UNAVAILABLE,
  cancelled: GrpcCode.CANCELLED,
  deadline_exceeded: GrpcCode.DEADLINE_EXCEEDED,
  internal: GrpcCode.INTERNAL,
};

/** The gRPC status for a worker `error` code; INTERNAL for any unknown code. */
export function workerCodeStatus(code: string): number {
  return Object.hasOwn(WORKER_CODES, code)
    ? WORKER_CODES[code]
    : GrpcCode.INTERNAL;
}

/** Options of {@link SidecarError}. */
export interface SidecarErrorOptions {
  /** When retrying after this long is expected to work. */
  retryAfterMs?: number;
  /** For `worker_error`: the worker's code. */
  workerCode?: string;
  cause?: unknown;
}

/** A failure of one generation, as the gateway will see it. */
export class SidecarError extends Error {
  readonly kind: ErrorKind;
  readonly retryAfterMs?: number;
  readonly workerCode?: string;

  constructor(
    kind: ErrorKind,
    message: string,
    options: SidecarErrorOptions = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "SidecarError";
    this.kind = kind;
    this.retryAfterMs = options.retryAfterMs;
    this.workerCode = options.workerCode;
  }

  /** The gRPC status code for this error. */
  get grpcCode(): number {
    if (this.kind === "worker_error" && this.workerCode !== undefined) {
      return workerCodeStatus(this.workerCode);
    }
    return ERROR_STATUS[this.kind].grpc;
  }

  /** The HTTP status for this error. */
  get httpStatus(): number {
    return ERROR_STATUS[this.kind].http;
  }
}

/** A human retry hint: "retry in 5s" (at least one second). */
export function retryHint(retryAfterMs: number): string {
  return `retry in ${Math.max(1, Math.ceil(retryAfterMs / 1000))}s`;
}
