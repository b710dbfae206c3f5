/**
 * Summarizes a V8 CPU profile (`deno run --cpu-prof`): where the sidecar's
 * CPU time went, by function and by source file, so that a missed CPU
 * target comes with the place to look. Self time says which code is hot;
 * time with callees included, by file and directory of `src/`, says what a
 * concern of the sidecar (metering, say) costs in all, native work it
 * calls (a Deno KV write, V8 serialization) included.
 *
 * @module
 */

interface ProfileNode {
  id: number;
  callFrame: {
    functionName: string;
    url: string;
    lineNumber: number;
  };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

/** One line of a summary: a name and its share of the busy samples. */
export interface Share {
  name: string;
  pct: number;
  ms: number;
}

/** What a profile says, in short. */
export interface ProfileSummary {
  /** Wall time the profile covers, start-up included. */
  durationMs: number;
  /** Samples with the process on CPU (neither idle nor in "program"). */
  busyMs: number;
  functions: Share[];
  files: Share[];
  /**
   * Each of the sidecar's own files and directories under `src/`
   * (directories end in `/`), with the busy samples whose stack passes
   * through it: callees included, each sample counted once per entry.
   */
  inclusive: Share[];
}

// Samples that are not JavaScript or native work of the sidecar's own.
const NOT_BUSY = new Set(["(idle)", "(program)", "(root)"]);

/** Shortens a script URL to what identifies it: the repo path or package. */
function fileOf(url: string): string {
  if (!url) return "[native code]";
  // Packages first: grpc-js has a src/ directory of its own.
  const npm = url.match(
    /registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\/[^/]+\/(.+)$/,
  );
  if (npm) return `npm:${npm[1]}/${npm[2]}`;
  const src = url.match(/\/(src\/.+)$/);
  if (src) return src[1];
  return url.replace(/^file:\/\/.*\/main\//, "");
}

/** A `src/` file and each directory above it: `src/a/b.ts`, `src/a/`, `src/`. */
function ownEntries(file: string): string[] {
  if (!file.startsWith("src/")) return [];
  const entries = [file];
  for (let i = file.lastIndexOf("/"); i > 0; i = file.lastIndexOf("/", i - 1)) {
    entries.push(file.slice(0, i + 1));
  }
  return entries;
}

/** Summarizes the profile at `path`, keeping the top `top` entries. */
export async function summarizeProfile(
  path: string,
  top = 15,
): Promise<ProfileSummary> {
  const profile = JSON.parse(await Deno.readTextFile(path)) as CpuProfile;
  const durationMs = (profile.endTime - profile.startTime) / 1000;
  const totalHits = profile.nodes.reduce((a, n) => a + (n.hitCount ?? 0), 0);
  const msPerHit = totalHits ? durationMs / totalHits : 0;

  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  let busy = 0;
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (!hits || NOT_BUSY.has(n.callFrame.functionName)) continue;
    busy += hits;
    const file = fileOf(n.callFrame.url);
    const fn = `${n.callFrame.functionName || "(anonymous)"} ${file}${
      n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ""
    }`;
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + hits);
    byFile.set(file, (byFile.get(file) ?? 0) + hits);
  }
  // Callees included: a node's hits count for every own file on its path
  // from the root. Children come after their parent in V8's node list.
  const parentOf = new Map<number, number>();
  for (const n of profile.nodes) {
    for (const c of n.children ?? []) parentOf.set(c, n.id);
  }
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const onPath = new Map<number, Set<string>>();
  const pathOf = (id: number): Set<string> => {
    const known = onPath.get(id);
    if (known) return known;
    // Walk up to the nearest node already known, then fill in downwards.
    const chain: number[] = [];
    let at: number | undefined = id;
    while (at !== undefined && !onPath.has(at)) {
      chain.push(at);
      at = parentOf.get(at);
    }
    let set = at === undefined ? new Set<string>() : onPath.get(at)!;
    for (let i = chain.length - 1; i >= 0; i--) {
      const node = byId.get(chain[i])!;
      const own = ownEntries(fileOf(node.callFrame.url));
      if (own.some((e) => !set.has(e))) set = new Set([...set, ...own]);
      onPath.set(chain[i], set);
    }
    return set;
  };
  const inclusive = new Map<string, number>();
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (!hits || NOT_BUSY.has(n.callFrame.functionName)) continue;
    for (const e of pathOf(n.id)) {
      inclusive.set(e, (inclusive.get(e) ?? 0) + hits);
    }
  }

  const rank = (m: Map<string, number>, n = top): Share[] =>
    [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, hits]) => ({
      name,
      pct: busy ? (100 * hits) / busy : 0,
      ms: hits * msPerHit,
    }));
  return {
    durationMs,
    busyMs: busy * msPerHit,
    functions: rank(byFunction),
    files: rank(byFile),
    // Every own file: a concern's parts are looked up by name.
    inclusive: rank(inclusive, Infinity),
  };
}

/** The summary as Markdown. */
export function profileMarkdown(s: ProfileSummary, title: string): string {
  const table = (rows: Share[], what: string) =>
    [
      `| share of busy samples | ms | ${what} |`,
      "| ---: | ---: | --- |",
      ...rows.map((r) =>
        `| ${r.pct.toFixed(1)}% | ${r.ms.toFixed(0)} | \`${r.name}\` |`
      ),
    ].join("\n");
  return `## ${title}

The profile covers ${(s.durationMs / 1000).toFixed(1)} s (start-up included), ${
    (s.busyMs / 1000).toFixed(2)
  } s of it on CPU.

### By function (self time)

${table(s.functions, "function and location")}

### By file (self time)

${table(s.files, "file")}

### The sidecar's own files and directories, callees included

${table(s.inclusive.slice(0, 25), "file or directory")}
`;
}
