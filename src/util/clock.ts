/**
 * Time as a dependency. Timeouts, heartbeats and backoff read the clock and
 * set timers through a {@link Clock}, so tests can drive them with
 * {@link FakeClock} instead of sleeping.
 *
 * @module
 */

/** An opaque timer handle. */
export type TimerId = ReturnType<typeof setTimeout>;

/** Monotonic time and timers. */
export interface Clock {
  /** Milliseconds on a monotonic clock (not wall time). */
  now(): number;
  setTimeout(fn: () => void, delayMs: number): TimerId;
  clearTimeout(id: TimerId): void;
}

/** The process clock. */
export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, delayMs) => setTimeout(fn, delayMs),
  clearTimeout: (id) => clearTimeout(id),
};

interface PendingTimer {
  id: number;
  at: number;
  fn: () => void;
}

/** A clock that moves only when told to; timers fire in order of due time. */
export class FakeClock implements Clock {
  #now = 0;
  #nextId = 1;
  #timers: PendingTimer[] = [];

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, delayMs: number): TimerId {
    const id = this.#nextId++;
    this.#timers.push({ id, at: this.#now + Math.max(0, delayMs), fn });
    return id as unknown as TimerId;
  }

  clearTimeout(id: TimerId): void {
    this.#timers = this.#timers.filter((t) =>
      t.id !== (id as unknown as number)
    );
  }

  /** Number of timers not yet fired. */
  get pending(): number {
    return this.#timers.length;
  }

  /**
   * Clock time at which the next timer falls due, or null when none is
   * set; `advance(nextDue() - now())` fires it.
   */
  nextDue(): number | null {
    let min: number | null = null;
    for (const t of this.#timers) if (min === null || t.at < min) min = t.at;
    return min;
  }

  /** Moves time forward by `ms`, firing every timer that falls due. */
  advance(ms: number): void {
    const target = this.#now + ms;
    for (;;) {
      const due = this.#timers
        .filter((t) => t.at <= target)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#timers = this.#timers.filter((t) => t !== due);
      this.#now = due.at;
      due.fn();
    }
    this.#now = target;
  }
}
