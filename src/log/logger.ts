/**
 * A small structured logger: one JSON object per line (or a readable text
 * line), written to stderr. Inner modules receive a {@link Logger} and never
 * pick their own output; `child()` attaches fields such as `request_id`.
 *
 * @module
 */

/** Severity, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Output encoding. */
export type LogFormat = "json" | "text";

/** Structured fields attached to a log line. */
export type LogFields = Record<string, unknown>;

/** Where finished lines go; replaced in tests. */
export type LogSink = (line: string) => void;

const LEVEL_RANK: Record<LogLevel, number> = {
  debug: 10,
  info: 20,
  warn: 30,
  error: 40,
};

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** Lines below this level are dropped. Default `"info"`. */
  level?: LogLevel;
  /** Default `"json"`. */
  format?: LogFormat;
  /** Default: write the line and a newline to stderr. */
  sink?: LogSink;
}

/** A logger bound to a set of fields. */
export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** True when `level` would be written; guards costly field building. */
  enabled(level: LogLevel): boolean;
  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger;
}

const encoder = new TextEncoder();

function stderrSink(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/** Renders an `Error` as plain fields so that JSON keeps its message. */
function plain(value: unknown): unknown {
  if (value instanceof Error) {
    return value.cause === undefined
      ? `${value.name}: ${value.message}`
      : `${value.name}: ${value.message} (cause: ${String(value.cause)})`;
  }
  return value;
}

function render(
  format: LogFormat,
  level: LogLevel,
  msg: string,
  fields: LogFields,
): string {
  const ts = new Date().toISOString();
  if (format === "json") {
    const out: LogFields = { ts, level, msg };
    for (const [k, v] of Object.entries(fields)) out[k] = plain(v);
    return JSON.stringify(out);
  }
  const rest = Object.entries(fields)
    .map(([k, v]) => `${k}=${JSON.stringify(plain(v))}`)
    .join(" ");
  return `${ts} ${level.toUpperCase().padEnd(5)} ${msg}${
    rest ? " " + rest : ""
  }`;
}

/** Builds a logger. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const threshold = LEVEL_RANK[options.level ?? "info"];
  const format = options.format ?? "json";
  const sink = options.sink ?? stderrSink;

  const make = (bound: LogFields): Logger => {
    const write = (level: LogLevel, msg: string, fields?: LogFields) => {
      if (LEVEL_RANK[level] < threshold) return;
      sink(render(format, level, msg, { ...bound, ...fields }));
    };
    return {
      debug: (msg, fields) => write("debug", msg, fields),
      info: (msg, fields) => write("info", msg, fields),
      warn: (msg, fields) => write("warn", msg, fields),
      error: (msg, fields) => write("error", msg, fields),
      enabled: (level) => LEVEL_RANK[level] >= threshold,
      child: (fields) => make({ ...bound, ...fields }),
    };
  };
  return make({});
}

/** A logger that writes nothing; the default for inner modules in tests. */
export const silentLogger: Logger = createLogger({
  level: "error",
  sink: () => {},
});
