/**
 * The generations started and not yet ended on their stream: what a
 * shutdown drains, and what the meter checkpoints.
 *
 * @module
 */

/** Generations from start until their last event is written. */
export class LiveCount<G = unknown> {
  #live = new Set<G>();
  #idle: (() => void)[] = [];

  get count(): number {
    return this.#live.size;
  }

  /** The generations counted now. */
  generations(): Iterable<G> {
    return this.#live;
  }

  begin(g: G): void {
    this.#live.add(g);
  }

  end(g: G): void {
    this.#live.delete(g);
    if (this.#live.size === 0) { for (const f of this.#idle.splice(0)) f(); }
  }

  /** Resolves true when the count reaches 0, or false after `timeoutMs`. */
  idle(timeoutMs: number): Promise<boolean> {
    if (this.#live.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#idle.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}
