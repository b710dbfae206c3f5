/**
 * Checks for single configuration values. Each checker turns one raw TOML
 * value into the typed value the sidecar uses, or says what was wrong with
 * it in a message of the form "expected ..., got ...".
 *
 * TOML is parsed with integers as `bigint`, so a `bigint` here is a TOML
 * integer and a `number` is a TOML float: `1024.0` is not a count.
 *
 * @module
 */

/** The TOML type a key takes, as named in the docs and in messages. */
export type ValueType = "integer" | "number" | "string";

/** The outcome of checking one value: the typed value, or why it is bad. */
export type Checked<T> =
  | { ok: true; value: T }
  | { ok: false; message: string };

/** Checks one kind of value. */
export interface Checker<T> {
  /** The TOML type the value must have. */
  readonly type: ValueType;
  /** The values allowed, in words, as shown in the docs and in messages. */
  readonly allowed: string;
  /** Turns a raw TOML value into a typed value, or describes the problem. */
  check(value: unknown): Checked<T>;
}

/** A listening address split into its parts; IPv6 hosts lose the brackets. */
export interface HostPort {
  /** An IPv4 or IPv6 literal (without brackets) or a host name. */
  host: string;
  /** 0 to 65535; 0 asks the system for a free port. */
  port: number;
}

/**
 * The longest duration a timer can be set to: `setTimeout` keeps its delay
 * in a signed 32-bit count of milliseconds and fires at once when given more,
 * so a longer timeout would silently become no timeout at all.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The longest Unix socket path: the kernel's address field holds 108 bytes,
 * one of which is the terminating NUL.
 */
export const MAX_SOCKET_PATH_BYTES = 107;

const MAX_TIMER_SECS = Math.floor(MAX_TIMER_MS / 1000);
const IPV4_OCTET = "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4 = new RegExp(`^${IPV4_OCTET}(?:\\.${IPV4_OCTET}){3}$`);
const HOST_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const PORT = /^(?:0|[1-9]\d{0,4})$/;

/** An integer count between `min` and `max`, inclusive. */
export function integer(min: number, max: number): Checker<number> {
  const allowed = `${min}..${max}`;

  return {
    type: "integer",
    allowed,
    check(value) {
      if (typeof value !== "bigint") {
        return expected("an integer", value);
      }
      if (value < BigInt(min) || value > BigInt(max)) {
        return expected(`an integer in ${allowed}`, value);
      }
      return { ok: true, value: Number(value) };
    },
  };
}

/**
 * A duration written in seconds (integer or float), given back in whole
 * milliseconds. By default it must be positive, which after rounding means
 * at least 0.001, and no longer than the longest timer.
 */
export function seconds(
  minSecs = 0.001,
  maxSecs = MAX_TIMER_SECS,
): Checker<number> {
  const allowed = `${minSecs}..${maxSecs}`;
  const minMs = Math.round(minSecs * 1000);
  const maxMs = Math.round(maxSecs * 1000);

  return {
    type: "number",
    allowed,
    check(value) {
      const secs = typeof value === "bigint" ? Number(value) : value;
      if (typeof secs !== "number") {
        return expected("a number of seconds", value);
      }

      // Written as a negated range test so that NaN fails too.
      const ms = Math.round(secs * 1000);
      if (!(ms >= minMs && ms <= maxMs)) {
        return expected(`seconds in ${allowed}`, value);
      }
      return { ok: true, value: ms };
    },
  };
}

/** One string out of a fixed set, compared exactly. */
export function oneOf<T extends string>(...choices: T[]): Checker<T> {
  const allowed = `one of ${choices.map((c) => `"${c}"`).join(", ")}`;

  return {
    type: "string",
    allowed,
    check(value) {
      if (typeof value !== "string") return expected("a string", value);
      const choice = choices.find((c) => c === value);
      if (choice === undefined) return expected(allowed, value);
      return { ok: true, value: choice };
    },
  };
}

/** A listening address: `host:port` or `[ipv6]:port`. */
export function address(): Checker<HostPort> {
  return {
    type: "string",
    allowed: '"host:port" or "[ipv6]:port", port 0..65535',
    check(value) {
      if (typeof value !== "string") return expected("a string", value);
      return parseAddress(value);
    },
  };
}

/** A host alone: an IPv4 or IPv6 literal (brackets optional) or a name. */
export function host(): Checker<string> {
  return {
    type: "string",
    allowed: "an IPv4 or IPv6 address, or a host name",
    check(value) {
      if (typeof value !== "string") return expected("a string", value);
      const bare = value.startsWith("[") && value.endsWith("]")
        ? value.slice(1, -1)
        : value;
      if (!isIPv6(bare) && !isIPv4OrHostName(value)) {
        return expected("an IP address or a host name", value);
      }
      return { ok: true, value: bare };
    },
  };
}

