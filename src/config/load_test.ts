import {
  deepStrictEqual as assertEquals,
  rejects as assertRejects,
} from "node:assert/strict";
import {
  ConfigError,
  type ConfigProblem,
  formatProblem,
  loadConfig,
  parseConfig,
} from "./load.ts";
import { DEFAULT_CONFIG } from "./schema.ts";

/** The problems `text` has, as the one-line messages a user sees. */
function problemLines(text: string): string[] {
  const result = parseConfig(text, "sidecar.toml");
  return result.ok ? [] : result.problems.map(formatProblem);
}

Deno.test("parseConfig gives the defaults for an empty file", () => {
  assertEquals(parseConfig("", "sidecar.toml"), {
    ok: true,
    config: DEFAULT_CONFIG,
  });
});

Deno.test("parseConfig overrides only the keys the file sets", () => {
  const result = parseConfig(
    [
      "[server]",
      'bind_addr = "[::1]:0"',
      'worker_uds = "unix:/run/w.sock"',
      "[metering]",
      'billing_endpoint = "https://billing.example/usage"',
      'instance_id = "sidecar-3"',
      "[health]",
      "check_interval_secs = 0.5",
    ].join("\n"),
    "sidecar.toml",
  );

  assertEquals(result.ok, true);
  if (!result.ok) return;
  const { server, metering, health } = result.config;
  assertEquals([server.bindHost, server.bindPort], ["::1", 0]);
  assertEquals(server.workerSocketPath, "/run/w.sock");
  assertEquals(server.maxConcurrentStreams, 1024);
  assertEquals(metering.billingEndpoint, "https://billing.example/usage");
  assertEquals(metering.instanceId, "sidecar-3");
  assertEquals(health.checkIntervalMs, 500);
  assertEquals(health.heartbeatTimeoutMs, 2000);
});

Deno.test("parseConfig accepts dotted keys and inline tables", () => {
  const result = parseConfig(
    [
      "server.max_concurrent_streams = 8",
      "worker = { stream_credit_chunks = 4 }",
    ].join("\n"),
    "sidecar.toml",
  );

  assertEquals(result.ok && result.config.server.maxConcurrentStreams, 8);
  assertEquals(result.ok && result.config.worker.streamCreditChunks, 4);
});

Deno.test("parseConfig reports every bad key at once with its line", () => {
  assertEquals(
    problemLines([
      "[server]",
      'bind_addr = "nonsense"',
      "max_concurrent_streams = 0",
      "",
      "[worker]",
      'stream_credit_chunks = "32"',
      "max_frame_bytes = 2048.0",
      "",
      "[observability]",
      'log_level = "verbose"',
    ].join("\n")),
    [
      'sidecar.toml:2: server.bind_addr: expected "host:port" or ' +
      '"[ipv6]:port", got "nonsense"',
      "sidecar.toml:3: server.max_concurrent_streams: expected an integer " +
      "in 1..100000, got 0",
      'sidecar.toml:6: worker.stream_credit_chunks: expected an integer, got "32"',
      "sidecar.toml:7: worker.max_frame_bytes: expected an integer, got 2048.0",
      'sidecar.toml:10: observability.log_level: expected one of "debug", ' +
      '"info", "warn", "error", got "verbose"',
    ],
  );
});

Deno.test("parseConfig keeps the value seen and the source in each problem", () => {
  const result = parseConfig("[worker]\nmax_frame_bytes = 1\n", "a.toml");

  assertEquals(result, {
    ok: false,
    problems: [{
      key: "worker.max_frame_bytes",
      message: "expected an integer in 1024..67108864, got 1",
      value: 1,
      line: 2,
      source: "a.toml",
    }],
  });
});

Deno.test("parseConfig names unknown sections and keys, suggesting the likely one", () => {
  const rows: [string, string][] = [
    [
      '[sever]\nbind_addr = "x"',
      "sidecar.toml:1: sever: unknown section; did you mean [server]?",
    ],
    [
      "[tls]\ncert = 1",
      "sidecar.toml:1: tls: unknown section; expected one of [server], [worker], [metering], [health], [observability]",
    ],
    [
      "[server]\nbind_adr = 1",
      "sidecar.toml:2: server.bind_adr: unknown key; did you mean server.bind_addr?",
    ],
    [
      "[server]\nmetrics_port = 1",
      "sidecar.toml:2: server.metrics_port: unknown key; it belongs in [observability]",
    ],
    [
      "[server]\nmetrics_prot = 1",
      "sidecar.toml:2: server.metrics_prot: unknown key; did you mean observability.metrics_port?",
    ],
    ["[server]\ncolour = 1", "sidecar.toml:2: server.colour: unknown key"],
    ["[server.tls]\ncert = 1", "sidecar.toml:1: server.tls: unknown key"],
    [
      "log_level = 'info'",
      "sidecar.toml:1: log_level: unknown top-level key; it belongs in [observability]",
    ],
    [
      "log_levl = 'info'",
      "sidecar.toml:1: log_levl: unknown top-level key; did you mean observability.log_level?",
    ],
    [
      "debug = true",
      "sidecar.toml:1: debug: unknown top-level key; keys go under a section such as [server]",
    ],
    ["server = 5", "sidecar.toml:1: server: expected a table, got 5"],
  ];

  for (const [text, line] of rows) {
    assertEquals(problemLines(text), [line], text);
  }
});

