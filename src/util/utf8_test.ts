import { equal } from "node:assert/strict";
import { jsonBytes, jsonStringBytes, utf8Length } from "./utf8.ts";

Deno.test("utf8Length counts what TextEncoder writes, surrogates included", () => {
  const enc = new TextEncoder();
  for (
    const s of [
      "",
      "ascii only",
      "é ü ß",
      "日本語テキスト",
      "🙂 emoji 👍🏽",
      "\ud800 lone high",
      "lone low \udc00",
      "\ud800",
      "\udfff\ud800",
      "x".repeat(1000) + "\u07ff\u0800\uffff",
    ]
  ) {
    equal(utf8Length(s), enc.encode(s).length, JSON.stringify(s));
  }
});

const AWKWARD = [
  "",
  "plain",
  'quote " and backslash \\',
  "\b\f\n\r\t short escapes",
  "\x00\x01\x1f\x7f controls",
  "é 日本 🙂 👍🏽",
  "\ud800 lone high",
  "lone low \udc00",
  "\udfff\ud800",
  "\u2028\u2029 separators",
];

Deno.test("jsonStringBytes and jsonBytes count exactly what JSON.stringify writes", () => {
  const enc = new TextEncoder();
  const bytes = (v: unknown) => enc.encode(JSON.stringify(v)).length;
  for (const s of AWKWARD) {
    equal(jsonStringBytes(s), bytes(s) - 2, JSON.stringify(s));
  }
  const values: unknown[] = [
    null,
    true,
    false,
    0,
    -1,
    7,
    10,
    99,
    100,
    -1234567,
    Number.MAX_SAFE_INTEGER,
    1e21,
    0.5,
    -3.25e-9,
    NaN,
    [],
    [1, "a", null, [2]],
    {},
    { a: 1, b: undefined, c: "x" },
    Object.fromEntries(AWKWARD.map((s, i) => [s, i % 2 ? s : i])),
    {
      id: "0193a0b0-0000-7000-8000-000000000000",
      billing_labels: { customer: "acme", "ключ": "значение" },
      prompt_tokens: 12,
      worker_completion_tokens: null,
      started_at: "2026-12-04T03:30:07.515Z",
    },
  ];
  for (const v of values) equal(jsonBytes(v), bytes(v), JSON.stringify(v));

  // Random strings over the awkward ranges.
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const ranges = [[0, 0x20], [0x20, 0x80], [0x80, 0x800], [0xd800, 0xe000], [
    0xe000,
    0x10000,
  ]];
  for (let round = 0; round < 500; round++) {
    let s = "";
    for (let i = 0; i < 12; i++) {
      const [lo, hi] = ranges[Math.floor(next() * ranges.length)];
      s += String.fromCharCode(lo + Math.floor(next() * (hi - lo)));
    }
    equal(jsonStringBytes(s), bytes(s) - 2, JSON.stringify(s));
    equal(jsonBytes({ [s]: s }), bytes({ [s]: s }));
  }
});
