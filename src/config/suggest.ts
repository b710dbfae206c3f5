/**
 * Picks the known name a mistyped one was most likely meant to be.
 *
 * @module
 */

/**
 * The candidate closest to `word` by edit distance (a swap of two neighbours
 * counts as one edit), if it is close enough to be a likely typo: one edit
 * for short words, up to three for long ones. Case and `-` versus `_` are
 * ignored.
 */
export function closest(
  word: string,
  candidates: readonly string[],
): string | undefined {
  const typed = normalize(word);
  const allowed = Math.min(3, Math.max(1, Math.floor(typed.length / 4)));
  let best: string | undefined;
  let bestDistance = allowed + 1;

  for (const candidate of candidates) {
    const distance = editDistance(typed, normalize(candidate));
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }

  return best;
}

function normalize(word: string): string {
  return word.toLowerCase().replaceAll("-", "_");
}

/** Optimal string alignment distance: insert, delete, replace, swap. */
function editDistance(a: string, b: string): number {
  const rows = Array.from(
    { length: a.length + 1 },
    (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i === 0 ? j : i),
  );

  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      rows[i][j] = Math.min(
        rows[i - 1][j] + 1,
        rows[i][j - 1] + 1,
        rows[i - 1][j - 1] + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        rows[i][j] = Math.min(rows[i][j], rows[i - 2][j - 2] + 1);
      }
    }
  }

  return rows[a.length][b.length];
}
