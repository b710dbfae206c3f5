import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  absolutePath,
  address,
  type Checker,
  describeValue,
  host,
  integer,
  oneOf,
  optionalHttpUrl,
  optionalText,
  seconds,
  socketPath,
} from "./values.ts";

/** Runs a checker over [input, expected outcome] rows. */
function checkRows<T>(
  checker: Checker<T>,
  rows: [unknown, { ok: true; value: T } | { ok: false; message: string }][],
) {
  for (const [input, outcome] of rows) {
    assertEquals(checker.check(input), outcome, `input ${String(input)}`);
  }
}

const good = <T>(value: T) => ({ ok: true as const, value });
const bad = (message: string) => ({ ok: false as const, message });

Deno.test("address accepts IPv4, bracketed IPv6 and host names with a port", () => {
  checkRows(address(), [
    ["0.0.0.0:50051", good({ host: "0.0.0.0", port: 50051 })],
    ["127.0.0.1:0", good({ host: "127.0.0.1", port: 0 })],
    ["[::]:50051", good({ host: "::", port: 50051 })],
    ["[::1]:65535", good({ host: "::1", port: 65535 })],
    ["[fe80::1:2]:80", good({ host: "fe80::1:2", port: 80 })],
    ["[::ffff:10.0.0.1]:80", good({ host: "::ffff:10.0.0.1", port: 80 })],
    ["[1:2:3:4:5:6:7:8]:80", good({ host: "1:2:3:4:5:6:7:8", port: 80 })],
    ["localhost:8080", good({ host: "localhost", port: 8080 })],
    ["sidecar-1.prod.local:1", good({ host: "sidecar-1.prod.local", port: 1 })],
  ]);
});

Deno.test("address rejects malformed input, naming what was expected", () => {
  const form = 'expected "host:port" or "[ipv6]:port", got';
  const badHost = "expected an IP address or a host name before the port, got";
  const badPort = "expected a port in 0..65535, got";
  checkRows(address(), [
    ["nonsense", bad(`${form} "nonsense"`)],
    ["", bad(`${form} ""`)],
    [":50051", bad(`${form} ":50051"`)],
    [
      "host:1:2",
      bad(
        'expected an IPv6 host in brackets, as "[::1]:50051", got "host:1:2"',
      ),
    ],
    [
      "::1:50051",
      bad(
        'expected an IPv6 host in brackets, as "[::1]:50051", got "::1:50051"',
      ),
    ],
    ["0.0.0.0:70000", bad(`${badPort} "0.0.0.0:70000"`)],
    ["0.0.0.0:", bad(`${badPort} "0.0.0.0:"`)],
    ["0.0.0.0:-1", bad(`${badPort} "0.0.0.0:-1"`)],
    ["0.0.0.0:080", bad(`${badPort} "0.0.0.0:080"`)],
    ["0.0.0.0:http", bad(`${badPort} "0.0.0.0:http"`)],
    ["10.0.0.300:80", bad(`${badHost} "10.0.0.300:80"`)],
    ["010.0.0.1:80", bad(`${badHost} "010.0.0.1:80"`)],
    ["bad_host:80", bad(`${badHost} "bad_host:80"`)],
    ["-lead.example:80", bad(`${badHost} "-lead.example:80"`)],
    ["[1.2.3.4]:80", bad(`${badHost} "[1.2.3.4]:80"`)],
    ["[::1::2]:80", bad(`${badHost} "[::1::2]:80"`)],
    ["[1:2:3:4:5:6:7:8:9]:80", bad(`${badHost} "[1:2:3:4:5:6:7:8:9]:80"`)],
    ["[12345::]:80", bad(`${badHost} "[12345::]:80"`)],
    [50051n, bad("expected a string, got 50051")],
  ]);
});

Deno.test("host accepts an IP literal or a name and drops IPv6 brackets", () => {
  checkRows(host(), [
    ["0.0.0.0", good("0.0.0.0")],
    ["::", good("::")],
    ["[::1]", good("::1")],
    ["metrics.internal", good("metrics.internal")],
    ["", bad('expected an IP address or a host name, got ""')],
    [
      "0.0.0.0:9090",
      bad('expected an IP address or a host name, got "0.0.0.0:9090"'),
    ],
    [
      "[example.com]",
      bad('expected an IP address or a host name, got "[example.com]"'),
    ],
    [
      "a".repeat(64),
      bad(`expected an IP address or a host name, got "${"a".repeat(57)}..."`),
    ],
  ]);
});

