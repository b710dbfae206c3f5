/**
 * Finds the line on which each table and key of a TOML document is written.
 * The TOML parser gives back values without positions, so problems found
 * after parsing are placed by scanning the text: `[table]` headers, and
 * `key =` lines (dotted keys too) under the header they follow.
 *
 * The scan is line-based and skips the inside of multi-line strings; keys
 * inside an inline table are placed on the line of the key that holds the
 * table. It is meant for documents the parser has already accepted.
 *
 * @module
 */

/** Maps a dotted key path (`server.bind_addr`) to its 1-based line. */
export type KeyLines = ReadonlyMap<string, number>;

const BARE_OR_QUOTED = String.raw`(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')`;
const DOTTED = String.raw`${BARE_OR_QUOTED}(?:\s*\.\s*${BARE_OR_QUOTED})*`;
const HEADER = new RegExp(String.raw`^\[\[?\s*(${DOTTED})\s*\]`);
const KEY = new RegExp(String.raw`^(${DOTTED})\s*=(.*)$`);
const PART = new RegExp(BARE_OR_QUOTED, "g");

/** Scans `text` for table headers and keys; the first line of each wins. */
export function findKeyLines(text: string): KeyLines {
  const found = new Map<string, number>();
  let table: string[] = [];
  let openString: string | undefined;

  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();

    if (openString !== undefined) {
      if (count(line, openString) % 2 === 1) openString = undefined;
      return;
    }

    const header = HEADER.exec(line);
    if (header) {
      table = splitKey(header[1]);
      remember(found, table, index + 1);
      return;
    }

    const assignment = KEY.exec(line);
    if (assignment) {
      remember(found, [...table, ...splitKey(assignment[1])], index + 1);
      openString = openedString(assignment[2]);
    }
  });

  return found;
}

/**
 * The line of a dotted key path, or of the nearest enclosing table or key
 * that was found (a key set inside an inline table has no line of its own).
 */
export function lineOf(lines: KeyLines, path: string): number | undefined {
  const parts = path.split(".");
  for (let length = parts.length; length > 0; length--) {
    const line = lines.get(parts.slice(0, length).join("."));
    if (line !== undefined) return line;
  }
  return undefined;
}

function splitKey(dotted: string): string[] {
  return (dotted.match(PART) ?? []).map((part) =>
    /^["']/.test(part) ? part.slice(1, -1) : part
  );
}

function remember(found: Map<string, number>, path: string[], line: number) {
  const name = path.join(".");
  if (!found.has(name)) found.set(name, line);
}

/** The delimiter of a multi-line string left open at the end of a line. */
function openedString(rest: string): string | undefined {
  for (const delimiter of ['"""', "'''"]) {
    if (count(rest, delimiter) % 2 === 1) return delimiter;
  }
  return undefined;
}

function count(text: string, delimiter: string): number {
  return text.split(delimiter).length - 1;
}
