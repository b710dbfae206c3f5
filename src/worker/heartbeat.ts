/**
 * Heartbeats on one worker connection: a `ping` every check interval, and
 * a connection closed as `heartbeat` when a ping goes unanswered for the
 * heartbeat timeout.
 *
 * @module
 */

import type { Clock, TimerId } from "../util/clock.ts";
import { type WorkerConnection, WorkerConnectionError } from "./connection.ts";

/** Options of {@link Heartbeat}. */
export interface HeartbeatOptions {
  clock: Clock;
  /** A ping goes out this often, in milliseconds. */
  intervalMs: number;
  /** A ping not answered within this many milliseconds is a hung worker. */
  timeoutMs: number;
}

/** Pings one connection until stopped; the first ping goes out one interval after the start. */
export class Heartbeat {
  #conn: WorkerConnection;
  #o: HeartbeatOptions;
  #seq = 0;
  #pingTimer: TimerId | null = null;
  #pongTimer: TimerId | null = null;

  constructor(conn: WorkerConnection, options: HeartbeatOptions) {
    this.#conn = conn;
    this.#o = options;
    this.#schedulePing();
  }

  /** The worker answered ping `seq`; a pong for an older ping changes nothing. */
  pong(seq: number): void {
    if (seq === this.#seq && this.#pongTimer !== null) {
      this.#o.clock.clearTimeout(this.#pongTimer);
      this.#pongTimer = null;
    }
  }

  /** Stops pinging and waiting for pongs. */
  stop(): void {
    for (const t of [this.#pingTimer, this.#pongTimer]) {
      if (t !== null) this.#o.clock.clearTimeout(t);
    }
    this.#pingTimer = this.#pongTimer = null;
  }

  #schedulePing(): void {
    this.#pingTimer = this.#o.clock.setTimeout(() => {
      this.#pingTimer = null;
      if (this.#conn.closed) return;

      // While a ping is unanswered its own timer decides. A second ping
      // would replace that timer without clearing it, and the orphaned
      // timer would close the connection even after its pong arrived (when
      // heartbeat_timeout_secs exceeds check_interval_secs).
      if (this.#pongTimer === null) this.#ping();
      this.#schedulePing();
    }, this.#o.intervalMs);
  }

  #ping(): void {
    const seq = ++this.#seq;
    this.#conn.send({ type: "ping", seq });
    this.#pongTimer = this.#o.clock.setTimeout(() => {
      this.#pongTimer = null;
      this.#conn.close(
        new WorkerConnectionError(
          "heartbeat",
          `worker did not answer ping ${seq} within ${this.#o.timeoutMs} ms`,
        ),
      );
    }, this.#o.timeoutMs);
  }
}
