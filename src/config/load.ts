/**
 * Reads `sidecar.toml` into a {@link Config}. Every problem in a file is
 * collected first (syntax, unknown names, types, ranges, addresses, and the
 * rules that tie two keys together) and then reported at once, each with
 * the file, line and key it concerns.
 *
 * @module
 */

import { parse, TomlError } from "smol-toml";
import {
  type Config,
  CONFIG_KEYS,
  type ConfigKey,
  defaultConfig,
  type SectionName,
  SECTIONS,
} from "./schema.ts";
import { findKeyLines, lineOf } from "./source_lines.ts";
import { closest } from "./suggest.ts";
import { describeValue, isTable } from "./values.ts";

/** One thing wrong with a configuration file. */
export interface ConfigProblem {
  /** The dotted key (`server.bind_addr`), a section, or "" for the file. */
  key: string;
  /** What is wrong, on one line, e.g. `expected an integer, got "5"`. */
  message: string;
  /** The value found in the file, when a value is at fault. */
  value?: unknown;
  /** The 1-based line of the key in the file, when it can be found. */
  line?: number;
  /** The file (or other source) the text came from. */
  source: string;
}

/** The outcome of {@link parseConfig}. */
export type ParseConfigResult =
  | { ok: true; config: Config }
  | { ok: false; problems: ConfigProblem[] };

/** Thrown by {@link loadConfig} with every problem found in the file. */
export class ConfigError extends Error {
  /** Each problem, in the order of the lines they concern. */
  readonly problems: readonly ConfigProblem[];

