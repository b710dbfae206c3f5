import { deepStrictEqual, equal } from "node:assert/strict";
import { FrameDecoder } from "./framing.ts";
import { decodeSidecarMessage, decodeWorkerMessage } from "./messages.ts";

interface Vector {
  name: string;
  direction: "to_sidecar" | "to_worker";
  payload?: string;
  payload_hex?: string;
  length?: number;
  max_frame_bytes?: number;
  expect: { message?: unknown; error?: string };
}

const file = new URL(
  "../../tests/protocol_vectors/frames.json",
  import.meta.url,
);
const { cases } = JSON.parse(await Deno.readTextFile(file)) as {
  cases: Vector[];
};

function frameOf(v: Vector): Uint8Array {
  const payload = v.payload_hex !== undefined
    ? Uint8Array.from(v.payload_hex.match(/../g) ?? [], (h) => parseInt(h, 16))
    : new TextEncoder().encode(v.payload ?? "");
  const frame = new Uint8Array(4 + payload.length);
  new DataView(frame.buffer).setUint32(0, v.length ?? payload.length);
  frame.set(payload, 4);
  return frame;
}

for (const v of cases) {
  Deno.test(`protocol vector (${v.direction}): ${v.name}`, () => {
    const decoder = new FrameDecoder({
      maxFrameBytes: v.max_frame_bytes ?? 1048576,
    });
    decoder.push(frameOf(v));
    const frame = decoder.next();

    let outcome: { message?: unknown; error?: string };
    if (!frame.ok) {
      outcome = { error: frame.kind };
    } else if (frame.payload === null) {
      outcome = { error: "incomplete" };
    } else {
      const decode = v.direction === "to_sidecar"
        ? decodeWorkerMessage
        : decodeSidecarMessage;
      const msg = decode(frame.payload);
      outcome = msg.ok ? { message: msg.value } : { error: msg.kind };
    }

    if (v.expect.error !== undefined) {
      equal(outcome.error, v.expect.error);
    } else {
      deepStrictEqual(outcome.message, v.expect.message);
    }
  });
}

Deno.test("protocol vectors cover every failure kind", () => {
  const kinds = new Set(cases.map((v) => v.expect.error).filter(Boolean));
  deepStrictEqual([...kinds].sort(), [
    "bad_field",
    "bad_json",
    "bad_utf8",
    "missing_type",
    "not_object",
    "oversized",
    "unknown_type",
    "zero_length",
  ]);
});
