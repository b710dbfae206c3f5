import { deepStrictEqual, equal } from "node:assert/strict";
import { concatBytes, FRAME, h2Frame } from "../../tests/helpers/h2_frame.ts";
import { ConnectionTap, tapSession } from "./connection_tap.ts";

const { DATA, HEADERS, WINDOW_UPDATE } = FRAME;
const PADDED = 0x8, END_STREAM = 0x1;
const frame = h2Frame;
const concat = (parts: Uint8Array[]) => concatBytes(...parts);

/** A tap watching streams 1 and 3, and what each was credited. */
function watched(): { tap: ConnectionTap; sent: Record<number, number[]> } {
  const tap = new ConnectionTap();
  const sent: Record<number, number[]> = { 1: [], 3: [] };
  tap.watch(1, { sent: (n) => sent[1].push(n) });
  tap.watch(3, { sent: (n) => sent[3].push(n) });
  return { tap, sent };
}

const total = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

// Stream 1 gets 100 + 7 data bytes, stream 3 gets 40 (padded with 10),
// with headers, a window update and an empty end-of-stream DATA between.
const WIRE = concat([
  frame(HEADERS, 0x4, 1, new Uint8Array(30)),
  frame(DATA, 0, 1, new Uint8Array(100).fill(1)),
  frame(WINDOW_UPDATE, 0, 0, new Uint8Array(4)),
  frame(
    DATA,
    PADDED,
    3,
    concat([new Uint8Array([10]), new Uint8Array(40), new Uint8Array(10)]),
  ),
  frame(DATA, 0, 1, new Uint8Array(7)),
  frame(DATA, END_STREAM, 1, new Uint8Array(0)),
  frame(DATA, 0, 5, new Uint8Array(64)),
]);

Deno.test("the tap credits each stream with exactly its DATA payload bytes, padding excluded", () => {
  const { tap, sent } = watched();
  tap.feed(WIRE);
  equal(total(sent[1]), 107);
  equal(total(sent[3]), 40);
});

Deno.test("the tap gives the same counts whatever the chunk boundaries, down to one byte", () => {
  for (const size of [1, 2, 3, 8, 9, 10, 31, 64]) {
    const { tap, sent } = watched();
    for (let i = 0; i < WIRE.length; i += size) {
      tap.feed(WIRE.subarray(i, i + size));
    }
    deepStrictEqual(
      [total(sent[1]), total(sent[3])],
      [107, 40],
      `chunks of ${size}`,
    );
  }
});

Deno.test("a stream the tap forgot, or never watched, is credited nothing", () => {
  const { tap, sent } = watched();
  tap.forget(3);
  tap.feed(WIRE);
  equal(total(sent[1]), 107);
  equal(sent[3].length, 0);
});

Deno.test("tapSession wraps the handle's getOutgoingChunk and passes every chunk through unchanged", () => {
  const kHandle = Symbol("kHandle");
  const chunks = [frame(DATA, 0, 1, new Uint8Array(12)), undefined];
  const handle = { getOutgoingChunk: () => chunks.shift() };
  const session = { [kHandle]: handle };

  const tap = tapSession(session)!;
  equal(tapSession(session), tap, "installed once per session");
  const sent: number[] = [];
  tap.watch(1, { sent: (n) => sent.push(n) });

  const first = handle.getOutgoingChunk() as Uint8Array;
  equal(first.length, 21);
  equal(handle.getOutgoingChunk(), undefined);
  deepStrictEqual(sent, [12]);
});

Deno.test("tapSession returns null for a session whose handle it does not know", () => {
  equal(tapSession({}), null);
  equal(tapSession({ [Symbol("kHandle")]: {} }), null);
  equal(tapSession(null), null);
});
