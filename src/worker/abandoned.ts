/**
 * Sockets the sidecar gave up on while an operation on them is still
 * pending.
 *
 * In Deno 2.8 closing a socket does not end a read (or a connect) pending
 * on it: the descriptor stays open until that operation settles. A
 * handshake that times out against a worker that is stopped (`SIGSTOP`) or
 * whose event loop is stuck leaves such a socket behind, and it settles
 * only once that worker resumes (it reads end-of-file and closes its end)
 * or dies. The reconnect loop waits here before each attempt, so a stuck
 * worker holds one descriptor and one pending read, not one per attempt.
 *
 * @module
 */

/** Pending operations on sockets that were shut; each is dropped once it settles. */
export class AbandonedSockets {
  #pending = new Set<Promise<void>>();

  /** Operations still pending. */
  get count(): number {
    return this.#pending.size;
  }

  /** Records `operation`, still pending on a socket that was shut. */
  add(operation: Promise<unknown>): void {
    const settled: Promise<void> = operation.then(
      () => this.#pending.delete(settled),
      () => this.#pending.delete(settled),
    ).then(() => {});
    this.#pending.add(settled);
  }

  /** Resolves once every recorded operation has settled (at once if none). */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) {
      await Promise.all(this.#pending);
    }
  }
}
