import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { type Config, parseConfig } from "../config/mod.ts";
import { denoFlags, permissionSet } from "../permissions.ts";
import {
  describeMissing,
  missingPermissions,
  type PermissionQuery,
} from "./sandbox_check.ts";

function config(text: string): Config {
  const result = parseConfig(text, "sidecar.toml");
  if (!result.ok) throw new Error(JSON.stringify(result.problems));
  return result.config;
}

/** A query that grants exactly what `--allow-<name>=<list>` flags would. */
function granting(flags: string[]): PermissionQuery {
  const lists = new Map<string, string[]>();
  for (const f of flags) {
    const m = f.match(/^--allow-(\w+)=(.*)$/);
    if (m) lists.set(m[1], m[2].split(","));
  }
  return (d) => {
    const list = lists.get(d.name) ?? [];
    const target = "host" in d
      ? d.host
      : "path" in d
      ? String(d.path)
      : "variable" in d
      ? d.variable
      : "kind" in d
      ? d.kind
      : undefined;
    if (target === undefined) return "prompt";
    const hit = list.some((g) =>
      g === target ||
      (d.name === "net" && target!.startsWith(`${g}:`)) ||
      ((d.name === "read" || d.name === "write") &&
        target!.startsWith(`${g}/`))
    );
    return hit ? "granted" : "prompt";
  };
}

const BUILT_FOR_TEXT = `[server]
bind_addr = "0.0.0.0:50051"
worker_uds = "unix:///tmp/cy_worker.sock"
[metering]
billing_endpoint = "http://billing-service:8080/v1/usage"
usage_db_path = "/var/lib/cy-sidecar/usage.kv"
`;
const BUILT_FOR = config(BUILT_FOR_TEXT);
const GRANTED = granting(denoFlags(permissionSet(BUILT_FOR)));

// Same listeners, socket, queue folder and billing host: inside the set.
const RETUNED_TEXT = `[server]
worker_uds = "unix:///tmp/cy_worker.sock"
shutdown_grace_secs = 10
[metering]
billing_endpoint = "http://billing-service:8080/v2/usage"
usage_db_path = "/var/lib/cy-sidecar/other.kv"
`;

const OUTSIDE_TEXT = `[server]
bind_addr = "127.0.0.1:50051"
worker_uds = "/run/other/w.sock"
[metering]
billing_endpoint = "https://collector.example/usage"
usage_db_path = "/home/nonroot/usage.kv"
[observability]
metrics_host = "127.0.0.1"
metrics_port = 9191
`;
const OUTSIDE_MISSING = [
  "net 127.0.0.1:50051",
  "net 127.0.0.1:9191",
  "net collector.example:443",
  "read /run/other/w.sock",
  "write /run/other/w.sock",
  "read /home/nonroot",
  "write /home/nonroot",
];

Deno.test("a configuration inside the permission set it was built for passes", () => {
  assertEquals(missingPermissions(BUILT_FOR, GRANTED), []);
  assertEquals(missingPermissions(config(RETUNED_TEXT), GRANTED), []);
});

Deno.test("every setting that points outside the set is reported", () => {
  assertEquals(
    missingPermissions(config(OUTSIDE_TEXT), GRANTED).map((m) =>
      `${m.name} ${m.target}`
    ),
    OUTSIDE_MISSING,
  );
});

Deno.test("a permission two settings need is reported once, naming both", () => {
  const shared = config(`[server]
bind_addr = "127.0.0.1:0"
[observability]
metrics_host = "127.0.0.1"
metrics_port = 0
`);
  assertEquals(
    missingPermissions(shared, GRANTED).filter((m) => m.name === "net"),
    [{
      name: "net",
      target: "127.0.0.1",
      reasons: [
        "server.bind_addr",
        "observability.metrics_host and metrics_port",
      ],
    }],
  );
});

Deno.test("the report names each path or host, the setting and the flag, then what to do", () => {
  const text = describeMissing(
    [
      { name: "read", target: "/run/w.sock", reasons: ["server.worker_uds"] },
      {
        name: "net",
        target: "evil.example:443",
        reasons: ["metering.billing_endpoint"],
      },
    ],
    "/etc/cy-sidecar/sidecar.toml",
  );
  const lines = text.split("\n");
  assertEquals(lines.slice(0, 2), [
    '/etc/cy-sidecar/sidecar.toml: server.worker_uds: no read permission for "/run/w.sock" (--allow-read)',
    '/etc/cy-sidecar/sidecar.toml: metering.billing_endpoint: no net permission for "evil.example:443" (--allow-net)',
  ]);
  ok(lines[2].includes("(2 missing)"));
  ok(lines[3].includes("docs/deployment.md"));
});

Deno.test("with Deno's own query, a process given the set of one config finds exactly what another config needs beyond it", async () => {
  // The test runner has every permission, so the real query is asked in a
  // process started with only the set derived from BUILT_FOR.
  const here = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
  const probe = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(
    probe,
    `import { parseConfig } from ${here("../config/mod.ts")};
import { missingPermissions } from ${here("./sandbox_check.ts")};
for (const text of Deno.args) {
  const parsed = parseConfig(text, "sidecar.toml");
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.problems));
  const missing = missingPermissions(parsed.config);
  console.log(JSON.stringify(missing.map((m) => m.name + " " + m.target)));
}
`,
  );
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        `--config=${new URL("../../deno.json", import.meta.url).pathname}`,
        ...denoFlags(permissionSet(BUILT_FOR)),
        probe,
        BUILT_FOR_TEXT,
        RETUNED_TEXT,
        OUTSIDE_TEXT,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    const verdicts = new TextDecoder().decode(out.stdout).trim().split("\n")
      .map((l) => JSON.parse(l));
    assertEquals(verdicts, [[], [], OUTSIDE_MISSING]);
  } finally {
    await Deno.remove(probe);
  }
});
