import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { encodeFrame, FrameDecoder } from "./framing.ts";

const text = new TextDecoder();

function drain(decoder: FrameDecoder): unknown[] {
  const out: unknown[] = [];
  for (;;) {
    const f = decoder.next();
    if (!f.ok) throw new Error(f.message);
    if (f.payload === null) return out;
    out.push(JSON.parse(text.decode(f.payload)));
  }
}

Deno.test("decoder reassembles frames delivered one byte at a time", () => {
  const msgs = [{ type: "pong", seq: 1 }, {
    type: "chunk",
    id: "a",
    text: "é世",
    token_ids: [1, 2],
  }];
  const bytes = new Uint8Array([
    ...encodeFrame(msgs[0]),
    ...encodeFrame(msgs[1]),
  ]);
  const decoder = new FrameDecoder({ maxFrameBytes: 1024 });
  const seen: unknown[] = [];
  for (const b of bytes) {
    decoder.push(new Uint8Array([b]));
    seen.push(...drain(decoder));
  }
  deepStrictEqual(seen, msgs);
  equal(decoder.buffered, 0);
});

Deno.test("decoder returns many frames from one read, in order", () => {
  const msgs = Array.from(
    { length: 500 },
    (_, i) => ({ type: "pong", seq: i }),
  );
  const decoder = new FrameDecoder({ maxFrameBytes: 1024 });
  decoder.push(new Uint8Array(msgs.flatMap((m) => [...encodeFrame(m)])));
  deepStrictEqual(drain(decoder), msgs);
});

Deno.test("decoder grows its buffer for a frame larger than the initial buffer, up to maxFrameBytes", () => {
  const big = {
    type: "chunk",
    id: "a",
    text: "x".repeat(300_000),
    token_ids: [1],
  };
  const decoder = new FrameDecoder({ maxFrameBytes: 400_000 });
  const frame = encodeFrame(big);
  for (let i = 0; i < frame.length; i += 8192) {
    decoder.push(frame.subarray(i, i + 8192));
  }
  deepStrictEqual(drain(decoder), [big]);
});

Deno.test("decoder reading into space() keeps partial frames across compaction", () => {
  const decoder = new FrameDecoder({ maxFrameBytes: 100_000 });
  const frames = Array.from(
    { length: 300 },
    (_, i) => encodeFrame({ type: "pong", seq: i, pad: "p".repeat(i * 3) }),
  );
  const stream = new Uint8Array(frames.flatMap((f) => [...f]));
  const seen: unknown[] = [];
  let offset = 0;
  while (offset < stream.length) {
    const room = decoder.space();
    const n = Math.min(room.length, 777, stream.length - offset);
    room.set(stream.subarray(offset, offset + n));
    decoder.commit(n);
    offset += n;
    seen.push(...drain(decoder));
  }
  equal(seen.length, 300);
  ok(seen.every((m, i) => (m as { seq: number }).seq === i));
});

Deno.test("decoder rejects a non-positive maxFrameBytes with a RangeError", () => {
  throws(() => new FrameDecoder({ maxFrameBytes: 0 }), RangeError);
});
