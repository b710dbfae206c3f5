/**
 * One generation between the gateway and the worker: its request, where it
 * stands, and its flow-control credit.
 *
 * @module
 */

import type { SidecarError } from "../errors.ts";
import type { CancelReason, ChatMessage, Sampling, Usage } from "./messages.ts";

/** A generation as the gateway asks for it, already validated. */
export interface GenerationRequest {
  id: string;
  sessionId: string;
  /** Empty: whatever model the worker serves. */
  modelId: string;
  prompt?: string;
  messages?: ChatMessage[];
  sampling: Sampling;
}

/** How a generation ended successfully, as the worker reported it. */
export interface WorkerDone {
  finishReason: string;
  /** The worker's own usage claim; completion tokens are re-counted by the caller. */
  usage: Usage;
  modelId: string;
}

/** Where a generation's events go. Calls never overlap; `done`/`fail` come once. */
export interface GenerationSink {
  /** `promptTokens` comes with the first chunk when the worker reports it. */
  chunk(text: string, tokenIds: number[], promptTokens?: number): void;
  system(kind: "reloading" | "resumed", text: string, etaMs: number): void;
  done(result: WorkerDone): void;
  fail(error: SidecarError): void;
}

/** What the gateway holds of a started generation. */
export interface GenerationHandle {
  /**
   * Returns `chunks` units of credit once the gateway's stream has taken
   * that many chunks; the worker may then send as many more.
   */
  grant(chunks: number): void;
  /** Stops the generation; the sink gets no further call. */
  cancel(reason: CancelReason): void;
}

/** Stages of a generation inside the client. */
export type ExchangePhase =
  | "waiting" // queued for a slot, or held during a reload
  | "active" // sent to the worker
  | "cancelling" // cancel sent; waiting for the worker's final frame
  | "ended";

/** Internal record of one generation. */
export class Exchange {
  readonly request: GenerationRequest;
  readonly sink: GenerationSink;
  phase: ExchangePhase = "waiting";
  /** Waiting: give up at this clock reading. */
  waitUntil = 0;
  /** Waiting: the caller was told about a reload. */
  held = false;
  /** Clock reading when the request was first held (valid when `held`). */
  heldSince = 0;
  /** Chunks the worker may still send. */
  credit = 0;
  /** Credit given back by the gateway but not yet sent to the worker. */
  pendingGrant = 0;
  /** Clock reading of the last frame for this generation. */
  lastActivity = 0;

  constructor(request: GenerationRequest, sink: GenerationSink) {
    this.request = request;
    this.sink = sink;
  }
}
