/**
 * RFC 3339 UTC timestamps with milliseconds, as `Date.prototype.toISOString`
 * writes them, without a `Date`: a usage record carries two, and
 * `toISOString` costs about twice as much (0.7 µs against 0.3 µs here).
 *
 * @module
 */

const DAY_MS = 86_400_000;
// The last millisecond `toISOString` writes with a four-digit year.
const MAX_FOUR_DIGIT_MS = 253_402_300_799_999;

function pad2(n: number): string {
  return n < 10 ? "0" + n : "" + n;
}

/**
 * `new Date(ms).toISOString()` for `ms` from 1970 to the year 9999 (the
 * same call outside that range, or for a time `Date` cannot hold).
 */
export function isoUtc(ms: number): string {
  if (!(ms >= 0 && ms <= MAX_FOUR_DIGIT_MS)) return new Date(ms).toISOString();
  const t = Math.floor(ms);
  const days = Math.floor(t / DAY_MS);
  let rest = t - days * DAY_MS;
  // Civil date from days since 1970-01-01, in eras of 400 years that start
  // on March 1st (so that a leap day ends its year).
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor(
    (doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) -
      Math.floor(doe / 146_096)) / 365,
  );
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  const h = Math.floor(rest / 3_600_000);
  rest -= h * 3_600_000;
  const m = Math.floor(rest / 60_000);
  rest -= m * 60_000;
  const s = Math.floor(rest / 1000);
  const f = rest - s * 1000;
  return (year < 1000 ? String(year).padStart(4, "0") : "" + year) + "-" +
    pad2(month) + "-" + pad2(day) + "T" + pad2(h) + ":" + pad2(m) + ":" +
    pad2(s) + "." + (f < 10 ? "00" + f : f < 100 ? "0" + f : "" + f) + "Z";
}
