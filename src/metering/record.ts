/**
 * The usage record: what one generation is billed for. Its `id` is the
 * idempotency key: a record is sent again with the same id until the
 * billing service acknowledges it, so deduplicating on `id` makes totals
 * exact.
 *
 * @module
 */

import type { GenerationOutcome } from "../gateway/generation.ts";
import { isoUtc } from "../util/iso_time.ts";

/** Version of the record's shape, sent with every record. */
export const USAGE_SCHEMA = "cy.sidecar.usage.v1";

/** One generation's usage. Field names are the wire format (docs/metering.md). */
export interface UsageRecord {
  /**
   * UUIDv7 of the generation's start: unique, ordered by start time, and
   * shared by the generation's in-flight checkpoints and its final record.
   */
  id: string;
  schema: typeof USAGE_SCHEMA;
  request_id: string;
  session_id: string;
  model_id: string;
  billing_labels: Record<string, string>;
  prompt_tokens: number;
  /** Token ids the sidecar delivered to the gateway. */
  completion_tokens: number;
  /** The worker's own count, when it reported one (null otherwise). */
  worker_completion_tokens: number | null;
  /** How it ended; `interrupted` for a checkpoint recovered after a crash. */
  finish_reason: string;
  /** RFC 3339 UTC timestamps. */
  started_at: string;
  ended_at: string;
  /** The sidecar instance that metered the generation. */
  sidecar_instance: string;
}

/** The finish reason of a record recovered from an in-flight checkpoint. */
export const INTERRUPTED = "interrupted";

/** What a generation in flight has used so far (see `Generation.partialUsage`). */
export interface PartialUsage {
  /** The id its final record will carry. */
  recordId: string;
  requestId: string;
  sessionId: string;
  modelId: string;
  billingLabels: Record<string, string>;
  promptTokens: number;
  /** Token ids delivered to the gateway stream so far. */
  completionTokens: number;
  /** Wall-clock milliseconds since the epoch. */
  startedAtMs: number;
}

/** How a record's generation ended, or where its checkpoint stopped. */
interface RecordEnd {
  finishReason: string;
  workerCompletionTokens: number | null;
  /** Wall-clock milliseconds since the epoch. */
  endedAtMs: number;
}

/** The one place a record is put together: usage so far, plus its end. */
function buildRecord(
  usage: PartialUsage,
  end: RecordEnd,
  instance: string,
): UsageRecord {
  return {
    id: usage.recordId,
    schema: USAGE_SCHEMA,
    request_id: usage.requestId,
    session_id: usage.sessionId,
    model_id: usage.modelId,
    billing_labels: usage.billingLabels,
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
    worker_completion_tokens: end.workerCompletionTokens,
    finish_reason: end.finishReason,
    started_at: isoUtc(usage.startedAtMs),
    ended_at: isoUtc(end.endedAtMs),
    sidecar_instance: instance,
  };
}

/** Builds the record of a finished generation. */
export function usageRecord(
  outcome: GenerationOutcome,
  instance: string,
): UsageRecord {
  return buildRecord(outcome, outcome, instance);
}

/**
 * The record a generation in flight would be billed if the sidecar died
 * now: what was delivered up to `atMs`, with finish reason `interrupted`.
 */
export function checkpointRecord(
  usage: PartialUsage,
  instance: string,
  atMs: number,
): UsageRecord {
  return buildRecord(usage, {
    finishReason: INTERRUPTED,
    workerCompletionTokens: null,
    // Wall time may step back between the start and the checkpoint.
    endedAtMs: Math.max(atMs, usage.startedAtMs),
  }, instance);
}

const HEX = Array.from(
  { length: 256 },
  (_, i) => i.toString(16).padStart(2, "0"),
);

/**
 * A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then random
 * bits. A record's id is made when its generation starts, so the queue,
 * which lists records by id (chunk by chunk, queue.ts), holds them in
 * order of their generations' start (to the millisecond), not of their
 * commits: a long generation's record sorts before those of shorter
 * generations that started after it, even when they were committed first.
 */
export function uuidv7(unixMs: number = Date.now()): string {
  // Random bytes come from a pool refilled 10 bytes short of empty: one
  // call into the runtime per few hundred ids instead of one per id.
  if (poolAt + 10 > POOL.length) {
    crypto.getRandomValues(POOL);
    poolAt = 0;
  }
  const r = poolAt;
  poolAt += 10;

  // 48 bits of milliseconds: 12 hex digits.
  const ms = Math.floor(unixMs);
  const hi = Math.floor(ms / 2 ** 24);
  const lo = ms % 2 ** 24;
  let id = HEX[(hi >>> 16) & 0xff] + HEX[(hi >>> 8) & 0xff] + HEX[hi & 0xff] +
    HEX[(lo >>> 16) & 0xff] + "-" + HEX[(lo >>> 8) & 0xff] + HEX[lo & 0xff] +
    "-";
  id += HEX[0x70 | (POOL[r] & 0x0f)] + HEX[POOL[r + 1]] + "-" +
    HEX[0x80 | (POOL[r + 2] & 0x3f)] + HEX[POOL[r + 3]] + "-";
  for (let i = r + 4; i < r + 10; i++) id += HEX[POOL[i]];
  return id;
}

const POOL = new Uint8Array(4096);
let poolAt = POOL.length;

/** The creation time encoded in a UUIDv7, in Unix milliseconds. */
export function uuidv7Time(id: string): number {
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}
