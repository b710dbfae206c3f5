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

/**
 * Bytes `s` takes inside a JSON string in UTF-8, as `JSON.stringify`
 * escapes it (a control character becomes `\u0001`, six bytes), without
 * the quotes. Usage records are stored and sent as JSON, so this is what a
 * label costs them.
 */
export function jsonStringBytes(s: string): number {
  return utf8Length(JSON.stringify(s)) - 2;
}