Deno.test("parseConfig reports a TOML syntax error as one problem with its line", () => {
  const result = parseConfig(
    "[server]\nbind_addr = \n[worker]\nx = ",
    "s.toml",
  );

  assertEquals(result, {
    ok: false,
    problems: [{
      key: "",
      message: "invalid TOML at column 13: invalid value",
      line: 2,
      source: "s.toml",
    }],
  });
});

Deno.test("parseConfig wants reconnect_max_delay_secs at least reconnect_delay_secs", () => {
  const rows: [string, string[]][] = [
    ["reconnect_delay_secs = 5\nreconnect_max_delay_secs = 5", []],
    ["reconnect_delay_secs = 60\nreconnect_max_delay_secs = 30", [
      "sidecar.toml:3: health.reconnect_max_delay_secs: expected at least " +
      "health.reconnect_delay_secs (60), got 30",
    ]],
    ["reconnect_delay_secs = 45.5", [
      "sidecar.toml:2: health.reconnect_delay_secs: expected at most " +
      "health.reconnect_max_delay_secs (30), got 45.5",
    ]],
    ["reconnect_max_delay_secs = 1", [
      "sidecar.toml:2: health.reconnect_max_delay_secs: expected at least " +
      "health.reconnect_delay_secs (2), got 1",
    ]],
    // The rule waits until both keys are good on their own.
    ['reconnect_delay_secs = "x"\nreconnect_max_delay_secs = 1', [
      "sidecar.toml:2: health.reconnect_delay_secs: expected a number of " +
      'seconds, got "x"',
    ]],
  ];

  for (const [keys, lines] of rows) {
    assertEquals(problemLines(`[health]\n${keys}`), lines, keys);
  }
});

Deno.test("parseConfig wants the gRPC and metrics ports to differ unless one is 0", () => {
  const rows: [string, string[]][] = [
    [
      '[server]\nbind_addr = "0.0.0.0:0"\n[observability]\nmetrics_port = 0',
      [],
    ],
    [
      '[server]\nbind_addr = "0.0.0.0:8080"\n[observability]\nmetrics_port = 8081',
      [],
    ],
    ["[observability]\nmetrics_port = 50051", [
      "sidecar.toml:2: observability.metrics_port: expected a port other " +
      "than the gRPC port of server.bind_addr (50051), got 50051",
    ]],
    ['[server]\nbind_addr = "127.0.0.1:9090"', [
      "sidecar.toml:2: server.bind_addr: expected a port other than " +
      'observability.metrics_port (9090), got "127.0.0.1:9090"',
    ]],
  ];

  for (const [text, lines] of rows) {
    assertEquals(problemLines(text), lines, text);
  }
});

Deno.test("parseConfig places a key of a multi-line inline table on the table's line", () => {
  const problems = problemLines("server = {\n  bind_addr = 'x'\n}\n");

  assertEquals(problems, [
    'sidecar.toml:1: server.bind_addr: expected "host:port" or "[ipv6]:port", got "x"',
  ]);
});

Deno.test("formatProblem leaves out a missing line or key", () => {
  const problem: ConfigProblem = { key: "", message: "m", source: "f.toml" };

  assertEquals(formatProblem(problem), "f.toml: m");
  assertEquals(
    formatProblem({ ...problem, key: "k", line: 3 }),
    "f.toml:3: k: m",
  );
});

Deno.test("ConfigError lists every problem, one per line", () => {
  const error = new ConfigError([
    { key: "a.b", message: "one", line: 1, source: "s.toml" },
    { key: "c.d", message: "two", source: "s.toml" },
  ]);

  assertEquals(error.name, "ConfigError");
  assertEquals(error.message, "s.toml:1: a.b: one\ns.toml: c.d: two");
  assertEquals(error.problems.length, 2);
});

Deno.test("loadConfig without a path gives a fresh copy of the defaults", async () => {
  const config = await loadConfig();

  assertEquals(config, DEFAULT_CONFIG);
  config.server.bindPort = 0;
  assertEquals(DEFAULT_CONFIG.server.bindPort, 50051);
});

Deno.test("loadConfig reports a missing or unreadable file as one problem", async () => {
  const rows: [string, string][] = [
    ["/nonexistent/sidecar.toml", "no such file"],
    ["/", "it is a directory"],
  ];

  for (const [path, reason] of rows) {
    await assertRejects(loadConfig(path), (error) => {
      assertEquals(error instanceof ConfigError, true);
      assertEquals((error as ConfigError).problems, [{
        key: "",
        message: `cannot read the config file: ${reason}`,
        source: path,
      }]);
      return true;
    });
  }
});

Deno.test("loadConfig throws a ConfigError listing a bad file's problems", async () => {
  const path = new URL("./load_test.ts", import.meta.url).pathname;

  // A TypeScript file is not TOML: the syntax error is the one problem.
  await assertRejects(loadConfig(path), (error) => {
    assertEquals(error instanceof ConfigError, true);
    const { problems, message } = error as ConfigError;
    assertEquals(problems.length, 1);
    assertEquals(message.startsWith(`${path}:1: invalid TOML at column`), true);
    return true;
  });
});
