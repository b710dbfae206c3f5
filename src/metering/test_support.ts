/**
 * Shared pieces of the metering unit tests: records, temporary databases,
 * and a fake clock that can jump to its next timer while real I/O (Deno
 * KV) runs in between.
 *
 * @module
 */

import { FakeClock, type TimerId } from "../util/clock.ts";
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

/** Lets pending promise callbacks and I/O completions run. */
export async function turn(times = 3): Promise<void> {
  for (let i = 0; i < times; i++) {
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** A {@link FakeClock} that knows when its next timer is due. */
export class SteppingClock extends FakeClock {
  #due = new Map<TimerId, number>();

  override setTimeout(fn: () => void, delayMs: number): TimerId {
    // deno-lint-ignore prefer-const -- assigned after the wrapper is made
    let id: TimerId;
    const wrapped = () => {
      this.#due.delete(id);
      fn();
    };
    id = super.setTimeout(wrapped, delayMs);
    this.#due.set(id, this.now() + Math.max(0, delayMs));
    return id;
  }

  override clearTimeout(id: TimerId): void {
    this.#due.delete(id);
    super.clearTimeout(id);
  }

  /** Clock time of the next timer, or null when none is set. */
  nextDue(): number | null {
    let min: number | null = null;
    for (const at of this.#due.values()) if (min === null || at < min) min = at;
    return min;
  }

  /** Moves to the next timer and fires it (and any due with it). */
  step(): void {
    const at = this.nextDue();
    if (at !== null) this.advance(Math.max(0, at - this.now()));
  }

  /**
   * Keeps firing timers, letting real I/O run between them, until
   * `promise` settles; fails after `maxSteps` timers.
   */
  async run<T>(promise: Promise<T>, maxSteps = 1000): Promise<T> {
    let settled = false;
    const watched = promise.finally(() => (settled = true));
    for (let i = 0; i < maxSteps && !settled; i++) {
      await turn();
      if (!settled) this.step();
    }
    if (!settled) await turn(10);
    if (!settled) throw new Error(`still pending after ${maxSteps} timers`);
    return await watched;
  }
}
