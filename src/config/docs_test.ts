import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { formatProblem, parseConfig } from "./load.ts";
import { CONFIG_KEYS, type ConfigKey, DEFAULT_CONFIG } from "./schema.ts";

const ROOT = new URL("../../", import.meta.url);
const DOCS = await Deno.readTextFile(new URL("docs/configuration.md", ROOT));
const EXAMPLE = await Deno.readTextFile(new URL("sidecar.toml", ROOT));

/** A default as written in TOML. */
function literal(spec: ConfigKey): string {
  return typeof spec.default === "string"
    ? JSON.stringify(spec.default)
    : String(spec.default);
}

/** The text under the docs heading for `name`, on one line. */
function docsSection(name: string): string | undefined {
  const lines = DOCS.split("\n");
  const start = lines.indexOf(`#### \`${name}\``);
  if (start === -1) return undefined;

  const rest = lines.slice(start + 1);
  const end = rest.findIndex((line) => line.startsWith("#"));
  return rest.slice(0, end === -1 ? undefined : end)
    .map((line) => line.trim())
    .join(" ");
}

Deno.test("docs/configuration.md documents every key with its type, default and range", () => {
  for (const spec of CONFIG_KEYS) {
    const section = docsSection(spec.name);

    assertEquals(section !== undefined, true, `no heading for ${spec.name}`);
    for (
      const fact of [
        `- Type: ${spec.type}`,
        `- Default: \`${literal(spec)}\``,
        `- Allowed: ${spec.allowed}`,
      ]
    ) {
      assertEquals(section?.includes(fact), true, `${spec.name}: ${fact}`);
    }
  }
});

Deno.test("docs/configuration.md documents no key the schema lacks", () => {
  const headings = DOCS.split("\n")
    .filter((line) => /^#### `[a-z_]+\.[a-z_]+`$/.test(line))
    .map((line) => line.slice("#### `".length, -1));

  assertEquals(headings, CONFIG_KEYS.map((spec) => spec.name));
});

Deno.test("docs/configuration.md shows error output the loader really gives", () => {
  const sample = [
    "[server]",
    "# the gRPC front",
    'bind_addr = "nonsense"',
    'worker_uds = "/run/cy/worker.sock"',
    "max_concurrent_stream = 64",
    "",
    "[worker]",
    "max_frame_bytes = 2097152",
    'stream_credit_chunks = "32"',
    "",
    "[health]",
    "reconnect_delay_secs = 60",
    "reconnect_max_delay_secs = 30",
    "",
    "[observability]",
    'log_level = "verbose"',
  ].join("\n");
  const result = parseConfig(sample, "sidecar.toml");
  const shown = /```\n(sidecar\.toml:[^`]*)```/.exec(DOCS)?.[1];

  assertEquals(result.ok, false);
  assertEquals(
    shown?.trimEnd().split("\n"),
    !result.ok && result.problems.map(formatProblem),
  );
  assertEquals(DOCS.includes("`--check-config`"), true);
});

Deno.test("sidecar.toml lists every key with its default under a one-line comment", () => {
  const lines = EXAMPLE.split("\n");
  let section = "";
  const found = new Map<string, number>();
  lines.forEach((line, index) => {
    const header = /^\[(\w+)\]$/.exec(line);
    if (header) section = header[1];
    const key = /^(\w+) = /.exec(line);
    if (key) found.set(`${section}.${key[1]}`, index);
  });

  for (const spec of CONFIG_KEYS) {
    const index = found.get(spec.name);

    assertEquals(index !== undefined, true, `${spec.name} is missing`);
    assertEquals(lines[index ?? 0], `${spec.key} = ${literal(spec)}`);
    assertEquals(lines[(index ?? 0) - 1], `# ${spec.doc}`);
  }
});

Deno.test("sidecar.toml parses to exactly the defaults", () => {
  assertEquals(parseConfig(EXAMPLE, "sidecar.toml"), {
    ok: true,
    config: DEFAULT_CONFIG,
  });
});
