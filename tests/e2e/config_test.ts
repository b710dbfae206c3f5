import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { parseConfig } from "../../src/config/mod.ts";
import { denoFlags, permissionSet } from "../../src/permissions.ts";
import { SIDECAR_VERSION } from "../../src/version.ts";
import { DENO, tempDir } from "../helpers/harness.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** What a run of the sidecar's command line printed, and how it exited. */
interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `main.ts` with `args` under the production permissions: those of
 * the file at `configPath` when it parses, else those of the defaults with
 * read access to the file (how a sidecar is launched for a file that
 * cannot be parsed for its own permissions).
 */
async function runSidecar(args: string[], configPath?: string): Promise<Run> {
  const text = configPath
    ? await Deno.readTextFile(configPath).catch(() => "")
    : "";
  let parsed = parseConfig(text, configPath ?? "(defaults)");
  if (!parsed.ok) parsed = parseConfig("", "(defaults)");
  if (!parsed.ok) throw new Error("the embedded defaults do not parse");
  const flags = denoFlags(permissionSet(parsed.config, configPath));
  const out = await new Deno.Command(DENO, {
    args: ["run", ...flags, "main.ts", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return {
    code: out.code,
    stdout: decode(out.stdout),
    stderr: decode(out.stderr),
  };
}

/** Writes `text` to a fresh file and returns its path. */
async function configFile(text: string): Promise<string> {
  const path = `${await tempDir()}/sidecar.toml`;
  await Deno.writeTextFile(path, text);
  return path;
}

const lines = (s: string) => s.split("\n").filter((l) => l.trim() !== "");

// Seven problems of every sort the checker knows, one per line of interest.
const BAD = `[server]
bind_addr = "nonsense"
max_concurrent_stream = 10

[worker]
stream_credit_chunks = "32"

[health]
reconnect_delay_secs = 60
reconnect_max_delay_secs = 30

[observability]
log_level = "verbose"
metrics_port = 70000

[servr]
x = 1
`;

// Line, key and a telling part of each message, in file order.
const BAD_PROBLEMS: [number, string, RegExp][] = [
  [2, "server.bind_addr", /"nonsense"/],
  [
    3,
    "server.max_concurrent_stream",
    /did you mean server\.max_concurrent_streams\?/,
  ],
  [6, "worker.stream_credit_chunks", /expected an integer, got "32"/],
  [
    10,
    "health.reconnect_max_delay_secs",
    /health\.reconnect_delay_secs \(60\), got 30/,
  ],
  [13, "observability.log_level", /got "verbose"/],
  [14, "observability.metrics_port", /0\.\.65535, got 70000/],
  [16, "servr", /unknown section; did you mean \[server\]\?/],
];

for (const checkOnly of [false, true]) {
  const how = checkOnly ? "--check-config" : "start-up";
  Deno.test(`${how} with a bad config exits non-zero and prints every problem as file:line: key: message`, async () => {
    const path = await configFile(BAD);
    const args = checkOnly
      ? ["--check-config", "--config", path]
      : ["--config", path];

    const run = await runSidecar(args, path);

    equal(run.code, 1);
    equal(run.stdout, "");
    const printed = lines(run.stderr);
    equal(printed.length, BAD_PROBLEMS.length, run.stderr);
    BAD_PROBLEMS.forEach(([line, key, message], i) => {
      ok(
        printed[i].startsWith(`${path}:${line}: ${key}: `),
        `problem ${i + 1} is "${printed[i]}"`,
      );
      match(printed[i], message);
    });
  });
}

Deno.test("rules between keys and keys in the wrong section are reported with their lines", async () => {
  const path = await configFile(`[server]
bind_addr = "127.0.0.1:9090"
log_level = "info"

[observability]
metrics_port = 9090
`);
  const run = await runSidecar(["--check-config", "--config", path], path);

  equal(run.code, 1);
  const printed = lines(run.stderr);
  equal(printed.length, 2, run.stderr);
  match(
    printed[0],
    new RegExp(`^${path}:3: server\\.log_level: .*\\[observability\\]`),
  );
  match(
    printed[1],
    new RegExp(`^${path}:6: observability\\.metrics_port: .*9090`),
  );
});

Deno.test("a file that is not TOML gives one problem with its line and column", async () => {
  const path = await configFile(`[server]
bind_addr = "127.0.0.1:0"
[worker
max_frame_bytes = 5
`);
  const run = await runSidecar(["--check-config", "--config", path], path);

  equal(run.code, 1);
  const printed = lines(run.stderr);
  equal(printed.length, 1, run.stderr);
  match(printed[0], new RegExp(`^${path}:3: .*column \\d+`));
});

Deno.test("a missing config file is one problem naming the file", async () => {
  const path = `${await tempDir()}/absent.toml`;
  const run = await runSidecar(["--config", path], path);

  equal(run.code, 1);
  const printed = lines(run.stderr);
  equal(printed.length, 1, run.stderr);
  ok(printed[0].startsWith(`${path}: `), printed[0]);
});

Deno.test("--check-config accepts the example file and a minimal one, exiting 0", async () => {
  const example = await configFile(
    await Deno.readTextFile(`${ROOT}sidecar.toml`),
  );
  const minimal = await configFile(`[server]
bind_addr = "127.0.0.1:0"
`);
  const runs = await Promise.all(
    [example, minimal].map((p) =>
      runSidecar(["--check-config", "--config", p], p)
    ),
  );

  for (const [i, path] of [example, minimal].entries()) {
    equal(runs[i].code, 0, runs[i].stderr);
    equal(runs[i].stdout.trim(), `${path}: ok`);
    equal(runs[i].stderr, "");
  }
});

Deno.test("--version and --help print and exit 0; an unknown or incomplete flag exits 2 with the usage", async () => {
  const [version, help, unknown, dangling] = await Promise.all([
    runSidecar(["--version"]),
    runSidecar(["--help"]),
    runSidecar(["--bogus"]),
    runSidecar(["--config"]),
  ]);

  deepStrictEqual(
    [version.code, version.stdout.trim()],
    [0, `cy-sidecar ${SIDECAR_VERSION}`],
  );
  equal(help.code, 0);
  match(help.stdout, /^Usage: cy-sidecar /m);
  for (
    const flag of ["--config FILE", "--check-config", "--version", "--help"]
  ) {
    ok(help.stdout.includes(flag), `--help mentions ${flag}`);
  }
  equal(unknown.code, 2);
  match(unknown.stderr, /unknown argument "--bogus"/);
  match(unknown.stderr, /Usage: cy-sidecar /);
  equal(dangling.code, 2);
  match(dangling.stderr, /unknown argument "--config"/);
});
