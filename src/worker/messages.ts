/**
 * The messages of worker protocol version 1 (docs/worker-protocol.md) and
 * their validation. Validators return a typed message or a described
 * failure; the connection decides what a failure does.
 *
 * @module
 */

import { type FrameFailure, parsePayload } from "./framing.ts";

/** Protocol versions this sidecar speaks, newest last. */
export const PROTOCOL_VERSIONS = [1, 2] as const;

/** The worker's announced state. */
export type WorkerAnnouncedState = "ready" | "reloading" | "draining";

/** Sampling parameters as sent to the worker. */
export interface Sampling {
  max_tokens: number;
  temperature?: number;
  top_p?: number;
  stop?: string[];
  seed?: number;
}

/** A chat message as sent to the worker. */
export interface ChatMessage {
  role: string;
  content: string;
}

// ---- sidecar → worker ----

export interface HelloMsg {
  type: "hello";
  versions: number[];
  /** Optional in the protocol; this sidecar always sends it. */
  sidecar?: string;
  max_frame_bytes: number;
  /** Optional in the protocol, >= 0; this sidecar always sends it. */
  heartbeat_interval_ms?: number;
}

export interface GenerateMsg {
  type: "generate";
  id: string;
  session_id: string;
  model_id: string;
  prompt?: string;
  messages?: ChatMessage[];
  sampling: Sampling;
  credit: number;
}

export interface CancelMsg {
  type: "cancel";
  id: string;
  reason: CancelReason;
}

/** Why the sidecar cancels a generation (informative for the worker). */
export type CancelReason =
  | "client_cancelled"
  | "deadline_exceeded"
  | "shutdown"
  | "idle_timeout"
  | "protocol";

export interface CreditMsg {
  type: "credit";
  id: string;
  chunks: number;
}

/** A `credit` without `type`: one item of a `credits` frame. */
export type CreditItem = Omit<CreditMsg, "type">;

/**
 * Credit for several generations in one frame (protocol version 2): the
 * grants the sidecar made in one tick, one item per generation.
 */
export interface CreditsMsg {
  type: "credits";
  items: CreditItem[];
}

export interface PingMsg {
  type: "ping";
  seq: number;
}

/** `code` of the `error` the sidecar sends before closing over a protocol error. */
export const PROTOCOL_ERROR_CODE = "protocol";

/** Sent without `id` just before the sidecar closes over a protocol error. */
export interface SidecarErrorMsg {
  type: "error";
  code: string;
  message: string;
}

/** Any message the sidecar sends. */
export type SidecarMessage =
  | HelloMsg
  | GenerateMsg
  | CancelMsg
  | CreditMsg
  | CreditsMsg
  | PingMsg
  | SidecarErrorMsg;

// ---- worker → sidecar ----

export interface WelcomeMsg {
  type: "welcome";
  version: number;
  worker: string;
  model_id: string;
  max_concurrency: number;
  max_frame_bytes: number;
  state: WorkerAnnouncedState;
  eta_ms?: number;
}

export interface ChunkMsg {
  type: "chunk";
  id: string;
  text: string;
  token_ids: number[];
  /** On the first chunk: the prompt's token count, known after prefill. */
  prompt_tokens?: number;
}

/** The members of a chunk, which a `chunks` item carries without `type`. */
export type ChunkItem = Omit<ChunkMsg, "type">;

/**
 * Several chunks in one frame (protocol version 2): what a worker's turn
 * produced for several generations, each item a `chunk` without its
 * `type`, in order.
 */
