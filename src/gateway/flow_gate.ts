/**
 * Backpressure from one gRPC call to the generations writing on it. When
 * the call's write buffer is full (`write()` returned false), generations
 * stop giving credit back to the worker until the call drains; a slow
 * reader therefore slows only the generations on its own stream, and the
 * sidecar buffers at most one credit window per generation.
 *
 * @module
 */

/** A writable gRPC call, as far as flow control cares. */
export interface DrainableStream<T> {
  write(message: T): boolean;
  on(event: "drain", listener: () => void): unknown;
}

/** Something that waits for the stream to drain. */
export interface DrainWaiter {
  /** Called once the stream has drained. */
  release(): void;
}

/** Tracks whether a call is backed up, and who waits for it. */
export class FlowGate<T = unknown> {
  #stream: DrainableStream<T>;
  #blocked = false;
  #waiters = new Set<DrainWaiter>();

  constructor(stream: DrainableStream<T>) {
    this.#stream = stream;
    stream.on("drain", () => {
      this.#blocked = false;
      const waiters = [...this.#waiters];
      this.#waiters.clear();
      for (const w of waiters) w.release();
    });
  }

  /** True while the stream's buffer is above its high-water mark. */
  get blocked(): boolean {
    return this.#blocked;
  }

  /** Writes a message and notes whether the stream is now backed up. */
  write(message: T): void {
    if (!this.#stream.write(message)) this.#blocked = true;
  }

  /** Registers `waiter` to be released at the next drain. */
  wait(waiter: DrainWaiter): void {
    this.#waiters.add(waiter);
  }
}
