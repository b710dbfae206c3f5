import { equal, ok, throws } from "node:assert/strict";
import { backoffDelayMs } from "./backoff.ts";

const low = () => 0;
const high = () => 0.999_999;

Deno.test("backoffDelayMs waits exactly the base delay before the first retry", () => {
  for (const random of [low, high, Math.random]) {
    equal(
      backoffDelayMs(1, { baseDelayMs: 2000, maxDelayMs: 30_000, random }),
      2000,
    );
  }
});

Deno.test("backoffDelayMs keeps later retries between half the doubled step and the step", () => {
  const o = { baseDelayMs: 2000, maxDelayMs: 30_000 };
  // attempt: [lowest, highest]
  const bounds: Record<number, [number, number]> = {
    2: [2000, 4000],
    3: [4000, 8000],
    4: [8000, 16_000],
    // Capped: 2000 * 2^4 = 32000 > 30000.
    5: [15_000, 30_000],
  };
  for (const [attempt, [lo, hi]] of Object.entries(bounds)) {
    const n = Number(attempt);
    equal(backoffDelayMs(n, { ...o, random: low }), lo, `attempt ${n} low`);
    equal(backoffDelayMs(n, { ...o, random: high }), hi, `attempt ${n} high`);
  }
});

Deno.test("backoffDelayMs never goes below the base delay nor above the cap", () => {
  const o = { baseDelayMs: 100, maxDelayMs: 500 };
  for (let attempt = 1; attempt <= 200; attempt++) {
    for (const r of [0, 0.25, 0.5, 0.75, 0.999_999]) {
      const d = backoffDelayMs(attempt, { ...o, random: () => r });
      ok(d >= 100 && d <= 500, `attempt ${attempt}, random ${r}: ${d}`);
    }
  }
});

Deno.test("backoffDelayMs at the cap jitters over its upper half", () => {
  const o = { baseDelayMs: 100, maxDelayMs: 500 };
  equal(backoffDelayMs(50, { ...o, random: low }), 250);
  equal(backoffDelayMs(50, { ...o, random: high }), 500);
  equal(backoffDelayMs(50, { ...o, random: () => 0.5 }), 375);
});

Deno.test("backoffDelayMs with a cap equal to the base always waits the base", () => {
  for (let attempt = 1; attempt <= 5; attempt++) {
    equal(
      backoffDelayMs(attempt, {
        baseDelayMs: 300,
        maxDelayMs: 300,
        random: high,
      }),
      300,
    );
  }
});

Deno.test("backoffDelayMs rejects a bad attempt number or bad delays", () => {
  const o = { baseDelayMs: 100, maxDelayMs: 500 };
  throws(() => backoffDelayMs(0, o), RangeError);
  throws(() => backoffDelayMs(1.5, o), RangeError);
  throws(
    () => backoffDelayMs(1, { baseDelayMs: 0, maxDelayMs: 500 }),
    RangeError,
  );
  throws(
    () => backoffDelayMs(1, { baseDelayMs: 100, maxDelayMs: 50 }),
    /maxDelayMs must be finite and >= baseDelayMs \(100\), got 50/,
  );
  throws(
    () => backoffDelayMs(1, { baseDelayMs: 100, maxDelayMs: Infinity }),
    RangeError,
  );
});
