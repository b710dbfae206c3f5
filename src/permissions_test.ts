import { deepStrictEqual as assertEquals, equal, ok } from "node:assert/strict";
import { type Config, parseConfig } from "./config/mod.ts";
import { denoFlags, ENV_VARS, permissionSet, V8_FLAGS } from "./permissions.ts";

function config(text: string): Config {
  const result = parseConfig(text, "sidecar.toml");
  if (!result.ok) throw new Error(JSON.stringify(result.problems));
  return result.config;
}

Deno.test("the default configuration needs its two listeners, the socket and the queue folder", () => {
  assertEquals(permissionSet(config("")), {
    net: ["0.0.0.0:50051", "0.0.0.0:9090"],
    read: ["/tmp/cy_worker.sock", "/tmp/cy-sidecar"],
    write: ["/tmp/cy_worker.sock", "/tmp/cy-sidecar"],
    env: [...ENV_VARS],
    sys: ["hostname"],
  });
});

Deno.test("the billing endpoint adds its host and port, 443 or 80 when unwritten", () => {
  const https = config(
    '[metering]\nbilling_endpoint = "https://billing.example/v1/usage"',
  );
  const http = config(
    '[metering]\nbilling_endpoint = "http://billing-service:8080/v1/usage"',
  );
  const plain = config('[metering]\nbilling_endpoint = "http://b.example/u"');
  assertEquals(permissionSet(https).net.at(-1), "billing.example:443");
  assertEquals(permissionSet(http).net.at(-1), "billing-service:8080");
  assertEquals(permissionSet(plain).net.at(-1), "b.example:80");
});

Deno.test("paths in the config decide file access; the config file is readable only", () => {
  const set = permissionSet(
    config(
      '[server]\nworker_uds = "unix:///run/cy/w.sock"\n' +
        '[metering]\nusage_db_path = "/var/lib/cy-sidecar/usage.kv"',
    ),
    "/etc/cy-sidecar/sidecar.toml",
  );
  assertEquals(set.read, [
    "/run/cy/w.sock",
    "/var/lib/cy-sidecar",
    "/etc/cy-sidecar/sidecar.toml",
  ]);
  assertEquals(set.write, ["/run/cy/w.sock", "/var/lib/cy-sidecar"]);
});

Deno.test("listeners on port 0 are granted by host; one host on two listeners appears once", () => {
  const set = permissionSet(
    config(
      '[server]\nbind_addr = "[::1]:0"\n' +
        '[observability]\nmetrics_host = "::1"\nmetrics_port = 0',
    ),
  );
  assertEquals(set.net, ["[::1]"]);
});

Deno.test("the flags grant nothing unscoped and carry --unstable-kv and the V8 flags", () => {
  const flags = denoFlags(permissionSet(config("")));
  ok(flags.includes("--no-prompt"));
  ok(flags.includes("--unstable-kv"));
  ok(flags.includes(`--v8-flags=${V8_FLAGS.join(",")}`));
  ok(V8_FLAGS.includes("--max-old-space-size=64"));
  const grants = flags.filter((f) => f.startsWith("--allow-"));
  assertEquals(
    grants.map((f) => f.slice(0, f.indexOf("="))).sort(),
    [
      "--allow-env",
      "--allow-net",
      "--allow-read",
      "--allow-sys",
      "--allow-write",
    ],
  );
  for (const grant of grants) {
    const list = grant.slice(grant.indexOf("=") + 1);
    ok(list.length > 0 && !list.split(",").includes(""), grant);
  }
  ok(!flags.some((f) => f === "-A" || f === "--allow-all"));
});

Deno.test("an IPv6 billing endpoint and IPv6 listeners are granted with one pair of brackets", () => {
  const set = permissionSet(
    config(
      '[server]\nbind_addr = "[::1]:50051"\n' +
        '[metering]\nbilling_endpoint = "http://[::1]:8080/v1/usage"\n' +
        '[observability]\nmetrics_host = "fd00::2"\nmetrics_port = 9090',
    ),
  );
  assertEquals(set.net, ["[::1]:50051", "[fd00::2]:9090", "[::1]:8080"]);
  const https = config(
    '[metering]\nbilling_endpoint = "https://[2001:db8::1]/v1/usage"',
  );
  assertEquals(permissionSet(https).net.at(-1), "[2001:db8::1]:443");
});

Deno.test("Deno accepts the --allow-net list of an IPv6 configuration and grants exactly its entries", async () => {
  const flags = denoFlags(permissionSet(config(
    '[server]\nbind_addr = "[::1]:50051"\n' +
      '[metering]\nbilling_endpoint = "http://[::1]:8080/v1/usage"\n' +
      '[observability]\nmetrics_host = "::1"\nmetrics_port = 9090',
  )));
  const net = flags.find((f) => f.startsWith("--allow-net="))!;
  const probe = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(
    probe,
    "for (const host of Deno.args) console.log(host, " +
      'Deno.permissions.querySync({ name: "net", host }).state);',
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      net,
      probe,
      "[::1]:50051",
      "[::1]:8080",
      "[::1]:9090",
      "[::1]:8081",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(probe);
  const stderr = new TextDecoder().decode(out.stderr);
  equal(out.code, 0, stderr);
  assertEquals(new TextDecoder().decode(out.stdout).trim().split("\n"), [
    "[::1]:50051 granted",
    "[::1]:8080 granted",
    "[::1]:9090 granted",
    "[::1]:8081 prompt",
  ]);
});