  /** Lists `problems` in the message, one per line. */
  constructor(problems: readonly ConfigProblem[]) {
    super(problems.map(formatProblem).join("\n"));
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/**
 * Formats a problem as `source:line: key: message`, leaving out the line
 * or the key when it has none.
 *
 * @example
 * ```ts
 * formatProblem({
 *   source: "sidecar.toml",
 *   line: 12,
 *   key: "server.bind_addr",
 *   message: 'expected "host:port", got "nonsense"',
 * }); // 'sidecar.toml:12: server.bind_addr: expected "host:port", got "nonsense"'
 * ```
 */
export function formatProblem(problem: ConfigProblem): string {
  const where = problem.line === undefined
    ? problem.source
    : `${problem.source}:${problem.line}`;
  const key = problem.key === "" ? "" : `${problem.key}: `;
  return `${where}: ${key}${problem.message}`;
}

/**
 * Checks the text of a TOML config file and builds the {@link Config} it
 * describes; keys it leaves out take their defaults. `source` names the
 * text in problems. Never throws for bad input: every problem is returned.
 */
export function parseConfig(text: string, source: string): ParseConfigResult {
  let document: Record<string, unknown>;
  try {
    document = parse(text, { integersAsBigInt: true });
  } catch (error) {
    if (!(error instanceof TomlError)) throw error;
    return { ok: false, problems: [syntaxProblem(error, source)] };
  }

  const lines = findKeyLines(text);
  const problems: ConfigProblem[] = [];
  const report: Report = (key, message, value) => {
    const line = lineOf(lines, key);
    const at = line === undefined ? {} : { line };
    problems.push({ key, message, ...shown(value), ...at, source });
  };

  const config = defaultConfig();
  const written = applyKeys(document, config, report);
  checkTogether(config, written, report);

  if (problems.length > 0) return { ok: false, problems: byLine(problems) };
  return { ok: true, config };
}

/**
 * Loads the config file at `path`, or gives the defaults when there is no
 * path. The defaults returned are a fresh copy the caller may change.
 *
 * @throws {ConfigError} If the file cannot be read or has any problem; the
 * error lists them all.
 */
export async function loadConfig(path?: string): Promise<Config> {
  if (path === undefined) return defaultConfig();

  let text: string;
  try {
    // TOML files are UTF-8; a decoding error beats a confusing parse error.
    const bytes = await Deno.readFile(path);
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    const message = `cannot read the config file: ${readFailure(error)}`;
    throw new ConfigError([{ key: "", message, source: path }]);
  }

  const result = parseConfig(text, path);
  if (!result.ok) throw new ConfigError(result.problems);
  return result.config;
}

const KEYS: ReadonlyMap<string, ConfigKey> = new Map(
  CONFIG_KEYS.map((spec) => [spec.name, spec]),
);

type Report = (key: string, message: string, value?: unknown) => void;

/** The keys a file wrote: those that passed their checks and those not. */
interface Written {
  passed: ReadonlyMap<string, unknown>;
  failed: ReadonlySet<string>;
}

/** Checks each key of the document on its own, storing the good ones. */
function applyKeys(
  document: Record<string, unknown>,
  config: Config,
  report: Report,
): Written {
  const passed = new Map<string, unknown>();
  const failed = new Set<string>();

  for (const [section, table] of Object.entries(document)) {
    if (!isTable(table) || !isSection(section)) {
      const value = isTable(table) ? undefined : table;
      report(section, unknownTopLevel(section, table), value);
      continue;
    }

    for (const [key, value] of Object.entries(table)) {
      const name = `${section}.${key}`;
      const spec = KEYS.get(name);
      const problem = spec === undefined
        ? unknownKey(section, key)
        : spec.apply(value, config);

      if (problem === undefined) {
        passed.set(name, value);
      } else {
        report(name, problem, value);
        failed.add(name);
      }
    }
  }

  return { passed, failed };
}

/**
 * The rules that tie two keys together. A rule is skipped when either key
 * failed its own check. When one is broken, the key the file wrote is the
 * one blamed: the other kept its default.
 */
function checkTogether(config: Config, keys: Written, report: Report): void {
  const { passed, failed } = keys;
  const usable = (a: string, b: string) => !failed.has(a) && !failed.has(b);
  const fault = (name: string, expectation: string) => {
    const value = passed.get(name);
    report(name, `expected ${expectation}, got ${describeValue(value)}`, value);
  };

  const delay = "health.reconnect_delay_secs";
  const maxDelay = "health.reconnect_max_delay_secs";
  const { reconnectDelayMs, reconnectMaxDelayMs } = config.health;
  if (usable(delay, maxDelay) && reconnectMaxDelayMs < reconnectDelayMs) {
    if (passed.has(maxDelay)) {
      fault(maxDelay, `at least ${delay} (${reconnectDelayMs / 1000})`);
    } else {
      fault(delay, `at most ${maxDelay} (${reconnectMaxDelayMs / 1000})`);
    }
  }

  // Two listeners on one port cannot both bind; 0 means "any free port".
  const bind = "server.bind_addr";
  const metrics = "observability.metrics_port";
  const port = config.server.bindPort;
  const clash = port !== 0 && port === config.observability.metricsPort;
  if (usable(bind, metrics) && clash) {
    if (passed.has(metrics)) {
      fault(metrics, `a port other than the gRPC port of ${bind} (${port})`);
    } else {
      fault(bind, `a port other than ${metrics} (${port})`);
    }
  }
}

/** Why a top-level name is not a section: a value, or a table unknown. */
function unknownTopLevel(name: string, value: unknown): string {
  if (isSection(name)) return `expected a table, got ${describeValue(value)}`;

  if (!isTable(value)) {
    const hint = suggestKey(name, CONFIG_KEYS) ??
      "keys go under a section such as [server]";
    return `unknown top-level key; ${hint}`;
  }

  const guess = closest(name, SECTIONS);
  if (guess !== undefined) return `unknown section; did you mean [${guess}]?`;
  const known = SECTIONS.map((section) => `[${section}]`).join(", ");
  return `unknown section; expected one of ${known}`;
}

function unknownKey(section: string, key: string): string {
  // A typo of a key of this section first; then one from another section.
  const here = CONFIG_KEYS.filter((spec) => spec.section === section);
  const hint = suggestKey(key, here) ?? suggestKey(key, CONFIG_KEYS);
  return hint === undefined ? "unknown key" : `unknown key; ${hint}`;
}

/** Points an unknown name at the known key it most likely stands for. */
function suggestKey(
  name: string,
  candidates: readonly ConfigKey[],
): string | undefined {
  const guess = closest(name, candidates.map((spec) => spec.key));
  const spec = candidates.find((candidate) => candidate.key === guess);
  if (spec === undefined) return undefined;
  return spec.key === name
    ? `it belongs in [${spec.section}]`
    : `did you mean ${spec.name}?`;
}

function isSection(name: string): name is SectionName {
  return (SECTIONS as readonly string[]).includes(name);
}

function syntaxProblem(error: TomlError, source: string): ConfigProblem {
  const reason = error.message.split("\n")[0]
    .replace(/^Invalid TOML document: /, "");
  return {
    key: "",
    message: `invalid TOML at column ${error.column}: ${reason}`,
    line: error.line,
    source,
  };
}

function readFailure(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.IsADirectory) return "it is a directory";
  if (error instanceof Deno.errors.PermissionDenied) {
    return "permission denied";
  }
  if (error instanceof Deno.errors.NotCapable) {
    return "read access not granted (run with --allow-read)";
  }
  if (error instanceof TypeError) return "not valid UTF-8";
  return error instanceof Error ? error.message : String(error);
}

/** The value as a problem shows it: TOML integers become plain numbers. */
function shown(value: unknown): { value?: unknown } {
  if (value === undefined) return {};
  return { value: typeof value === "bigint" ? Number(value) : value };
}

/** Problems in line order; those without a line keep their order, last. */
function byLine(problems: ConfigProblem[]): ConfigProblem[] {
  const rank = (problem: ConfigProblem) =>
    problem.line ?? Number.MAX_SAFE_INTEGER;
  return problems.toSorted((a, b) => rank(a) - rank(b));
}
