/**
 * The reconnect loop: when the next connection attempt starts, that no two
 * run at once, and how an attempt's outcome is reported.
 *
 * Before an attempt, the loop waits for the sockets earlier attempts left
 * with an operation pending ({@link AbandonedSockets}). Against a worker
 * that is stopped, an attempt times out and leaves its read behind; the
 * next waits until that read has settled, when the worker resumes or dies.
 * So a stuck worker costs one descriptor, not one per retry. Meanwhile the
 * link stays disconnected and requests are refused at once.
 *
 * @module
 */

import type { Clock, TimerId } from "../util/clock.ts";
import { AbandonedSockets } from "./abandoned.ts";
import { type WorkerConnection, WorkerConnectionError } from "./connection.ts";

/** Options of {@link Reconnector}. */
export interface ReconnectorOptions {
  clock: Clock;
  /** Opens one connection, handshake included, recording into `abandoned`. */
  open: (abandoned: AbandonedSockets) => Promise<WorkerConnection>;
  /** An attempt is due: false skips it (stopped, or connected already). */
  due: () => boolean;
  /** The attempt connected. */
  connected: (conn: WorkerConnection) => void;
  /** The attempt failed; the loop waits to be told when to retry. */
  failed: (err: WorkerConnectionError) => void;
  /** An attempt is due but waits for `pending` abandoned sockets. */
  waiting?: (pending: number) => void;
}

/** Runs connection attempts, one at a time, when told to. */
export class Reconnector {
  #o: ReconnectorOptions;
  #abandoned = new AbandonedSockets();
  #timer: TimerId | null = null;
  #running = false;
  #stopped = false;

  constructor(options: ReconnectorOptions) {
    this.#o = options;
  }

  /** Starts an attempt now, unless one is under way. */
  now(): void {
    void this.#run();
  }

  /**
   * Starts an attempt after `delayMs`, in place of one already scheduled.
   * An attempt under way when the delay ends is not doubled: its own
   * outcome decides what follows.
   */
  retryIn(delayMs: number): void {
    if (this.#stopped) return;
    this.#cancelTimer();
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = null;
      void this.#run();
    }, delayMs);
  }

  /** Starts no further attempt; a connection still coming is closed. */
  stop(): void {
    this.#stopped = true;
    this.#cancelTimer();
  }

  async #run(): Promise<void> {
    if (this.#running || this.#stopped) return;
    this.#running = true;
    try {
      if (this.#abandoned.count > 0) {
        this.#o.waiting?.(this.#abandoned.count);
        await this.#abandoned.settled();
        if (this.#stopped) return;
      }
      if (!this.#o.due()) return;

      let conn: WorkerConnection;
      try {
        conn = await this.#o.open(this.#abandoned);
      } catch (err) {
        if (!this.#stopped) this.#o.failed(asConnectionError(err));
        return;
      }
      if (this.#stopped) conn.close();
      else this.#o.connected(conn);
    } finally {
      this.#running = false;
    }
  }

  #cancelTimer(): void {
    if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = null;
  }
}

function asConnectionError(err: unknown): WorkerConnectionError {
  if (err instanceof WorkerConnectionError) return err;
  return new WorkerConnectionError(
    "io",
    String((err as Error)?.message ?? err),
  );
}
