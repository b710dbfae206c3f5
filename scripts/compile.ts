/**
 * Builds the `cy-sidecar` executable with `deno compile`, with the
 * permission set and V8 flags of src/permissions.ts for one configuration
 * baked in.
 *
 *   deno task compile [--config FILE] [--config-path PATH] [--output FILE]
 *                     [--target TRIPLE] [--print]
 *
 *   --config FILE       the configuration the executable is built for
 *                       (default deploy/sidecar.toml, the one the image
 *                       ships); its listeners, socket, usage queue folder
 *                       and billing host decide the permissions
 *   --config-path PATH  the absolute path the executable reads its
 *                       configuration from at run time (default
 *                       /etc/cy-sidecar/sidecar.toml, where the image puts
 *                       it); baked in as the default `--config` argument
 *                       and the one config file it may read
 *   --output FILE       default dist/cy-sidecar
 *   --target TRIPLE     passed to `deno compile --target`
 *   --print             print the `deno compile` command instead of running it
 *
 * `deno compile` downloads its runtime (`denort`) from Deno's own host on
 * first use. Where that host cannot be reached this says so plainly and
 * exits 1; the image's build stage is the place to compile then.
 *
 * @module
 */

import { ConfigError, loadConfig } from "../src/config/mod.ts";
import {
  absolutePath,
  denoFlags,
  dirOf,
  permissionSet,
} from "../src/permissions.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** The configuration the image ships, relative to the repository. */
export const DEFAULT_BUILD_CONFIG = "deploy/sidecar.toml";

/** Where the image puts that configuration. */
export const IMAGE_CONFIG_PATH = "/etc/cy-sidecar/sidecar.toml";

/** Where the executable is written, relative to the repository. */
export const DEFAULT_OUTPUT = "dist/cy-sidecar";

/** What to compile. */
export interface CompileOptions {
  /** The configuration file the permissions are derived from. */
  config: string;
  /** Absolute path the executable reads its configuration from. */
  configPath: string;
  output: string;
  target?: string;
  print: boolean;
}

const USAGE = `Usage: deno task compile [--config FILE] [--config-path PATH] \
[--output FILE] [--target TRIPLE] [--print]`;

/** `path` made absolute against the working directory (links kept). */
function absolute(path: string): string {
  return absolutePath(path, Deno.cwd());
}

/** Parses the task's arguments; throws a `TypeError` naming a bad one. */
export function parseCompileArgs(args: string[]): CompileOptions {
  const options: CompileOptions = {
    config: `${ROOT}${DEFAULT_BUILD_CONFIG}`,
    configPath: IMAGE_CONFIG_PATH,
    output: `${ROOT}${DEFAULT_OUTPUT}`,
    print: false,
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const value = () => {
      if (i + 1 >= args.length) throw new TypeError(`${arg} needs a value`);
      return args[++i];
    };
    if (arg === "--config") options.config = absolute(value());
    else if (arg === "--config-path") options.configPath = value();
    else if (arg === "--output") options.output = absolute(value());
    else if (arg === "--target") options.target = value();
    else if (arg === "--print") options.print = true;
    else throw new TypeError(`unknown argument ${JSON.stringify(arg)}`);
  }
  if (!options.configPath.startsWith("/")) {
    throw new TypeError(
      `--config-path must be absolute, got ${
        JSON.stringify(options.configPath)
      }`,
    );
  }
  return options;
}

/**
 * The `deno compile` arguments for `options`: the runtime flags from
 * src/permissions.ts for the configuration, then the entry point, then the
 * baked default arguments (`--config PATH`); arguments given to the
 * executable at run time are appended after those.
 *
 * @throws {ConfigError} If the configuration has problems.
 */
export async function compileArgs(options: CompileOptions): Promise<string[]> {
  const config = await loadConfig(options.config);
  const flags = denoFlags(permissionSet(config, options.configPath));
  return [
    "compile",
    // Type checking runs in this deno process, which --v8-flags also
    // bound; the heap cap is sized for the sidecar, not for the checker.
    // main() checks first with `deno check`, unbounded.
    "--no-check",
    ...flags,
    "--output",
    options.output,
    ...(options.target ? ["--target", options.target] : []),
    `${ROOT}main.ts`,
    "--config",
    options.configPath,
  ];
}

const DENORT_FAILURE = /denort|dl\.deno\.land|Setting up base binary/;

/** What to tell when `deno compile` could not get its runtime. */
function explainDenort(): string {
  const version = Deno.version.deno;
  return [
    `compile: FAILED: deno compile could not get its runtime, denort ` +
    `${version}, which it downloads from Deno's own host (dl.deno.land): ` +
    `the download failed (see the error above), most likely because ` +
    `that host cannot be reached from this machine.`,
    `compile: nothing was written. Build the executable where that host ` +
    `is reachable: the image's build stage does it ` +
    `(docker build -f Dockerfile.distroless .), or set DENORT_BIN to a ` +
    `denort ${version} binary fetched there.`,
    `compile: here, the same entry point runs with the same permission ` +
    `set through deno run: deno task start, and the test suite ` +
    `(bash scripts/test.sh).`,
  ].join("\n");
}

/** Runs `deno compile`, passing its output through; returns its exit code. */
async function run(args: string[]): Promise<number> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    // Plain text, to match a failure on.
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "inherit",
    stderr: "piped",
  }).spawn();

  // Pass stderr through as it comes, and keep it to diagnose a failure.
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stderr) {
    await Deno.stderr.write(chunk);
    text += decoder.decode(chunk, { stream: true });
  }
  const { code } = await child.status;

  if (code !== 0 && DENORT_FAILURE.test(text)) {
    console.error(`\n${explainDenort()}`);
  }
  return code;
}

async function main(): Promise<void> {
  let options: CompileOptions;
  let args: string[];
  try {
    options = parseCompileArgs(Deno.args);
    args = await compileArgs(options);
  } catch (err) {
    if (!(err instanceof TypeError || err instanceof ConfigError)) throw err;
    console.error(`compile: ${err.message}\n${USAGE}`);
    Deno.exit(2);
  }

  if (options.print) {
    // One flag per line, each value beside its option.
    const lines = ["deno compile"];
    for (const arg of args.slice(1)) {
      const last = lines.at(-1)!;
      if (/^--(output|target|config)$/.test(last.trim())) {
        lines[lines.length - 1] = `${last} ${arg}`;
      } else lines.push(`  ${arg}`);
    }
    console.log(lines.join(" \\\n"));
    return;
  }
  console.error(
    `compile: building ${options.output} for ${options.config}, ` +
      `reading its configuration from ${options.configPath}`,
  );
  await Deno.mkdir(dirOf(options.output), { recursive: true });
  let code = await run(["check", `${ROOT}main.ts`]);
  if (code === 0) code = await run(args);
  if (code === 0) console.error(`compile: wrote ${options.output}`);
  Deno.exit(code);
}

if (import.meta.main) await main();
