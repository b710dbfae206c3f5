import { equal } from "node:assert/strict";
import { utf8Length } from "./utf8.ts";

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
