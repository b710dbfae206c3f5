/**
 * Deno KV's limits on one atomic operation, a conservative estimate of how
 * much of them a usage record (or a chunk of records) takes, and a budget
 * that adds up what an operation being built takes.
 *
 * Deno KV refuses an atomic operation with more than 100 checks, more than
 * 1000 mutations, more than 81,920 bytes of keys, or more than 819,200 bytes
 * of keys and values together, and any value over 65,536 bytes. Over a
 * limit, `commit()` throws (a `TypeError`, e.g. "Too many checks (max
 * 100)") rather than resolving with `ok: false`. Values are measured as V8
 * serializes them: one byte per character for Latin-1 strings, two per
 * UTF-16 unit otherwise. UTF-8 takes at least as many bytes per character
 * (1, 2, 3 or 4 where V8 takes 1, 1, 2 or 4), so a UTF-8 measure plus a
 * margin per field never underestimates.
 *
 * @module
 */

import { jsonBytes, utf8Length } from "../util/utf8.ts";
import type { UsageRecord } from "./record.ts";

/** Deno KV's own limits (Deno 2.8.3), as its errors state them. */
export const KV_LIMITS = {
  checksPerAtomic: 100,
  mutationsPerAtomic: 1000,
  keyBytesPerAtomic: 81_920,
  bytesPerAtomic: 819_200,
  valueBytes: 65_536,
} as const;

/**
 * What one group commit of the usage queue may take. Well inside
 * {@link KV_LIMITS}, so that an estimate that is off by a few bytes per
 * record can never make a commit fail.
 */
export const COMMIT_BUDGET = {
  mutations: 800,
  keyBytes: 40 * 1024,
  bytes: 512 * 1024,
} as const;

/**
 * The largest record, by {@link recordBytes}, the queue accepts. Below
 * Deno KV's 64 KiB per value with room for the estimate's slack; gateway
 * validation keeps every valid request's record far below it
 * (docs/gateway-api.md, `billing_labels`).
 */
export const MAX_RECORD_BYTES = 60 * 1024;

/**
 * The largest chunk of pending records (chunk.ts), by {@link chunkBytes}:
 * the same 4 KiB of slack under Deno KV's 64 KiB per value as a record.
 * A record the queue accepts always fits a chunk alone, since
 * {@link MAX_RECORD_BYTES} counts two keys on top of the record. Larger
 * chunks would save little: at a few hundred bytes per record, a chunk of
 * 60 KiB already holds about a hundred.
 */
export const CHUNK_BYTES = MAX_RECORD_BYTES;

// A chunk's own framing ({ v: 1, records: [...] }) takes a header, two
// field names, a number and an array's length: far under this.
const CHUNK_FRAME_BYTES = 64;

// V8 spends at most a tag, a length and an alignment byte on each string
// and number where JSON spends quotes, a colon and a comma; this covers the
// difference per field, and the serializer's header, with room to spare.
const BYTES_PER_FIELD = 8;
const BYTES_PER_VALUE = 64;

/**
 * A conservative estimate of the bytes Deno KV counts for `record`: its
 * JSON's UTF-8 length (never below V8's serialization, see the module
 * doc) plus a margin per field, computed without building the JSON.
 */
export function recordBytes(record: UsageRecord): number {
  let fields = 0;
  for (const _ in record) fields++;
  for (const _ in record.billing_labels) fields += 2;
  return jsonBytes(record) + BYTES_PER_FIELD * fields + BYTES_PER_VALUE;
}

/** A conservative estimate of the bytes Deno KV counts for `key`. */
export function keyBytes(key: readonly (string | number)[]): number {
  // Each string part is a type byte, its bytes (a NUL escaped to two) and
  // a terminator; a number part takes a type byte and 8 bytes.
  let n = 0;
  for (const part of key) {
    n += typeof part === "number"
      ? 9
      : 2 + utf8Length(part) + part.split("\0").length - 1;
  }
  return n;
}

/**
 * A conservative estimate of the bytes Deno KV counts for a chunk whose
 * records' {@link recordBytes} add up to `recordsBytes`.
 */
export function chunkBytes(recordsBytes: number): number {
  return CHUNK_FRAME_BYTES + recordsBytes;
}

/** What one atomic operation takes of Deno KV's limits. */
export interface AtomicCost {
  checks: number;
  mutations: number;
  /** Bytes of the keys checked and written. */
  keyBytes: number;
  /** Bytes of the keys and values, by the estimates above. */
  bytes: number;
}

/**
 * Adds up the cost of an atomic operation being built, against
 * {@link COMMIT_BUDGET} (and Deno KV's 100 checks, which are counted
 * exactly) unless other limits are given.
 */
export class AtomicBudget {
  #limits: AtomicCost;
  #used: AtomicCost = { checks: 0, mutations: 0, keyBytes: 0, bytes: 0 };

  constructor(limits: Partial<AtomicCost> = {}) {
    this.#limits = {
      checks: KV_LIMITS.checksPerAtomic,
      ...COMMIT_BUDGET,
      ...limits,
    };
  }

  /** Whether `cost` still fits beside what was added. */
  fits(cost: AtomicCost): boolean {
    const u = this.#used;
    const l = this.#limits;
    return u.checks + cost.checks <= l.checks &&
      u.mutations + cost.mutations <= l.mutations &&
      u.keyBytes + cost.keyBytes <= l.keyBytes &&
      u.bytes + cost.bytes <= l.bytes;
  }

  /** Counts `cost` as taken. */
  add(cost: AtomicCost): void {
    this.#used.checks += cost.checks;
    this.#used.mutations += cost.mutations;
    this.#used.keyBytes += cost.keyBytes;
    this.#used.bytes += cost.bytes;
  }
}
