/**
 * Binds one generation to a gateway stream: forwards worker events as gRPC
 * events the moment they arrive, counts the token ids it delivers (the
 * meter), gives flow-control credit back as the stream takes chunks, and
 * reports exactly one outcome.
 *
 * Shared by `Generate` (one generation per call) and `Session` (many per
 * call); what differs is the {@link GenerationOutput}.
 *
 * @module
 */

import { GrpcCode, SidecarError } from "../errors.ts";
import type { Logger } from "../log/logger.ts";
import type { SidecarMetrics } from "../metrics/registry.ts";
import type { SeriesLease, SessionSeries } from "../metrics/session_series.ts";
import type { Clock, TimerId } from "../util/clock.ts";
import type { WorkerClient } from "../worker/client.ts";
import type {
  GenerationHandle,
  GenerationSink,
  WorkerDone,
} from "../worker/exchange.ts";
import type { CancelReason } from "../worker/messages.ts";
import { type PartialUsage, uuidv7 } from "../metering/record.ts";
import type { LiveCount } from "./live_count.ts";
import type { LedgerOwner, LedgerSlot, StreamLedger } from "./stream_ledger.ts";
import type { GenerateEventPb, UsagePb } from "./types.ts";
import type { ValidatedRequest } from "./validate.ts";

/** How a generation ended, for metering and metrics. */
export interface GenerationOutcome {
  /** The usage record's id: fixed at the start, shared with its checkpoints. */
  recordId: string;
  requestId: string;
  sessionId: string;
  modelId: string;
  billingLabels: Record<string, string>;
  /** `stop`, `length`, `cancelled`, `deadline_exceeded`, `error`, or the worker's reason. */
  finishReason: string;
  promptTokens: number;
  /** Token ids delivered to the gateway stream. */
  completionTokens: number;
  /** The worker's own claim, when it sent `done`. */
  workerCompletionTokens: number | null;
  /** Wall-clock milliseconds since the epoch. */
  startedAtMs: number;
  endedAtMs: number;
  /** The failure, if any. */
  error: SidecarError | null;
}

/** Receives every outcome; may persist it before the final event goes out. */
export type OutcomeRecorder = (
  outcome: GenerationOutcome,
) => Promise<void> | void;

/** Where a generation writes; implemented per RPC. */
export interface GenerationOutput {
  /**
   * A non-final event (chunk or system message), written through the
   * call's ledger for `slot`, whose `tokens` count once delivered.
   */
  event(ev: GenerateEventPb, slot: LedgerSlot, tokens: number): void;
  /** The final `done` event. */
  done(ev: GenerateEventPb): void;
  /** The generation failed; `usage` is what was delivered. */
  failed(error: SidecarError, usage: UsagePb): void;
}

/** What a generation needs from the sidecar. */
export interface GenerationDeps {
  worker: WorkerClient;
  metrics: SidecarMetrics;
  log: Logger;
  clock: Clock;
  record: OutcomeRecorder;
  /** Null when a generation may start; otherwise why not (e.g. usage backlog). */
  admit: () => SidecarError | null;
  /** Counts generations from start until their last event is written. */
  live: LiveCount<Generation>;
  sessions: SessionSeries;
  /** A gateway stream with unsent events that takes none for this long is reset. */
  stallTimeoutMs: number;
}

/** One generation on a gateway stream. */
export class Generation implements GenerationSink, LedgerOwner {
  readonly requestId: string;
  /** Its usage record's id (a UUIDv7 of its start), for checkpoints too. */
  readonly recordId: string;
  #deps: GenerationDeps;
  #req: ValidatedRequest;
  #rpc: string;
  #out: GenerationOutput;
  #ledger: StreamLedger;
  #slot: LedgerSlot;
  #handle: GenerationHandle | null = null;
  #started = false;
  // The final record was handed to the meter: no checkpoint after it.
  #recorded = false;
  #ended = false;
  #promptTokens = 0;
  /** Token ids handed to the stream. */
  #sent = 0;
  /** Token ids whose bytes left the sidecar: what is billed. */
  #delivered = 0;
  #owed = 0;
  #startedAt: number;
  #startedAtMs = Date.now();
  #firstTokenSeen = false;
  #tokens: SeriesLease | null = null;
  #timer: TimerId | null = null;
  #onEnd: () => void;

