/**
 * Checks a gateway GenerateRequest and turns it into the worker-facing
 * request. Every rule names the field it is about, so the caller's
 * INVALID_ARGUMENT says exactly what to fix.
 *
 * @module
 */

import { SidecarError } from "../errors.ts";
import type { GenerationRequest } from "../worker/exchange.ts";
import type { Sampling } from "../worker/messages.ts";
import type { GenerateRequestPb } from "./types.ts";
import { jsonStringBytes } from "../util/utf8.ts";

/** Limits on request fields; generous, but each bounds memory per request. */
export const REQUEST_LIMITS = {
  idChars: 128,
  messages: 1024,
  stopSequences: 16,
  stopChars: 256,
  billingLabels: 64,
  labelKeyChars: 128,
  labelValueChars: 256,
  // Labels are stored with every usage record, as JSON, which Deno KV
  // caps at 64 KiB: 64 labels of 384 characters could take 73 KiB in
  // UTF-8 (and 147 KiB of control characters escaped), so their total as
  // JSON strings is capped too. Every plain ASCII label set the other
  // bounds allow (at most 24 KiB) fits.
  labelBytes: 32_768,
} as const;

/** A validated request plus what the sidecar itself keeps about it. */
export interface ValidatedRequest {
  generation: GenerationRequest;
  billingLabels: Record<string, string>;
  /** 0: no limit of its own. */
  timeoutMs: number;
}

const PRINTABLE_ASCII = /^[\x21-\x7e]+$/;

function invalid(field: string, problem: string): SidecarError {
  return new SidecarError("invalid_request", `${field}: ${problem}`);
}

/** Validates a request; the first problem found is returned as an error. */
export function validateRequest(
  pb: GenerateRequestPb,
): { ok: true; value: ValidatedRequest } | { ok: false; error: SidecarError } {
  const problem = findProblem(pb);
  if (problem) return { ok: false, error: problem };

  const s = pb.sampling;
  const sampling: Sampling = { max_tokens: s?.max_tokens ?? 0 };
  if (s?.temperature !== undefined) sampling.temperature = s.temperature;
  if (s?.top_p !== undefined) sampling.top_p = s.top_p;
  if (s && s.stop.length > 0) sampling.stop = s.stop;
  if (s?.seed !== undefined) sampling.seed = Number(s.seed);

  const generation: GenerationRequest = {
    id: pb.request_id,
    sessionId: pb.session_id,
    modelId: pb.model_id,
    sampling,
  };
  if (pb.messages.length > 0) {
    generation.messages = pb.messages.map((m) => ({
      role: m.role,
      content: m.content,
    }));
  } else {
    generation.prompt = pb.prompt;
  }
  return {
    ok: true,
    value: {
      generation,
      billingLabels: { ...pb.billing_labels },
      timeoutMs: pb.timeout_ms,
    },
  };
}

function labelBytes(labels: [string, string][]): number {
  let n = 0;
  for (const [k, v] of labels) n += jsonStringBytes(k) + jsonStringBytes(v);
  return n;
}

function findProblem(pb: GenerateRequestPb): SidecarError | null {
  const L = REQUEST_LIMITS;
  if (
    pb.request_id.length === 0 || pb.request_id.length > L.idChars ||
    !PRINTABLE_ASCII.test(pb.request_id)
  ) {
    return invalid(
      "request_id",
      `must be 1 to ${L.idChars} printable ASCII characters without spaces, got ${
        JSON.stringify(pb.request_id.slice(0, 40))
      }`,
    );
  }
  if (pb.session_id.length > L.idChars) {
    return invalid(
      "session_id",
      `must be at most ${L.idChars} characters, got ${pb.session_id.length}`,
    );
  }
  if (pb.model_id.length > L.idChars) {
    return invalid(
      "model_id",
      `must be at most ${L.idChars} characters, got ${pb.model_id.length}`,
    );
  }

  const hasPrompt = pb.prompt.length > 0;
  const hasMessages = pb.messages.length > 0;
  if (hasPrompt === hasMessages) {
    return invalid(
      "prompt",
      hasPrompt
        ? "set both prompt and messages; set exactly one"
        : "set prompt or messages",
    );
  }
  if (pb.messages.length > L.messages) {
    return invalid(
      "messages",
      `at most ${L.messages} messages, got ${pb.messages.length}`,
    );
  }
  const emptyRole = pb.messages.findIndex((m) => m.role.length === 0);
  if (emptyRole >= 0) {
    return invalid(`messages[${emptyRole}].role`, "must not be empty");
  }

  const s = pb.sampling;
  if (s) {
    if (
      s.temperature !== undefined &&
      !(Number.isFinite(s.temperature) && s.temperature >= 0)
    ) {
      return invalid(
        "sampling.temperature",
        `must be a finite number >= 0, got ${s.temperature}`,
      );
    }
    if (s.top_p !== undefined && !(s.top_p > 0 && s.top_p <= 1)) {
      return invalid("sampling.top_p", `must be in (0, 1], got ${s.top_p}`);
    }
    if (s.stop.length > L.stopSequences) {
      return invalid(
        "sampling.stop",
        `at most ${L.stopSequences} sequences, got ${s.stop.length}`,
      );
    }
    const badStop = s.stop.findIndex((x) =>
      x.length === 0 || x.length > L.stopChars
    );
    if (badStop >= 0) {
      return invalid(
        `sampling.stop[${badStop}]`,
        `must be 1 to ${L.stopChars} characters`,
      );
    }
    if (
      s.seed !== undefined &&
      !(BigInt(s.seed) <= BigInt(Number.MAX_SAFE_INTEGER))
    ) {
      return invalid(
        "sampling.seed",
        `must be at most ${Number.MAX_SAFE_INTEGER}, got ${s.seed}`,
      );
    }
  }

  const labels = Object.entries(pb.billing_labels);
  if (labels.length > L.billingLabels) {
    return invalid(
      "billing_labels",
      `at most ${L.billingLabels} labels, got ${labels.length}`,
    );
  }
  for (const [k, v] of labels) {
    if (k.length === 0 || k.length > L.labelKeyChars) {
      return invalid(
        "billing_labels",
        `keys must be 1 to ${L.labelKeyChars} characters, got ${
          JSON.stringify(k.slice(0, 40))
        }`,
      );
    }
    if (v.length > L.labelValueChars) {
      return invalid(
        `billing_labels[${JSON.stringify(k)}]`,
        `must be at most ${L.labelValueChars} characters`,
      );
    }
  }
  const bytes = labelBytes(labels);
  if (bytes > L.labelBytes) {
    return invalid(
      "billing_labels",
      `keys and values together must be at most ${L.labelBytes} bytes as JSON strings in UTF-8, got ${bytes}`,
    );
  }
  return null;
}
