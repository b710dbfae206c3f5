/**
 * Bounds the cardinality of `sidecar_tokens_processed_total{session_id,
 * model_id}`. A session label grows without bound in Prometheus, so:
 *
 * - a series whose session has had no generation for `ttlMs` is removed
 *   (its counter restarts at 0 if the session returns, which `rate()` and
 *   `increase()` handle as a counter reset);
 * - at most `maxSeries` series exist; past that, the least recently used
 *   idle series is removed, and if every series is busy, tokens are counted
 *   under `session_id="__other__"`.
 *
 * The exact per-session totals are in the usage records, not in metrics.
 *
 * @module
 */

import type client from "prom-client";
import type { Clock, TimerId } from "../util/clock.ts";

/** The label value used once `maxSeries` busy series exist. */
export const OVERFLOW_SESSION = "__other__";

interface Series {
  labels: { session_id: string; model_id: string };
  child: { inc(n: number): void };
  refs: number;
  lastUsed: number;
}

/** A counter child held by one generation. */
export interface SeriesLease {
  inc(n: number): void;
  release(): void;
}

/** Options of {@link SessionSeries}. */
export interface SessionSeriesOptions {
  counter: client.Counter<"session_id" | "model_id">;
  ttlMs: number;
  maxSeries: number;
  clock: Clock;
}

/** Tracks which session series are in use and expires idle ones. */
export class SessionSeries {
  #o: SessionSeriesOptions;
  // Map order is least recently used first: a touched entry is re-inserted.
  #series = new Map<string, Series>();
  #timer: TimerId | null = null;

  constructor(options: SessionSeriesOptions) {
    this.#o = options;
  }

  /** Number of live series. */
  get size(): number {
    return this.#series.size;
  }

  /** The series for a session and model, held until `release()`. */
  acquire(sessionId: string, modelId: string): SeriesLease {
    const key = `${sessionId}\u0000${modelId}`;
    let s = this.#series.get(key);
    if (s) {
      this.#series.delete(key);
    } else {
      if (this.#series.size >= this.#o.maxSeries && !this.#evictOne()) {
        return this.#overflow(modelId);
      }
      const labels = { session_id: sessionId, model_id: modelId };
      s = {
        labels,
        child: this.#o.counter.labels(labels),
        refs: 0,
        lastUsed: 0,
      };
    }
    s.refs++;
    s.lastUsed = this.#o.clock.now();
    this.#series.set(key, s);
    const series = s;
    let released = false;
    return {
      inc: (n) => series.child.inc(n),
      release: () => {
        if (released) return;
        released = true;
        series.refs--;
        series.lastUsed = this.#o.clock.now();
      },
    };
  }

  /** Removes series idle for longer than the TTL. */
  sweep(): void {
    const cutoff = this.#o.clock.now() - this.#o.ttlMs;
    for (const [key, s] of this.#series) {
      if (s.refs === 0 && s.lastUsed <= cutoff) this.#remove(key, s);
    }
  }

  /** Sweeps every `intervalMs` until {@link stop}. */
  start(intervalMs: number): void {
    const tick = () => {
      this.sweep();
      this.#timer = this.#o.clock.setTimeout(tick, intervalMs);
      if (typeof this.#timer === "number") Deno.unrefTimer(this.#timer);
    };
    this.#timer = this.#o.clock.setTimeout(tick, intervalMs);
    if (typeof this.#timer === "number") Deno.unrefTimer(this.#timer);
  }

  stop(): void {
    if (this.#timer !== null) this.#o.clock.clearTimeout(this.#timer);
  }

  #evictOne(): boolean {
    for (const [key, s] of this.#series) {
      if (s.refs === 0) {
        this.#remove(key, s);
        return true;
      }
    }
    return false;
  }

  #remove(key: string, s: Series): void {
    this.#series.delete(key);
    this.#o.counter.remove(s.labels);
  }

  #overflow(modelId: string): SeriesLease {
    const child = this.#o.counter.labels({
      session_id: OVERFLOW_SESSION,
      model_id: modelId,
    });
    return { inc: (n) => child.inc(n), release: () => {} };
  }
}