  constructor(
    deps: GenerationDeps,
    init: {
      request: ValidatedRequest;
      rpc: "Generate" | "Session";
      output: GenerationOutput;
      ledger: StreamLedger;
      onEnd?: () => void;
    },
  ) {
    this.#deps = deps;
    this.#req = init.request;
    this.requestId = init.request.generation.id;
    this.#rpc = init.rpc;
    this.#out = init.output;
    this.#ledger = init.ledger;
    this.#slot = init.ledger.slot(this);
    this.#onEnd = init.onEnd ?? (() => {});
    this.#startedAt = deps.clock.now();
    this.recordId = uuidv7(this.#startedAtMs);
  }

  /**
   * What it has used so far, for the meter's in-flight checkpoints; null
   * before it may have reached the worker, and once its final record was
   * handed to the meter.
   */
  partialUsage(): PartialUsage | null {
    if (!this.#started || this.#recorded) return null;
    return {
      recordId: this.recordId,
      requestId: this.requestId,
      sessionId: this.#req.generation.sessionId,
      modelId: this.#modelId(),
      billingLabels: this.#req.billingLabels,
      promptTokens: this.#promptTokens,
      completionTokens: this.#delivered,
      startedAtMs: this.#startedAtMs,
    };
  }

  /** Whether the generation has reported its outcome. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Submits to the worker; failures are reported through the output. */
  start(): void {
    this.#deps.live.begin(this);
    const refusal = this.#deps.admit();
    if (refusal) {
      this.fail(refusal);
      return;
    }
    const result = this.#deps.worker.submit(this.#req.generation, this);
    if (!result.ok) {
      this.fail(result.error);
      return;
    }
    // From here on the generation may reach the worker: it is metered.
    this.#started = true;
    this.#handle = result.handle;
    if (this.#req.timeoutMs > 0 && !this.#ended) {
      this.#timer = this.#deps.clock.setTimeout(() => {
        this.#timer = null;
        this.cancel("deadline_exceeded");
      }, this.#req.timeoutMs);
    }
  }

  /**
   * Stops the generation on the gateway's behalf (cancel, disconnect or
   * deadline) and reports what was delivered.
   */
  cancel(reason: CancelReason): void {
    if (this.#ended) return;
    this.#handle?.cancel(reason);
    const deadline = reason === "deadline_exceeded";
    const error = deadline
      ? new SidecarError(
        "deadline",
        `request ${this.requestId} exceeded its deadline`,
      )
      : new SidecarError(
        "cancelled",
        `request ${this.requestId} was cancelled by the client`,
      );
    this.#finish(
      deadline ? "deadline_exceeded" : "cancelled",
      this.#promptTokens,
      null,
      error,
    );
  }

  // ---- LedgerOwner: what the stream reports back ----

  /** Gives credit owed to this generation back after the stream drained. */
  release(): void {
    // A stream that is gone takes nothing more: no credit for it.
    if (this.#owed > 0 && !this.#ended && !this.#ledger.abandoned) {
      this.#handle?.grant(this.#owed);
    }
    this.#owed = 0;
  }

  /** Counts tokens whose bytes have left the sidecar: this is what is billed. */
  delivered(tokens: number): void {
    this.#delivered += tokens;
    this.#tokens?.inc(tokens);
  }

  // ---- GenerationSink: events from the worker ----

  chunk(text: string, tokenIds: number[], promptTokens?: number): void {
    if (this.#ended) return;
    if (promptTokens !== undefined) this.#promptTokens = promptTokens;
    if (!this.#firstTokenSeen) {
      this.#firstTokenSeen = true;
      this.#deps.metrics.timeToFirstToken.observe(
        { model_id: this.#modelId() },
        (this.#deps.clock.now() - this.#startedAt) / 1000,
      );
      this.#tokens = this.#deps.sessions.acquire(
        this.#req.generation.sessionId,
        this.#modelId(),
      );
    }

    this.#sent += tokenIds.length;
    this.#out.event(
      { request_id: this.requestId, chunk: { text, token_ids: tokenIds } },
      this.#slot,
      tokenIds.length,
    );

    // A backed-up stream keeps the chunk's credit until it drains, so the
    // worker slows down for this stream alone.
    if (this.#ledger.blocked) {
      this.#owed++;
      this.#ledger.wait(this.#slot);
    } else {
      this.#handle?.grant(1);
    }
  }

  system(kind: "reloading" | "resumed", text: string, etaMs: number): void {
    if (this.#ended) return;
    this.#out.event(
      {
        request_id: this.requestId,
        system: {
          kind: kind === "reloading" ? "RELOADING" : "RESUMED",
          text,
          eta_ms: etaMs,
        },
      },
      this.#slot,
      0,
    );
  }

  done(result: WorkerDone): void {
    if (this.#ended) return;
    this.#finish(
      result.finishReason,
      result.usage.prompt_tokens,
      result.usage.completion_tokens,
      null,
      result.modelId,
    );
  }

  fail(error: SidecarError): void {
    if (this.#ended) return;
    this.#finish("error", this.#promptTokens, null, error);
  }

  // ---- the one exit ----

  #finish(
    finishReason: string,
    promptTokens: number,
    workerCompletion: number | null,
    error: SidecarError | null,
    modelId = this.#modelId(),
  ): void {
    this.#ended = true;
    if (this.#timer !== null) this.#deps.clock.clearTimeout(this.#timer);

    // The outcome waits until what the stream holds of this generation has
    // left the sidecar (or the stream is gone), so that it counts exactly
    // the tokens delivered.
    this.#ledger.whenDelivered(
      this.#slot,
      () =>
        this.#report(
          finishReason,
          promptTokens,
          workerCompletion,
          error,
          modelId,
        ),
    );
  }

