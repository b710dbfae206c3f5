// deno-lint-ignore-file no-explicit-any -- grpc-js clients are untyped stubs
import { equal, match, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { SIDECAR_VERSION } from "../../src/version.ts";
import {
  gateway,
  generate,
  getStatus,
  healthClient,
  metric,
  req,
  startSidecar,
  startSim,
  tempDir,
  waitUntil,
  within,
} from "../helpers/harness.ts";

type Client = grpc.Client & Record<string, any>;

function check(health: Client, service: string): Promise<string> {
  return new Promise((resolve, reject) => {
    health.Check(
      { service },
      (err: grpc.ServiceError | null, res: { status: string }) =>
        err ? reject(err) : resolve(res.status),
    );
  });
}

async function readyz(metricsUrl: string) {
  const res = await fetch(`${metricsUrl}/readyz`);
  return { status: res.status, body: await res.json() };
}

/** A simulator and a sidecar; the simulator can be killed and restarted. */
async function setup(simArgs: string[] = []) {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const args = ["--ttft-ms", "5", "--itl-ms", "2", ...simArgs];
  const t = {
    sim: await startSim(sock, args),
    sidecar: await startSidecar(dir, sock),
    client: null as unknown as Client,
    health: null as unknown as Client,
    restartSim: async () => {
      t.sim = await startSim(sock, args);
    },
    async close() {
      t.client.close();
      t.health.close();
      await t.sidecar.proc.kill();
      await t.sim.kill();
    },
  };
  t.client = gateway(t.sidecar.grpcAddr);
  t.health = healthClient(t.sidecar.grpcAddr);
  return t;
}

Deno.test("GetStatus describes the connected worker and counts generations in flight", async () => {
  const t = await setup(["--max-concurrency", "7"]);
  const call = t.client.Generate(
    req("busy-1", "go on [[sim tokens=100000 itl_ms=10]]", {
      sampling: { max_tokens: 0 },
    }),
  );
  call.on("error", () => {});
  try {
    await within(
      "first chunk",
      new Promise<void>((resolve) => call.once("data", () => resolve())),
    );
    const status = await getStatus(t.client);

    equal(status.state, "CONNECTED");
    equal(status.model_id, "sim-1");
    equal(status.protocol_version, 1);
    equal(status.max_concurrency, 7);
    equal(status.in_flight, 1);
    equal(status.eta_ms, 0);
    equal(status.sidecar_version, SIDECAR_VERSION);

    call.cancel();
    await waitUntil(
      "no generation in flight",
      async () => (await getStatus(t.client)).in_flight === 0,
    );
  } finally {
    call.cancel();
    await t.close();
  }
});

Deno.test("health, readiness and status follow the worker: SERVING while connected, NOT_SERVING while it is gone", async () => {
  const t = await setup();
  const updates: string[] = [];
  const watch = t.health.Watch({ service: "" });
  watch.on("data", (m: { status: string }) => updates.push(m.status));
  watch.on("error", () => {});
  try {
    for (const service of ["", "cy.sidecar.v1.Sidecar"]) {
      equal(await check(t.health, service), "SERVING");
    }
    await within(
      "an unknown service",
      check(t.health, "no.such.Service").then(
        () => ok(false, "Check of an unknown service succeeded"),
        (err: grpc.ServiceError) => equal(err.code, grpc.status.NOT_FOUND),
      ),
    );
    equal((await readyz(t.sidecar.metricsUrl)).status, 200);
    await waitUntil("Watch sends SERVING", () => updates[0] === "SERVING");

    await t.sim.kill();
    await waitUntil(
      "Check answers NOT_SERVING",
      async () => (await check(t.health, "")) === "NOT_SERVING",
    );
    await waitUntil(
      "Watch sends NOT_SERVING",
      () => updates.includes("NOT_SERVING"),
    );
    const notReady = await readyz(t.sidecar.metricsUrl);
    equal(notReady.status, 503);
    equal(notReady.body.ready, false);
    const down = await getStatus(t.client);
    equal(down.state, "DISCONNECTED");
    ok(down.detail.length > 0, "the status says why");
    const healthz = await fetch(`${t.sidecar.metricsUrl}/healthz`);
    equal(healthz.status, 200);
    equal((await healthz.json()).status, "ok");

    await t.restartSim();
    await waitUntil(
      "Watch sends SERVING again",
      () => updates.lastIndexOf("SERVING") > updates.indexOf("NOT_SERVING"),
    );
    equal(await check(t.health, ""), "SERVING");
    equal((await readyz(t.sidecar.metricsUrl)).status, 200);
    equal((await getStatus(t.client)).state, "CONNECTED");
    // Watch reports changes only: no repeats of the same status.
    ok(updates.every((u, i) => i === 0 || u !== updates[i - 1]), `${updates}`);
  } finally {
    watch.cancel();
    await t.close();
  }
});

Deno.test("Watch of an unknown service answers SERVICE_UNKNOWN", async () => {
  const t = await setup();
  const watch = t.health.Watch({ service: "no.such.Service" });
  watch.on("error", () => {});
  try {
    const first = await within(
      "the first Watch message",
      new Promise<{ status: string }>((r) => watch.once("data", r)),
    );
    equal(first.status, "SERVICE_UNKNOWN");
  } finally {
    watch.cancel();
    await t.close();
  }
});

// Every metric of the design, plus the usage mismatch counter and the
// gauges of generations in flight and waiting.
const DESIGN_METRICS = [
  "sidecar_tokens_processed_total",
  "sidecar_worker_connection_status",
  "sidecar_requests_total",
  "sidecar_request_duration_seconds",
  "sidecar_worker_connection_errors_total",
  "sidecar_gateway_send_errors_total",
  "sidecar_time_to_first_token_seconds",
  "sidecar_usage_mismatch_total",
  "sidecar_generations_in_flight",
  "sidecar_generations_waiting",
];

Deno.test("/metrics exposes every metric of the design with values that match a generation", async () => {
  const t = await setup();
  try {
    const out = await generate(
      t.client,
      req("m-1", "hello there", { session_id: "m-sess" }),
    );
    equal(out.error, null);

    const res = await fetch(`${t.sidecar.metricsUrl}/metrics`);
    equal(res.status, 200);
    match(res.headers.get("content-type") ?? "", /^text\/plain/);
    const text = await res.text();
    for (const name of DESIGN_METRICS) {
      ok(text.includes(`# TYPE ${name} `), `${name} is exposed`);
    }

    const s = t.sidecar;
    equal(
      await metric(s, "sidecar_tokens_processed_total", {
        session_id: "m-sess",
        model_id: "sim-1",
      }),
      8,
    );
    equal(
      await metric(s, "sidecar_worker_connection_status", {
        status: "connected",
      }),
      1,
    );
    equal(await metric(s, "sidecar_worker_connection_status"), 1);
    equal(
      await metric(s, "sidecar_requests_total", {
        rpc: "Generate",
        code: "OK",
      }),
      1,
    );
    equal(
      await metric(s, "sidecar_request_duration_seconds_count", {
        rpc: "Generate",
      }),
      1,
    );
    const duration = await metric(s, "sidecar_request_duration_seconds_sum");
    const ttft = await metric(s, "sidecar_time_to_first_token_seconds_sum", {
      model_id: "sim-1",
    });
    equal(
      await metric(s, "sidecar_time_to_first_token_seconds_count", {
        model_id: "sim-1",
      }),
      1,
    );
    ok(
      ttft > 0 && ttft <= duration,
      `ttft ${ttft} within duration ${duration}`,
    );
    equal(await metric(s, "sidecar_worker_connection_errors_total"), 0);
    equal(await metric(s, "sidecar_gateway_send_errors_total"), 0);
    equal(await metric(s, "sidecar_generations_in_flight"), 0);

    // A worker that goes away shows in the status gauge and error counter.
    await t.sim.kill();
    await waitUntil(
      "the status gauge says disconnected",
      async () =>
        (await metric(s, "sidecar_worker_connection_status", {
          status: "disconnected",
        })) === 1,
    );
    equal(
      await metric(s, "sidecar_worker_connection_status", {
        status: "connected",
      }),
      0,
    );
    await waitUntil(
      "reconnect attempts are counted as refused",
      async () =>
        (await metric(s, "sidecar_worker_connection_errors_total", {
          kind: "refused",
        })) > 0,
    );
    ok(await metric(s, "sidecar_worker_connection_errors_total") >= 2);
  } finally {
    await t.close();
  }
});
