/**
 * Ids of generations whose slot was freed while the worker had not ended
 * them (a `cancel` it never answered). A late frame for one of these is
 * dropped rather than treated as a protocol error, and a new request with
 * the id is refused until the worker ends it.
 *
 * @module
 */

/**
 * How many forgotten ids one connection remembers. The bound keeps a worker
 * that never ends its cancelled generations from growing the set without
 * end; the price is that the oldest id past it is forgotten for good: a
 * late frame for it is a protocol error again, and the id may be used by a
 * new request while the worker could still be running the old one.
 */
export const FORGOTTEN_IDS_KEPT = 1024;

/** An insertion-ordered set of ids that drops its oldest past a limit. */
export class ForgottenIds {
  #ids = new Set<string>();
  #limit: number;

  /** `limit`: ids kept, at least 1 (default {@link FORGOTTEN_IDS_KEPT}). */
  constructor(limit = FORGOTTEN_IDS_KEPT) {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new RangeError(
        `Cannot keep forgotten ids: limit must be an integer >= 1, got ${limit}`,
      );
    }
    this.#limit = limit;
  }

  /** Ids remembered now. */
  get size(): number {
    return this.#ids.size;
  }

  /** Remembers `id`; past the limit the oldest id is dropped. */
  add(id: string): void {
    this.#ids.add(id);
    if (this.#ids.size > this.#limit) {
      this.#ids.delete(this.#ids.values().next().value!);
    }
  }

  /** Whether `id` is remembered. */
  has(id: string): boolean {
    return this.#ids.has(id);
  }

  /** Forgets `id` (the worker ended it: the id may be used again). */
  delete(id: string): void {
    this.#ids.delete(id);
  }

  /** Forgets every id (the connection they came on is gone). */
  clear(): void {
    this.#ids.clear();
  }
}