Deno.test("socketPath accepts the unix: URL forms and plain absolute paths", () => {
  checkRows(socketPath(), [
    ["unix:///tmp/cy_worker.sock", good("/tmp/cy_worker.sock")],
    ["unix:/tmp/cy_worker.sock", good("/tmp/cy_worker.sock")],
    ["/run/cy/worker.sock", good("/run/cy/worker.sock")],
    [`/${"s".repeat(106)}`, good(`/${"s".repeat(106)}`)],
  ]);
});

Deno.test("socketPath rejects relative paths and paths over the 107-byte limit", () => {
  const forms =
    'expected "unix:///abs/path", "unix:/abs/path" or "/abs/path", got';
  checkRows(socketPath(), [
    ["worker.sock", bad(`${forms} "worker.sock"`)],
    ["unix://host/worker.sock", bad(`${forms} "unix://host/worker.sock"`)],
    ["unix:worker.sock", bad(`${forms} "unix:worker.sock"`)],
    ["", bad(`${forms} ""`)],
  ]);

  const long = `unix:///${"é".repeat(54)}`;
  const result = socketPath().check(long);
  assertEquals(result.ok, false);
  assertEquals(
    !result.ok && result.message.startsWith(
      "expected a socket path of at most 107 bytes (the Unix socket address " +
        "limit), got 109 bytes in ",
    ),
    true,
  );
});

Deno.test("optionalHttpUrl maps empty to null and accepts only http(s) URLs", () => {
  const url = "expected an http:// or https:// URL, got";
  checkRows(optionalHttpUrl(), [
    ["", good(null)],
    [
      "https://billing.example/v1/usage",
      good("https://billing.example/v1/usage"),
    ],
    ["http://10.0.0.5:8080", good("http://10.0.0.5:8080")],
    ["ftp://billing.example", bad(`${url} "ftp://billing.example"`)],
    ["billing.example", bad(`${url} "billing.example"`)],
    [" https://billing.example", bad(`${url} " https://billing.example"`)],
    ["https://", bad(`${url} "https://"`)],
    [false, bad("expected a string, got false")],
  ]);
});

Deno.test("integer takes TOML integers in range and refuses floats", () => {
  checkRows(integer(1, 10), [
    [1n, good(1)],
    [10n, good(10)],
    [0n, bad("expected an integer in 1..10, got 0")],
    [11n, bad("expected an integer in 1..10, got 11")],
    [2n ** 70n, bad(`expected an integer in 1..10, got ${2n ** 70n}`)],
    [5, bad("expected an integer, got 5.0")],
    [1.5, bad("expected an integer, got 1.5")],
    ["5", bad('expected an integer, got "5"')],
  ]);
});

Deno.test("seconds converts to rounded milliseconds and refuses zero by default", () => {
  checkRows(seconds(), [
    [5n, good(5000)],
    [0.25, good(250)],
    [0.0016, good(2)],
    [0.001, good(1)],
    [2147483n, good(2147483000)],
    [0n, bad("expected seconds in 0.001..2147483, got 0")],
    [0.0004, bad("expected seconds in 0.001..2147483, got 0.0004")],
    [-1n, bad("expected seconds in 0.001..2147483, got -1")],
    [2147484n, bad("expected seconds in 0.001..2147483, got 2147484")],
    [NaN, bad("expected seconds in 0.001..2147483, got nan")],
    [Infinity, bad("expected seconds in 0.001..2147483, got inf")],
    ["5s", bad('expected a number of seconds, got "5s"')],
  ]);
  checkRows(seconds(0, 3600), [
    [0n, good(0)],
    [3600n, good(3_600_000)],
    [3601n, bad("expected seconds in 0..3600, got 3601")],
  ]);
});

Deno.test("oneOf accepts exactly the listed strings", () => {
  checkRows(oneOf("json", "text"), [
    ["json", good("json")],
    ["JSON", bad('expected one of "json", "text", got "JSON"')],
    [1n, bad("expected a string, got 1")],
  ]);
});

Deno.test("absolutePath and optionalText check their strings", () => {
  checkRows(absolutePath(), [
    ["/var/lib/usage.kv", good("/var/lib/usage.kv")],
    ["usage.kv", bad('expected an absolute path, got "usage.kv"')],
  ]);
  checkRows(optionalText(), [
    ["", good(null)],
    ["sidecar-7", good("sidecar-7")],
    [7n, bad("expected a string, got 7")],
  ]);
});

Deno.test("describeValue shows values as TOML would write them", () => {
  assertEquals(
    [
      "a\nb",
      3n,
      3,
      -Infinity,
      true,
      [1n],
      new Date(0),
      { a: 1n },
    ].map(describeValue),
    ['"a\\nb"', "3", "3.0", "-inf", "true", "an array", "a date", "a table"],
  );
});
