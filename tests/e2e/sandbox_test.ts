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
  runMain,
  startSidecar,
  startSim,
  tempDir,
  waitUntil,
  within,
} from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

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
  const billing = new BillingServer();
  billing.start();
  const t = await startStack({
    simArgs: ["--ttft-ms", "2", "--itl-ms", "1"],
    billing,
  });
  const { sidecar } = t;
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

    const out = await generate(
      t.client,
      req("sandbox-1", "inside the sandbox"),
    );
    equal(out.error, null);
    equal(out.status?.code, 0);
    ok(out.tokenIds.length > 0);

    // The usage record went through the queue's folder to billing.
    const [record] = await billing.waitFor((u) => u.length === 1);
    equal(record.request_id, "sandbox-1");
    equal(record.completion_tokens, out.tokenIds.length);
    ok(
      [...Deno.readDirSync(`${t.dir}/usage`)].some((e) =>
        e.name === "usage.kv"
      ),
    );
  } finally {
    await t.close();
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

Deno.test("--dump-usage and --check-config run under the production set of their config", async () => {
  // No billing endpoint: the record stays in the queue for the dump.
  const t = await startStack({ simArgs: ["--ttft-ms", "2", "--itl-ms", "1"] });
  const { sidecar } = t;
  try {
    const out = await generate(t.client, req("dump-1", "keep this one"));
    equal(out.error, null);
    sidecar.proc.signal("SIGTERM");
    equal((await within("the sidecar exits", sidecar.proc.exited)).code, 0);

    const dump = await runMain(sidecar.configPath, ["--dump-usage"]);
    equal(dump.code, 0, dump.stderr.join("\n"));
    const entries = dump.stdout.map((l) => JSON.parse(l));
    equal(entries.length, 1);
    equal(entries[0].record.request_id, "dump-1");
    equal(entries[0].record.completion_tokens, out.tokenIds.length);

    const checked = await runMain(sidecar.configPath, ["--check-config"]);
    equal(checked.code, 0, checked.stderr.join("\n"));
    deepStrictEqual(checked.stdout, [`${sidecar.configPath}: ok`]);
  } finally {
    await t.close();
  }
});

Deno.test("on IPv6 loopback the sidecar listens, serves and bills under the production set", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const received: { request_id: string; completion_tokens: number }[] = [];
  let billingPort = 0;
  const billing = Deno.serve({
    hostname: "::1",
    port: 0,
    onListen: (a) => (billingPort = a.port),
  }, async (r) => {
    const records = (await r.json()).records;
    received.push(...records);
    return Response.json({ accepted: records.length });
  });
  const sim = await startSim(sock, ["--ttft-ms", "2", "--itl-ms", "1"]);
  const sidecar = await startSidecar(
    dir,
    sock,
    `[server]
bind_addr = "[::1]:0"
[metering]
billing_endpoint = "http://[::1]:${billingPort}/v1/usage"
batch_interval_secs = 0.1
[observability]
metrics_host = "::1"`,
    { waitReady: false },
  );
  // The start-up line joins host and port with a colon; the port is last.
  const started = sidecar.proc.logs().find((l) =>
    l.msg === "cy-sidecar started"
  )!;
  const port = (addr: unknown) => String(addr).split(":").at(-1);
  const client = gateway(`[::1]:${port(started.grpc_addr)}`);
  try {
    const text = await Deno.readTextFile(sidecar.configPath);
    const parsed = parseConfig(text, sidecar.configPath);
    ok(parsed.ok);
    const net = denoFlags(permissionSet(parsed.config, sidecar.configPath))
      .find((f) => f.startsWith("--allow-net="));
    equal(net, `--allow-net=[::1],[::1]:${billingPort}`);

    const readyz = `http://[::1]:${port(started.metrics_addr)}/readyz`;
    await waitUntil("/readyz on [::1] answers 200", async () => {
      const res = await fetch(readyz).catch(() => null);
      await res?.body?.cancel();
      return res?.status === 200;
    });
    const out = await generate(client, req("v6-1", "over IPv6"));
    equal(out.error, null);
    await waitUntil(
      "billing on [::1] has the record",
      () => received.some((r) => r.request_id === "v6-1"),
    );
    equal(
      received.find((r) => r.request_id === "v6-1")!.completion_tokens,
      out.tokenIds.length,
    );
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
    await billing.shutdown();
  }
});

