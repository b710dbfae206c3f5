import { deepStrictEqual, equal, throws } from "node:assert/strict";
import protobuf from "protobufjs";
import {
  encodeEventMessage,
  GRPC_PREFIX_BYTES,
  serializeEvent,
} from "./event_codec.ts";
import { SIDECAR_PROTO } from "./proto_source.ts";
import type { GenerateEventPb } from "./types.ts";

const root = protobuf.parse(SIDECAR_PROTO, { keepCase: true }).root;
const GenerateEvent = root.lookupType("cy.sidecar.v1.GenerateEvent");

/** What protobufjs decodes, with defaults filled in, as plain JSON. */
function decoded(bytes: Uint8Array): unknown {
  return GenerateEvent.toObject(GenerateEvent.decode(bytes), {
    defaults: true,
    enums: String,
    oneofs: true,
  });
}

/**
 * What protobufjs's own encoder produces for the same event, decoded; with
 * lone surrogates replaced first, as a well-formed UTF-8 encoder must.
 */
function reference(ev: GenerateEventPb): unknown {
  const wellFormed = JSON.parse(
    JSON.stringify(ev),
    (_k, v) => typeof v === "string" ? v.toWellFormed() : v,
  );
  return decoded(
    GenerateEvent.encode(GenerateEvent.fromObject(wellFormed)).finish(),
  );
}

const CASES: [string, GenerateEventPb][] = [
  ["a one-token chunk", {
    request_id: "req-1",
    chunk: { text: "Hello", token_ids: [9906] },
  }],
  ["a chunk with several tokens across varint sizes", {
    request_id: "r",
    chunk: {
      text: " world",
      token_ids: [0, 1, 127, 128, 16383, 16384, 2 ** 21, 2 ** 28, 2 ** 32 - 1],
    },
  }],
  ["a chunk with no text and no tokens", {
    request_id: "r",
    chunk: { text: "", token_ids: [] },
  }],
  ["a chunk in several scripts, emoji and a lone surrogate", {
    request_id: "sess/é",
    chunk: { text: "naïve 日本語 🙂 \ud800 x", token_ids: [1, 2] },
  }],
  ["a long text (a two-byte length)", {
    request_id: "r",
    chunk: { text: "x".repeat(300) + "ü".repeat(100), token_ids: [5] },
  }],
  ["a reloading system message", {
    request_id: "r",
    system: {
      kind: "RELOADING",
      text: "[System] Loading new model, ETA 30s...",
      eta_ms: 30_000,
    },
  }],
  ["a resumed system message without an ETA", {
    request_id: "r",
    system: { kind: "RESUMED", text: "[System] resumed", eta_ms: 0 },
  }],
  ["a done with usage", {
    request_id: "r",
    done: {
      finish_reason: "stop",
      usage: { prompt_tokens: 12, completion_tokens: 300 },
      model_id: "llama-3-8b",
    },
  }],
  ["a done with zero usage", {
    request_id: "r",
    done: {
      finish_reason: "cancelled",
      usage: { prompt_tokens: 0, completion_tokens: 0 },
      model_id: "",
    },
  }],
  ["an error with a retry hint and usage", {
    request_id: "r",
    error: {
      code: 14,
      message: "Worker is restarting, please retry in 2s",
      retry_after_ms: 2000,
      usage: { prompt_tokens: 3, completion_tokens: 7 },
    },
  }],
  ["an error with nothing delivered", {
    request_id: "",
    error: {
      code: 3,
      message: "prompt: must not be empty",
      retry_after_ms: 0,
      usage: { prompt_tokens: 0, completion_tokens: 0 },
    },
  }],
];

for (const [name, ev] of CASES) {
  Deno.test(`encodeEventMessage: ${name} decodes as protobufjs's own encoding does`, () => {
    const msg = encodeEventMessage(ev);
    const body = msg.subarray(GRPC_PREFIX_BYTES);

    equal(msg[0], 0, "uncompressed flag");
    equal(new DataView(msg.buffer, msg.byteOffset).getUint32(1), body.length);
    deepStrictEqual(decoded(body), reference(ev));
    deepStrictEqual(new Uint8Array(serializeEvent(ev)), new Uint8Array(body));
  });
}

Deno.test("encodeEventMessage refuses a token id or count that is not a uint32", () => {
  throws(
    () =>
      encodeEventMessage({
        request_id: "r",
        chunk: { text: "", token_ids: [2 ** 32] },
      }),
    RangeError,
  );
  throws(
    () =>
      encodeEventMessage({
        request_id: "r",
        chunk: { text: "", token_ids: [-1] },
      }),
    RangeError,
  );
  throws(
    () =>
      encodeEventMessage({
        request_id: "r",
        done: {
          finish_reason: "stop",
          usage: { prompt_tokens: 1.5, completion_tokens: 0 },
          model_id: "",
        },
      }),
    /prompt_tokens must be a uint32/,
  );
});

Deno.test("encodeEventMessage rounds and clamps hints (ETA, retry delay) rather than failing the event", () => {
  const back = (ev: GenerateEventPb) =>
    decoded(encodeEventMessage(ev).subarray(GRPC_PREFIX_BYTES)) as Record<
      string,
      Record<string, number>
    >;
  equal(
    back({
      request_id: "r",
      error: {
        code: 14,
        message: "m",
        retry_after_ms: 1234.6,
        usage: { prompt_tokens: 0, completion_tokens: 0 },
      },
    }).error.retry_after_ms,
    1235,
  );
  equal(
    back({
      request_id: "r",
      system: { kind: "RELOADING", text: "t", eta_ms: 2 ** 40 },
    }).system.eta_ms,
    2 ** 32 - 1,
  );
  equal(
    back({
      request_id: "r",
      system: { kind: "RELOADING", text: "t", eta_ms: -5 },
    }).system.eta_ms,
    0,
  );
});
