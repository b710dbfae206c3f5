/**
 * How a worker connection fails: the fixed set of close kinds used as a
 * metric label, the error a connection ends with, and the error for a
 * message the worker's frame limit cannot take.
 *
 * @module
 */

/** Why a connection ended, in a small fixed set usable as a metric label. */
export type CloseKind =
  | "refused" // nothing listens on the socket, or it does not exist
  | "handshake" // the worker did not complete the handshake
  | "protocol" // the worker sent something malformed
  | "eof" // the worker closed the socket
  | "io" // a socket read or write failed
  | "heartbeat" // the worker stopped answering pings
  | "local"; // the sidecar closed it

/** Options of {@link WorkerConnectionError}. */
export interface WorkerConnectionErrorOptions {
  /**
   * Send the worker an `error` frame with this message before closing.
   * Default: true for `protocol` (the sidecar found the error), false
   * otherwise; false for a connection-level error the worker reported.
   */
  notifyWorker?: boolean;
}

/** The error a connection ends with. */
export class WorkerConnectionError extends Error {
  readonly kind: CloseKind;
  /** Whether the worker is told why before the connection closes. */
  readonly notifyWorker: boolean;

  constructor(
    kind: CloseKind,
    message: string,
    options: WorkerConnectionErrorOptions = {},
  ) {
    super(message);
    this.name = "WorkerConnectionError";
    this.kind = kind;
    this.notifyWorker = options.notifyWorker ?? kind === "protocol";
  }
}

/** A message too large for the worker's announced `max_frame_bytes`. */
export class FrameTooLargeError extends RangeError {
  /** The payload size the message would have, in bytes. */
  readonly frameBytes: number;
  /** The worker's limit, in bytes. */
  readonly maxFrameBytes: number;

  constructor(type: string, frameBytes: number, maxFrameBytes: number) {
    super(
      `Cannot send ${type}: ${frameBytes} bytes exceed the worker's max_frame_bytes ${maxFrameBytes}`,
    );
    this.name = "FrameTooLargeError";
    this.frameBytes = frameBytes;
    this.maxFrameBytes = maxFrameBytes;
  }
}
