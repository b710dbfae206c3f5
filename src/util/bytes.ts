/**
 * Byte-array helpers shared by the gateway and worker sides.
 *
 * @module
 */

/** `parts` in one array; `total` is the sum of their lengths. */
export function concatBytes(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