  #report(
    finishReason: string,
    promptTokens: number,
    workerCompletion: number | null,
    error: SidecarError | null,
    modelId: string,
  ): void {
    this.#tokens?.release();
    this.#tokens = null;

    const outcome: GenerationOutcome = {
      recordId: this.recordId,
      requestId: this.requestId,
      sessionId: this.#req.generation.sessionId,
      modelId,
      billingLabels: this.#req.billingLabels,
      finishReason,
      promptTokens,
      completionTokens: this.#delivered,
      workerCompletionTokens: workerCompletion,
      startedAtMs: this.#startedAtMs,
      endedAtMs: Date.now(),
      error,
    };
    this.#observe(outcome);

    const usage: UsagePb = {
      prompt_tokens: promptTokens,
      completion_tokens: this.#delivered,
    };
    const emit = () => {
      if (error === null) {
        this.#out.done({
          request_id: this.requestId,
          done: { finish_reason: finishReason, usage, model_id: modelId },
        });
      } else {
        this.#out.failed(error, usage);
      }
      this.#onEnd();
      this.#deps.live.end(this);
    };

    // A generation refused before it could reach the worker used nothing.
    if (!this.#started) {
      emit();
      return;
    }

    // The outcome is recorded before the caller sees the end, so that a
    // generation the gateway saw complete is always metered.
    let pending: Promise<void> | void;
    this.#recorded = true;
    try {
      pending = this.#deps.record(outcome);
    } catch (err) {
      pending = Promise.reject(err);
    }
    if (pending instanceof Promise) {
      pending.then(emit, (err) => {
        this.#deps.metrics.usageRecordFailures.inc();
        this.#deps.log.error("usage could not be recorded", {
          request_id: this.requestId,
          session_id: outcome.sessionId,
          prompt_tokens: outcome.promptTokens,
          completion_tokens: outcome.completionTokens,
          error: err,
        });
        emit();
      });
    } else {
      emit();
    }
  }

  #observe(o: GenerationOutcome): void {
    const m = this.#deps.metrics;
    const code = o.error ? o.error.grpcCode : GrpcCode.OK;
    m.requests.inc({ rpc: this.#rpc, code: CODE_NAMES[code] ?? String(code) });
    m.requestDuration.observe(
      { rpc: this.#rpc },
      (this.#deps.clock.now() - this.#startedAt) / 1000,
    );

    if (
      o.workerCompletionTokens !== null &&
      o.workerCompletionTokens !== o.completionTokens
    ) {
      m.usageMismatches.inc({ model_id: o.modelId });
      this.#deps.log.warn(
        "worker usage disagrees with delivered tokens; billing delivered",
        {
          request_id: o.requestId,
          session_id: o.sessionId,
          worker_completion_tokens: o.workerCompletionTokens,
          delivered_completion_tokens: o.completionTokens,
        },
      );
    }
    if (this.#deps.log.enabled("debug")) {
      this.#deps.log.debug("generation ended", {
        request_id: o.requestId,
        session_id: o.sessionId,
        finish_reason: o.finishReason,
        completion_tokens: o.completionTokens,
        undelivered_tokens: this.#sent - o.completionTokens,
        error: o.error?.message,
      });
    }
  }

  #modelId(): string {
    const s = this.#deps.worker.state;
    return "info" in s ? s.info.modelId : this.#req.generation.modelId;
  }
}

/**
 * Counts a request refused before it became a generation (invalid, or a
 * duplicate id on a session) in `sidecar_requests_total`.
 */
export function countRejected(
  deps: GenerationDeps,
  rpc: "Generate" | "Session",
  error: SidecarError,
): void {
  deps.metrics.requests.inc({
    rpc,
    code: CODE_NAMES[error.grpcCode] ?? String(error.grpcCode),
  });
}

/** gRPC status code names, for the `code` label. */
export const CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(GrpcCode).map(([name, code]) => [code, name]),
);