/**
 * A config file laid out as a Kubernetes ConfigMap mounts it:
 * `sidecar.toml -> ..data/sidecar.toml`, `..data -> ..<version>/`.
 * Returns the link path; `update` publishes new contents the same way the
 * kubelet does (a new version folder, then an atomic swap of `..data`).
 */
async function configMapMount(dir: string, text: string) {
  let version = 0;
  const publish = async (contents: string) => {
    const folder = `..2024_01_01_00_00_0${version++}`;
    await Deno.mkdir(`${dir}/${folder}`);
    await Deno.writeTextFile(`${dir}/${folder}/sidecar.toml`, contents);
    await Deno.symlink(folder, `${dir}/..data_tmp`);
    await Deno.rename(`${dir}/..data_tmp`, `${dir}/..data`);
    return `${dir}/${folder}/sidecar.toml`;
  };
  const target = await publish(text);
  await Deno.symlink("..data/sidecar.toml", `${dir}/sidecar.toml`);
  return { link: `${dir}/sidecar.toml`, target, update: publish };
}

Deno.test("a config mounted through symbolic links, as a ConfigMap is, runs under the flags tools/sidecar_flags.ts prints, also after the links move", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const mount = `${dir}/config`;
  await Deno.mkdir(mount);
  await Deno.mkdir(`${dir}/usage`);
  const text = (grace: number) =>
    `[server]
bind_addr = "127.0.0.1:0"
worker_uds = "unix://${sock}"
shutdown_grace_secs = ${grace}
[metering]
usage_db_path = "${dir}/usage/usage.kv"
[observability]
metrics_host = "127.0.0.1"
metrics_port = 0
`;
  const { link, target, update } = await configMapMount(mount, text(5));

  // The flags exactly as the README prints them, from the link's path.
  const printed = await new Deno.Command(DENO, {
    args: ["run", "--allow-read", "tools/sidecar_flags.ts", link],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  equal(printed.code, 0, new TextDecoder().decode(printed.stderr));
  const flags = new TextDecoder().decode(printed.stdout).trim().split("\n");
  const read = flags.find((f) => f.startsWith("--allow-read="))!;
  ok(read.split("=")[1].split(",").includes(link), read);
  ok(!read.includes(target), `${read} grants the link's target`);

  const sim = await startSim(sock, ["--ttft-ms", "2", "--itl-ms", "1"]);
  const proc = new Proc(DENO, ["run", ...flags, "main.ts", "--config", link]);
  try {
    const started = JSON.parse(
      await proc.waitFor(/"msg":"cy-sidecar started"/, 30_000),
    );
    const client = gateway(started.grpc_addr);
    try {
      await waitUntil("the worker is connected", async () => {
        const out = await generate(client, req("link-1", "through links"));
        return out.error === null;
      });
    } finally {
      client.close();
    }

    // The ConfigMap changes: new version folder, ..data swapped. The
    // same flags still cover the file, as Deno checks the path given.
    const next = await update(text(7));
    const checked = await new Deno.Command(DENO, {
      args: ["run", ...flags, "main.ts", "--config", link, "--check-config"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    equal(checked.code, 0, new TextDecoder().decode(checked.stderr));
    equal(new TextDecoder().decode(checked.stdout).trim(), `${link}: ok`);
    ok(!read.includes(next));
  } finally {
    await proc.kill();
    await sim.kill();
  }
});
