/**
 * UTF-8 sizes without encoding.
 *
 * @module
 */

/**
 * Bytes `s` takes as UTF-8, as `TextEncoder` writes it: a lone surrogate
 * becomes U+FFFD (3 bytes). Allocates nothing.
 */
export function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) {
      n += 1;
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        // A surrogate pair: four bytes for two UTF-16 units.
        n += 2;
        i++;
      } else {
        n += 2;
      }
    } else {
      n += 2;
    }
  }
  return n;
}

const PLAIN_JSON = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/**
 * Bytes `s` takes inside a JSON string in UTF-8, as `JSON.stringify`
 * escapes it, without the quotes: a quote, a backslash and the short
 * escapes (newline, tab, ...) take 2 bytes, other control characters and
 * lone surrogates 6 (a backslash, `u` and four hex digits). Usage records
 * are stored and sent as JSON, so this is what a label costs them.
 * Allocates nothing.
 */
export function jsonStringBytes(s: string): number {
  // Most strings (ids, model names, timestamps) are printable ASCII with
  // nothing to escape: one native regex test instead of a loop.
  if (PLAIN_JSON.test(s)) return s.length;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      if (c >= 0x20) n += c === 0x22 || c === 0x5c ? 2 : 1;
      else n += c === 8 || c === 9 || c === 10 || c === 12 || c === 13 ? 2 : 6;
    } else if (c < 0x800) {
      n += 2;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      const d = c <= 0xdbff && i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else {
        n += 6;
      }
    } else {
      n += 3;
    }
  }
  return n;
}

/**
 * Bytes `JSON.stringify(value)` takes in UTF-8, without building the
 * string: for the plain data of usage records (objects, arrays, strings,
 * finite numbers, booleans, null). Allocates nothing but for non-integer
 * numbers.
 */
export function jsonBytes(value: unknown): number {
  switch (typeof value) {
    case "string":
      return jsonStringBytes(value) + 2;
    case "number":
      return numberBytes(value);
    case "boolean":
      return value ? 4 : 5;
    case "object": {
      if (value === null) return 4;
      if (Array.isArray(value)) {
        let n = 2 + Math.max(0, value.length - 1);
        for (const v of value) n += v === undefined ? 4 : jsonBytes(v);
        return n;
      }
      let n = 2;
      let fields = 0;
      const o = value as Record<string, unknown>;
      for (const k in o) {
        if (!Object.hasOwn(o, k)) continue;
        const v = o[k];
        if (v === undefined || typeof v === "function") continue;
        n += jsonStringBytes(k) + 3 + jsonBytes(v);
        fields++;
      }
      return n + Math.max(0, fields - 1);
    }
    default:
      return 0;
  }
}

function numberBytes(v: number): number {
  if (!Number.isFinite(v)) return 4; // null
  if (!Number.isSafeInteger(v)) return String(v).length;
  let n = v < 0 ? 2 : 1;
  for (let a = Math.abs(v); a >= 10; a = Math.floor(a / 10)) n++;
  return n;
}
