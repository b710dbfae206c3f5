import { equal } from "node:assert/strict";
import { isoUtc } from "./iso_time.ts";

Deno.test("isoUtc writes what toISOString writes, edges and random times", () => {
  const edges = [
    0,
    1,
    999,
    1000,
    86_399_999,
    86_400_000,
    951_782_400_000, // 2000-02-29
    951_868_800_000, // 2000-03-01
    4_107_456_000_000, // 2100-02-28
    4_107_542_399_999,
    Date.UTC(2024, 1, 29, 23, 59, 59, 999),
    Date.UTC(9999, 11, 31, 23, 59, 59, 999),
    Date.now(),
    1.9, // a fraction is cut, as Date does
  ];
  for (const ms of edges) {
    equal(isoUtc(ms), new Date(ms).toISOString(), `${ms}`);
  }
  // Outside the four-digit years, Date's own answer.
  for (const ms of [-1, -62_198_755_200_000, 253_402_300_800_000]) {
    equal(isoUtc(ms), new Date(ms).toISOString(), `${ms}`);
  }
  let seed = 11;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let i = 0; i < 20_000; i++) {
    const ms = Math.floor(next() * next() * 253_402_300_799_999);
    equal(isoUtc(ms), new Date(ms).toISOString(), `${ms}`);
  }
});