export interface ChunksMsg {
  type: "chunks";
  items: ChunkItem[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

export interface DoneMsg {
  type: "done";
  id: string;
  finish_reason: string;
  usage: Usage;
}

export interface ErrorMsg {
  type: "error";
  id?: string;
  code: string;
  message: string;
}

export interface StatusMsg {
  type: "status";
  state: WorkerAnnouncedState;
  eta_ms?: number;
  model_id?: string;
  max_concurrency?: number;
  message?: string;
}

export interface PongMsg {
  type: "pong";
  seq: number;
}

/** Any message the worker sends. */
export type WorkerMessage =
  | WelcomeMsg
  | ChunkMsg
  | ChunksMsg
  | DoneMsg
  | ErrorMsg
  | StatusMsg
  | PongMsg;

/** A validated message, or why it is not one. */
export type Validated<T> = { ok: true; value: T } | FrameFailure;

type Obj = Record<string, unknown>;

const MAX_ID_CHARS = 128;

/**
 * The largest value of a protobuf `uint32`. Every number the worker sends
 * that reaches a `uint32` field of the gateway API (token ids and counts,
 * `eta_ms`, `max_concurrency`) is bounded by it here, so a value the
 * gateway's encoder cannot write is a protocol error of that frame rather
 * than a failure while sending it on.
 */
export const UINT32_MAX = 0xffff_ffff;

class FieldError extends Error {
  /** The problem, without the message type it was found in. */
  readonly detail: string;
  constructor(type: string, detail: string) {
    super(`${type}: ${detail}`);
    this.detail = detail;
  }
}

function fail(type: string, detail: string): never {
  throw new FieldError(type, detail);
}

function str(m: Obj, key: string, opts: { nonEmpty?: boolean } = {}): string {
  const v = m[key];
  if (typeof v !== "string") {
    fail(m.type as string, `"${key}" must be a string`);
  }
  if (opts.nonEmpty && v.length === 0) {
    fail(m.type as string, `"${key}" must not be empty`);
  }
  return v;
}

function optStr(m: Obj, key: string): void {
  if (m[key] !== undefined) str(m, key);
}

function id(m: Obj): string {
  const v = str(m, "id", { nonEmpty: true });
  if (v.length > MAX_ID_CHARS) {
    fail(m.type as string, `"id" is longer than ${MAX_ID_CHARS} characters`);
  }
  return v;
}

function int(
  m: Obj,
  key: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const v = m[key];
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    fail(
      m.type as string,
      `"${key}" must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

function optInt(m: Obj, key: string, min: number, max?: number): void {
  if (m[key] !== undefined) int(m, key, min, max);
}

function state(m: Obj): void {
  const v = m.state;
  if (v !== "ready" && v !== "reloading" && v !== "draining") {
    fail(
      m.type as string,
      `"state" must be "ready", "reloading" or "draining", got ${
        JSON.stringify(v)
      }`,
    );
  }
}

function obj(m: Obj, key: string): Obj {
  const v = m[key];
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    fail(m.type as string, `"${key}" must be an object`);
  }
  return { type: m.type, ...(v as Obj) };
}

function tokenIds(m: Obj): number[] {
  const v = m.token_ids;
  if (!Array.isArray(v)) fail("chunk", `"token_ids" must be an array`);
  for (let i = 0; i < v.length; i++) {
    const t = v[i];
    if (
      typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > UINT32_MAX
    ) {
      fail(
        "chunk",
        `"token_ids"[${i}] must be an integer in 0..${UINT32_MAX}, got ${
          JSON.stringify(t)
        }`,
      );
    }
  }
  return v as number[];
}

/**
 * Checks the `items` of a batch frame (`chunks`, `credits`): a non-empty
 * array of objects, each valid by `check` as the single frame it stands
 * for, without its `type`.
 */
function items(m: Obj, check: (item: Obj) => void): void {
  const type = m.type as string;
  const list = m.items;
  if (!Array.isArray(list) || list.length === 0) {
    fail(type, `"items" must be a non-empty array`);
  }
  for (let i = 0; i < list.length; i++) {
    const item = list[i];
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      fail(type, `"items"[${i}] must be an object`);
    }
    try {
      check(item as Obj);
    } catch (err) {
      if (!(err instanceof FieldError)) throw err;
      fail(type, `"items"[${i}]: ${err.detail}`);
    }
  }
}

const workerChecks: Record<string, (m: Obj) => void> = {
  welcome(m) {
    int(m, "version", 1);
    str(m, "worker");
    str(m, "model_id", { nonEmpty: true });
    int(m, "max_concurrency", 1, UINT32_MAX);
    int(m, "max_frame_bytes", 1024);
    state(m);
    optInt(m, "eta_ms", 0, UINT32_MAX);
  },
  chunk(m) {
    id(m);
    const text = str(m, "text");
    optInt(m, "prompt_tokens", 0, UINT32_MAX);
    if (tokenIds(m).length === 0 && text.length === 0) {
      fail("chunk", "a chunk must carry token ids or text");
    }
  },
  chunks(m) {
    items(m, (item) => workerChecks.chunk(item));
  },
  done(m) {
    id(m);
    str(m, "finish_reason", { nonEmpty: true });
    const usage = obj(m, "usage");
    int(usage, "prompt_tokens", 0, UINT32_MAX);
    int(usage, "completion_tokens", 0, UINT32_MAX);
  },
  error(m) {
    if (m.id !== undefined) id(m);
    str(m, "code", { nonEmpty: true });
    str(m, "message");
  },
  status(m) {
    state(m);
    optInt(m, "eta_ms", 0, UINT32_MAX);
    if (m.model_id !== undefined) str(m, "model_id", { nonEmpty: true });
    optInt(m, "max_concurrency", 1, UINT32_MAX);
    optStr(m, "message");
  },
  pong(m) {
    int(m, "seq", 0);
  },
};

const sidecarChecks: Record<string, (m: Obj) => void> = {
  hello(m) {
    const versions = m.versions;
    if (
      !Array.isArray(versions) || versions.length === 0 ||
      !versions.every((v) => Number.isInteger(v) && v >= 1)
    ) {
      fail("hello", `"versions" must be a non-empty array of integers >= 1`);
    }
    optStr(m, "sidecar");
    int(m, "max_frame_bytes", 1024);
    optInt(m, "heartbeat_interval_ms", 0);
  },
  generate(m) {
    id(m);
    str(m, "session_id");
    str(m, "model_id");
    const hasPrompt = m.prompt !== undefined;
    const hasMessages = m.messages !== undefined;
    if (hasPrompt === hasMessages) {
      fail(
        "generate",
        `exactly one of "prompt" and "messages" must be present`,
      );
    }
    if (hasPrompt) str(m, "prompt");
    if (hasMessages) {
      const list = m.messages;
      if (!Array.isArray(list)) fail("generate", `"messages" must be an array`);
      for (const entry of list) {
        if (typeof entry !== "object" || entry === null) {
          fail("generate", `"messages" entries must be objects`);
        }
        const e = { type: "generate", ...(entry as Obj) };
        str(e, "role");
        str(e, "content");
      }
    }
    const sampling = obj(m, "sampling");
    int(sampling, "max_tokens", 0, UINT32_MAX);
    int(m, "credit", 1);
  },
  cancel(m) {
    id(m);
    str(m, "reason");
  },
  credit(m) {
    id(m);
    int(m, "chunks", 1);
  },
  credits(m) {
    items(m, (item) => sidecarChecks.credit(item));
  },
  ping(m) {
    int(m, "seq", 0);
  },
  error(m) {
    if (m.id !== undefined) id(m);
    str(m, "code");
    str(m, "message");
  },
};

function validate<T>(
  payload: Uint8Array,
  checks: Record<string, (m: Obj) => void>,
): Validated<T> {
  const parsed = parsePayload(payload);
  if (!parsed.ok) return parsed;
  const m = parsed.value;
  const check = Object.hasOwn(checks, m.type) ? checks[m.type] : undefined;
  if (!check) {
    return {
      ok: false,
      kind: "unknown_type",
      message: `unknown message type ${JSON.stringify(m.type)}`,
    };
  }
  try {
    check(m);
  } catch (err) {
    if (err instanceof FieldError) {
      return { ok: false, kind: "bad_field", message: err.message };
    }
    throw err;
  }
  return { ok: true, value: m as T };
}

/** Decodes and validates a frame payload sent by the worker. */
export function decodeWorkerMessage(
  payload: Uint8Array,
): Validated<WorkerMessage> {
  return validate<WorkerMessage>(payload, workerChecks);
}

/** Decodes and validates a frame payload sent by a sidecar (tests, tools). */
export function decodeSidecarMessage(
  payload: Uint8Array,
): Validated<SidecarMessage> {
  return validate<SidecarMessage>(payload, sidecarChecks);
}
