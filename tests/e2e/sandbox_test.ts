/**
 * The sandbox holds: under the production permission set (src/permissions.ts,
 * derived from its configuration) the sidecar serves, meters and bills end
 * to end; given a configuration that points outside the set it was started
 * with, it names every missing permission and exits before it opens or
 * contacts anything.
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { parseConfig } from "../../src/config/mod.ts";
import { denoFlags, permissionSet } from "../../src/permissions.ts";
import { BillingServer } from "../helpers/billing_server.ts";
import {
  DENO,
  gateway,
  generate,
  Proc,
  req,
  startSidecar,
  startSim,
  tempDir,
  within,
} from "../helpers/harness.ts";

/** The arguments a running process was started with. */
async function commandLine(pid: number): Promise<string[]> {
  const raw = await Deno.readTextFile(`/proc/${pid}/cmdline`);
  return raw.split("\0").filter((a) => a !== "");
}

/** A loopback port that was free a moment ago. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test("under the production permission set the sidecar serves, meters and bills end to end", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const billing = new BillingServer();
  billing.start();
  const sim = await startSim(sock, ["--ttft-ms", "2", "--itl-ms", "1"]);
  const sidecar = await startSidecar(
    dir,
    sock,
    `[metering]\nbilling_endpoint = "${billing.url}"\nbatch_interval_secs = 0.1`,
  );
  const client = gateway(sidecar.grpcAddr);
  try {
    // Exactly `deno run`, the set for this configuration, the entry point.
    const text = await Deno.readTextFile(sidecar.configPath);
    const parsed = parseConfig(text, sidecar.configPath);
    ok(parsed.ok);
    const flags = denoFlags(permissionSet(parsed.config, sidecar.configPath));
    deepStrictEqual((await commandLine(sidecar.proc.child.pid)).slice(1), [
      "run",
      ...flags,
      "main.ts",
      "--config",
      sidecar.configPath,
    ]);

    const out = await generate(client, req("sandbox-1", "inside the sandbox"));
    equal(out.error, null);
    equal(out.status?.code, 0);
    ok(out.tokenIds.length > 0);

    // The usage record went through the queue's folder to billing.
    const [record] = await billing.waitFor((u) => u.length === 1);
    equal(record.request_id, "sandbox-1");
    equal(record.completion_tokens, out.tokenIds.length);
    ok(
      [...Deno.readDirSync(`${dir}/usage`)].some((e) => e.name === "usage.kv"),
    );
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
    await billing.close();
  }
});

Deno.test("a config pointing outside the permission set fails at start, naming every missing permission, and reaches nothing", async () => {
  // The set is derived from config A, as a launcher or `deno compile` does.
  const dir = await tempDir();
  const configPath = `${dir}/sidecar.toml`;
  const [grpcPort, metricsPort] = [freePort(), freePort()];
  const configA = `[server]
bind_addr = "127.0.0.1:${grpcPort}"
worker_uds = "unix://${dir}/w.sock"
[metering]
usage_db_path = "${dir}/usage/usage.kv"
[observability]
metrics_host = "127.0.0.1"
metrics_port = ${metricsPort}
`;
  const parsedA = parseConfig(configA, configPath);
  ok(parsedA.ok);
  const flags = denoFlags(permissionSet(parsedA.config, configPath));

  // Outside A: a worker socket, a queue folder and a billing service that
  // each count what reaches them, and another metrics port.
  const elsewhere = await tempDir();
  const queueDir = await tempDir();
  const worker = Deno.listen({
    transport: "unix",
    path: `${elsewhere}/w.sock`,
  });
  let workerConnections = 0;
  const accepting = (async () => {
    for await (const conn of worker) {
      workerConnections++;
      conn.close();
    }
  })();
  let billingRequests = 0;
  let billingPort = 0;
  const billing = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: (a) => (billingPort = a.port),
  }, () => {
    billingRequests++;
    return Response.json({ accepted: 0 });
  });
  const otherMetricsPort = freePort();

  // Config B replaces A in the same file, as an edited ConfigMap would.
  await Deno.writeTextFile(
    configPath,
    `[server]
bind_addr = "127.0.0.1:${grpcPort}"
worker_uds = "unix://${elsewhere}/w.sock"
[metering]
usage_db_path = "${queueDir}/usage.kv"
billing_endpoint = "http://127.0.0.1:${billingPort}/v1/usage"
batch_interval_secs = 0.1
[observability]
metrics_host = "127.0.0.1"
metrics_port = ${otherMetricsPort}
`,
  );

  try {
    const proc = new Proc(DENO, [
      "run",
      ...flags,
      "main.ts",
      "--config",
      configPath,
    ]);
    const status = await within("the sidecar exits", proc.exited, 30_000);
    equal(status.code, 1);

    const problems = proc.lines.filter((l) => l.startsWith(`${configPath}: `));
    const why = (key: string, kind: string, target: string) =>
      `${configPath}: ${key}: no ${kind} permission for ` +
      `${JSON.stringify(target)} (--allow-${kind})`;
    deepStrictEqual(problems, [
      why(
        "observability.metrics_host and metrics_port",
        "net",
        `127.0.0.1:${otherMetricsPort}`,
      ),
      why("metering.billing_endpoint", "net", `127.0.0.1:${billingPort}`),
      why("server.worker_uds", "read", `${elsewhere}/w.sock`),
      why("server.worker_uds", "write", `${elsewhere}/w.sock`),
      why("metering.usage_db_path", "read", queueDir),
      why("metering.usage_db_path", "write", queueDir),
    ]);
    ok(proc.lines.some((l) => l.includes("(6 missing)")));
    ok(!proc.lines.some((l) => l.includes("cy-sidecar started")));

    // Nothing outside the sandbox was touched.
    equal(workerConnections, 0);
    equal(billingRequests, 0);
    deepStrictEqual([...Deno.readDirSync(queueDir)], []);
  } finally {
    worker.close();
    await accepting.catch(() => {});
    await billing.shutdown();
  }
});

Deno.test("a config file the permission set does not name cannot even be read", async () => {
  const dir = await tempDir();
  const granted = `${dir}/sidecar.toml`;
  const other = `${dir}/other.toml`;
  const text = `[server]\nworker_uds = "unix://${dir}/w.sock"\n`;
  await Deno.writeTextFile(granted, text);
  await Deno.writeTextFile(other, text);
  const parsed = parseConfig(text, granted);
  ok(parsed.ok);
  const flags = denoFlags(permissionSet(parsed.config, granted));

  const proc = new Proc(DENO, ["run", ...flags, "main.ts", "--config", other]);
  const status = await within("the sidecar exits", proc.exited, 30_000);
  equal(status.code, 1);
  ok(
    proc.lines.some((l) =>
      l.startsWith(`${other}: cannot read the config file: read access`)
    ),
    proc.lines.join("\n"),
  );
});
