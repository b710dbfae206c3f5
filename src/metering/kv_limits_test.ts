import { equal, ok } from "node:assert/strict";
import * as v8 from "node:v8";
import { REQUEST_LIMITS, validateRequest } from "../gateway/validate.ts";
import type { GenerateRequestPb } from "../gateway/types.ts";
import { KV_LIMITS, MAX_RECORD_BYTES, recordBytes } from "./kv_limits.ts";
import { heavyLabels, testRecord } from "./test_support.ts";
import { jsonStringBytes } from "../util/utf8.ts";

/** The heaviest labels of one kind of character that validation allows. */
function labelsOf(char: string): Record<string, string> {
  const L = REQUEST_LIMITS;
  const bytesPerChar = jsonStringBytes(char);
  const unitsPerChar = char.length;
  const labels: Record<string, string> = {};
  let left = L.labelBytes;
  for (let i = 0; i < L.billingLabels; i++) {
    const key = String(i).padStart(2, "0") +
      char.repeat(Math.floor((L.labelKeyChars - 2) / unitsPerChar));
    const room = Math.floor(
      (left - jsonStringBytes(key)) / bytesPerChar,
    );
    const value = char.repeat(
      Math.max(0, Math.min(Math.floor(L.labelValueChars / unitsPerChar), room)),
    );
    const used = jsonStringBytes(key) + jsonStringBytes(value);
    if (used > left) break;
    labels[key] = value;
    left -= used;
  }
  return labels;
}

function request(labels: Record<string, string>): GenerateRequestPb {
  return {
    request_id: "r".repeat(REQUEST_LIMITS.idChars),
    session_id: "会".repeat(REQUEST_LIMITS.idChars),
    model_id: "模".repeat(REQUEST_LIMITS.idChars),
    prompt: "hi",
    messages: [],
    billing_labels: labels,
    timeout_ms: 0,
  } as unknown as GenerateRequestPb;
}

const KINDS = {
  ascii: "a",
  latin1: "é",
  cjk: "中",
  astral: "𝄞",
  // JSON escapes these: a quote takes 2 bytes, a control character 6.
  quote: '"',
  control: "\x01",
};

for (const [name, char] of Object.entries(KINDS)) {
  Deno.test(`the heaviest valid ${name} labels make a record under the limit, and the estimate never undercounts`, () => {
    const labels = labelsOf(char);
    const valid = validateRequest(request(labels));
    ok(valid.ok, !valid.ok ? valid.error.message : "");
    const record = testRecord({
      billing_labels: labels,
      session_id: "会".repeat(REQUEST_LIMITS.idChars),
      model_id: "模".repeat(REQUEST_LIMITS.idChars),
      request_id: "r".repeat(REQUEST_LIMITS.idChars),
    });
    const estimate = recordBytes(record);
    const actual = v8.serialize(record).length;
    ok(estimate >= actual, `estimate ${estimate} < V8's ${actual}`);
    ok(estimate <= MAX_RECORD_BYTES, `estimate ${estimate}`);
    ok(MAX_RECORD_BYTES < KV_LIMITS.valueBytes);
  });
}

Deno.test("validation refuses labels over 32 KiB as JSON strings in UTF-8, naming the limit", () => {
  const labels = heavyLabels();
  equal(validateRequest(request(labels)).ok, true, "exactly at the limit");
  const [first] = Object.keys(labels);
  labels[first] += "値";
  const result = validateRequest(request(labels));
  equal(result.ok, false);
  ok(!result.ok && /32768 bytes as JSON strings/.test(result.error.message));
});

Deno.test("labels of control characters are measured as JSON stores them, escaped", () => {
  // 64 labels of 128 + 256 control characters: 24 KiB of UTF-8, but 143
  // KiB once JSON escapes each one as \u0001.
  const labels: Record<string, string> = {};
  for (let i = 0; i < REQUEST_LIMITS.billingLabels; i++) {
    labels[String(i).padStart(2, "0") + "\x01".repeat(126)] = "\x01".repeat(
      256,
    );
  }
  const result = validateRequest(request(labels));
  equal(result.ok, false);
  ok(!result.ok && result.error.message.includes("billing_labels"));
  ok(!result.ok && /got 146816\b/.test(result.error.message));
});

Deno.test("the estimate covers small records with many short fields", () => {
  const labels: Record<string, string> = {};
  for (let i = 0; i < 64; i++) labels[`k${i}`] = "";
  const record = testRecord({
    billing_labels: labels,
    worker_completion_tokens: null,
  });
  ok(recordBytes(record) >= v8.serialize(record).length);
});