/** The Unix socket of the worker, given back as a plain absolute path. */
export function socketPath(): Checker<string> {
  const forms = '"unix:///abs/path", "unix:/abs/path" or "/abs/path"';

  return {
    type: "string",
    allowed: `${forms}, at most ${MAX_SOCKET_PATH_BYTES} bytes`,
    check(value) {
      if (typeof value !== "string") return expected("a string", value);

      const path = value.startsWith("unix://")
        ? value.slice("unix://".length)
        : value.startsWith("unix:")
        ? value.slice("unix:".length)
        : value;
      if (!path.startsWith("/") || path.includes("\0")) {
        return expected(forms, value);
      }

      const bytes = new TextEncoder().encode(path).length;
      if (bytes > MAX_SOCKET_PATH_BYTES) {
        return {
          ok: false,
          message: `expected a socket path of at most ` +
            `${MAX_SOCKET_PATH_BYTES} bytes (the Unix socket address limit), ` +
            `got ${bytes} bytes in ${describeValue(value)}`,
        };
      }
      return { ok: true, value: path };
    },
  };
}

/** An `http://` or `https://` URL, or `""` for none (given back as null). */
export function optionalHttpUrl(): Checker<string | null> {
  return {
    type: "string",
    allowed: 'an http:// or https:// URL, or "" for none',
    check(value) {
      if (typeof value !== "string") return expected("a string", value);
      if (value === "") return { ok: true, value: null };

      // URL parsing forgives surrounding spaces; a config file should not.
      const url = value.trim() === value ? URL.parse(value) : null;
      const web = url?.protocol === "http:" || url?.protocol === "https:";
      if (!web || url.hostname === "") {
        return expected("an http:// or https:// URL", value);
      }
      return { ok: true, value };
    },
  };
}

/** An absolute file path. */
export function absolutePath(): Checker<string> {
  return {
    type: "string",
    allowed: "an absolute path",
    check(value) {
      if (typeof value !== "string") return expected("a string", value);
      if (!value.startsWith("/") || value.includes("\0")) {
        return expected("an absolute path", value);
      }
      return { ok: true, value };
    },
  };
}

/** Any string; `""` means unset and is given back as null. */
export function optionalText(): Checker<string | null> {
  return {
    type: "string",
    allowed: 'any string; "" for unset',
    check(value) {
      if (typeof value !== "string") return expected("a string", value);
      return { ok: true, value: value === "" ? null : value };
    },
  };
}

/**
 * Shows a raw TOML value the way it would be written in the file, short and
 * on one line, for use after "got" in a message.
 */
export function describeValue(value: unknown): string {
  if (typeof value === "string") {
    const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
    return JSON.stringify(shown);
  }
  if (typeof value === "number") return describeFloat(value);
  if (typeof value === "bigint" || typeof value === "boolean") {
    return String(value);
  }
  if (Array.isArray(value)) return "an array";
  if (value instanceof Date) return "a date";
  return "a table";
}

/** Whether a raw TOML value is a table (smol-toml's have no prototype). */
export function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null &&
    !Array.isArray(value) && !(value instanceof Date);
}

function parseAddress(text: string): Checked<HostPort> {
  const bracketed = /^\[([^\]]*)\]:([^:]*)$/.exec(text);
  const plain = /^([^:[\]]+):([^:]*)$/.exec(text);
  const [, host, port] = bracketed ?? plain ?? [];

  if (host === undefined || port === undefined) {
    const v6 = text.split(":").length > 2 && !text.startsWith("[");
    return v6
      ? expected('an IPv6 host in brackets, as "[::1]:50051"', text)
      : expected('"host:port" or "[ipv6]:port"', text);
  }
  if (bracketed ? !isIPv6(host) : !isIPv4OrHostName(host)) {
    return expected("an IP address or a host name before the port", text);
  }
  if (!PORT.test(port) || Number(port) > 65535) {
    return expected("a port in 0..65535", text);
  }
  return { ok: true, value: { host, port: Number(port) } };
}

function isIPv4OrHostName(text: string): boolean {
  if (IPV4.test(text)) return true;
  if (text.length > 253) return false;

  // A name whose last label is all digits reads as a mistyped IPv4 address.
  const labels = text.split(".");
  return labels.every((label) => HOST_LABEL.test(label)) &&
    !/^\d+$/.test(labels[labels.length - 1]);
}

function isIPv6(text: string): boolean {
  const halves = text.split("::");
  if (halves.length > 2) return false;

  const groups = halves.flatMap((half) => half === "" ? [] : half.split(":"));
  const last = groups[groups.length - 1];
  // A trailing IPv4 address stands for the last two groups.
  const width = last?.includes(".") ? groups.length + 1 : groups.length;
  if (last?.includes(".") && !IPV4.test(groups.pop() ?? "")) return false;
  if (!groups.every((g) => /^[0-9A-Fa-f]{1,4}$/.test(g))) return false;

  // "::" stands for at least one group of zeros.
  return halves.length === 2 ? width <= 7 : width === 8;
}

function describeFloat(value: number): string {
  if (Number.isNaN(value)) return "nan";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  return Number.isInteger(value) && Math.abs(value) < 1e21
    ? value.toFixed(1)
    : String(value);
}

function expected<T>(what: string, value: unknown): Checked<T> {
  return {
    ok: false,
    message: `expected ${what}, got ${describeValue(value)}`,
  };
}
