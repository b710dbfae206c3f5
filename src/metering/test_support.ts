/**
 * Shared pieces of the metering unit tests: records, temporary databases,
 * and driving a {@link FakeClock} from timer to timer while real I/O (Deno
 * KV) runs in between.
 *
 * @module
 */

import type { FakeClock } from "../util/clock.ts";
import type { UsageChunk } from "./chunk.ts";
import { PENDING } from "./queue_keys.ts";
import { USAGE_SCHEMA, type UsageRecord, uuidv7 } from "./record.ts";

/** A usage record with plausible fields; `over` replaces any of them. */
export function testRecord(over: Partial<UsageRecord> = {}): UsageRecord {
  const started = Date.now() - 1000;
  return {
    id: uuidv7(started),
    schema: USAGE_SCHEMA,
    request_id: `req-${crypto.randomUUID().slice(0, 8)}`,
    session_id: "s-1",
    model_id: "sim-model",
    billing_labels: { customer: "acme" },
    prompt_tokens: 3,
    completion_tokens: 7,
    worker_completion_tokens: 7,
    finish_reason: "stop",
    started_at: new Date(started).toISOString(),
    ended_at: new Date(started + 900).toISOString(),
    sidecar_instance: "test",
    ...over,
  };
}

/**
 * The heaviest billing labels gateway validation allows, as Deno KV counts
 * them: 64 labels of CJK characters (two bytes each to V8, three in UTF-8)
 * filling the 32 KiB UTF-8 cap exactly.
 */
export function heavyLabels(): Record<string, string> {
  const labels: Record<string, string> = {};
  for (let i = 0; i < 64; i++) {
    labels[`${String(i).padStart(2, "0")}${"鍵".repeat(20)}`] = "値".repeat(
      150,
    );
  }
  return labels;
}

/** A fresh database path in a temporary directory. */
export async function tempDbPath(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cy-metering-" });
  return `${dir}/usage.kv`;
}

/** A value stored under the pending prefix, read directly. */
export interface StoredPending {
  /** The id part of its key. */
  id: string;
  versionstamp: string;
  value: UsageChunk;
}

/**
 * The values under the pending prefix of the database at `path`, in key
 * order, read with a handle of their own (the queue may be open).
 */
export async function storedPending(path: string): Promise<StoredPending[]> {
  const kv = await Deno.openKv(path);
  try {
    const out: StoredPending[] = [];
    for await (const e of kv.list<UsageChunk>({ prefix: [...PENDING] })) {
      out.push({
        id: String(e.key[2]),
        versionstamp: e.versionstamp,
        value: e.value,
      });
    }
    return out;
  } finally {
    kv.close();
  }
}

/** Lets pending promise callbacks and I/O completions run. */
export async function turn(times = 3): Promise<void> {
  for (let i = 0; i < times; i++) {
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Moves `clock` to its next timer and fires it (and any due with it). */
export function step(clock: FakeClock): void {
  const at = clock.nextDue();
  if (at !== null) clock.advance(Math.max(0, at - clock.now()));
}

/**
 * Keeps firing `clock`'s timers, letting real I/O run between them, until
 * `promise` settles; fails after `maxSteps` timers.
 */
export async function runTimers<T>(
  clock: FakeClock,
  promise: Promise<T>,
  maxSteps = 1000,
): Promise<T> {
  let settled = false;
  const watched = promise.finally(() => (settled = true));
  for (let i = 0; i < maxSteps && !settled; i++) {
    await turn();
    if (!settled) step(clock);
  }
  if (!settled) await turn(10);
  if (!settled) throw new Error(`still pending after ${maxSteps} timers`);
  return await watched;
}
