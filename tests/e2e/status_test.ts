// deno-lint-ignore-file no-explicit-any -- grpc-js clients are untyped stubs
import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { SIDECAR_VERSION } from "../../src/version.ts";
import { BillingServer } from "../helpers/billing_server.ts";
import {
  generate,
  getStatus,
  metric,
  req,
  waitUntil,
  within,
} from "../helpers/harness.ts";
import { startStack } from "../helpers/stack.ts";

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

/** Collects every status a health `Watch` of `""` sends. */
function watchHealth(health: Client): { updates: string[]; cancel(): void } {
  const updates: string[] = [];
  const watch = health.Watch({ service: "" });
  watch.on("data", (m: { status: string }) => updates.push(m.status));
  watch.on("error", () => {});
  return { updates, cancel: () => watch.cancel() };
}

/**
 * Starts a generation that streams until it is cancelled, dropping what
 * it sends.
 */
function endless(client: Client, id: string) {
  const call = client.Generate(
    req(id, "go on [[sim tokens=100000 itl_ms=10]]", {
      sampling: { max_tokens: 0 },
    }),
  );
  call.on("data", () => {});
  call.on("error", () => {});
  return call;
}

/**
 * A simulator and a sidecar (`toml` merged into its config); the
 * simulator can be killed and restarted.
 */
function setup(simArgs: string[] = [], toml = "") {
  return startStack({
    simArgs: ["--ttft-ms", "5", "--itl-ms", "2", ...simArgs],
    toml,
  });
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
    equal(status.protocol_version, 2);
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
  const watch = watchHealth(t.health);
  const { updates } = watch;
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

Deno.test("while the worker reloads, GetStatus says RELOADING with its ETA and health is NOT_SERVING", async () => {
  const t = await setup(["--reload-eta-secs", "30", "--reload-secs", "30"]);
  const watch = watchHealth(t.health);
  const { updates } = watch;
  try {
    await waitUntil("Watch sends SERVING", () => updates[0] === "SERVING");
    t.sim.signal("SIGUSR1");
    await waitUntil(
      "GetStatus says RELOADING",
      async () => (await getStatus(t.client)).state === "RELOADING",
    );

    const status = await getStatus(t.client);
    ok(
      status.eta_ms > 0 && status.eta_ms <= 30_000,
      `eta_ms ${status.eta_ms}`,
    );
    equal(status.model_id, "sim-1");
    for (const service of ["", "cy.sidecar.v1.Sidecar"]) {
      equal(await check(t.health, service), "NOT_SERVING", service);
    }
    await waitUntil(
      "Watch sends NOT_SERVING",
      () => updates.includes("NOT_SERVING"),
    );
    equal((await readyz(t.sidecar.metricsUrl)).status, 503);
  } finally {
    watch.cancel();
    await t.close();
  }
});

Deno.test("while the worker drains, GetStatus says DRAINING and health is NOT_SERVING", async () => {
  const t = await setup();
  // A generation in flight keeps the draining worker from closing.
  const call = endless(t.client, "drain-1");
  try {
    await waitUntil(
      "the generation is in flight",
      async () => (await getStatus(t.client)).in_flight === 1,
    );
    t.sim.signal("SIGTERM");
    await waitUntil(
      "GetStatus says DRAINING",
      async () => (await getStatus(t.client)).state === "DRAINING",
    );

    equal((await getStatus(t.client)).in_flight, 1);
    for (const service of ["", "cy.sidecar.v1.Sidecar"]) {
      equal(await check(t.health, service), "NOT_SERVING", service);
    }
    equal((await readyz(t.sidecar.metricsUrl)).status, 503);
    const refused = await within("refused", generate(t.client, req("drain-2")));
    equal(refused.error?.code, grpc.status.UNAVAILABLE);
  } finally {
    call.cancel();
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

Deno.test("a full usage queue turns health NOT_SERVING and /readyz 503 together, and both recover when billing is back", async () => {
  // Billing is unreachable (its port closed), so records stay queued.
  const billing = new BillingServer();
  billing.start();
  await billing.stopListening();
  const t = await startStack({
    simArgs: ["--ttft-ms", "2", "--itl-ms", "1"],
    toml: "[metering]\nrequest_timeout_secs = 0.5\noffline_queue_size = 3",
    billing,
  });
  const { sidecar, client, health } = t;
  const watch = watchHealth(health);
  const ready = async () => (await readyz(sidecar.metricsUrl)).status;
  try {
    await waitUntil(
      "Watch sends SERVING",
      () => watch.updates[0] === "SERVING",
    );
    for (let i = 0; i < 3; i++) {
      equal((await generate(client, req(`fill-${i}`))).error, null);
    }

    // The third record filled the queue before its generation ended.
    equal(await check(health, ""), "NOT_SERVING");
    equal(await check(health, "cy.sidecar.v1.Sidecar"), "NOT_SERVING");
    const notReady = await readyz(sidecar.metricsUrl);
    equal(notReady.status, 503);
    equal(notReady.body.ready, false);
    equal(notReady.body.usage_queue_full, true);
    equal(notReady.body.reasons.join(), "metering_refusing");
    await waitUntil(
      "Watch sends NOT_SERVING",
      () => watch.updates.includes("NOT_SERVING"),
    );
    const status = await getStatus(client);
    equal(status.state, "CONNECTED");
    match(status.detail, /usage queue is full/);
    equal(await metric(sidecar, "sidecar_ready"), 0);
    // The connection itself is fine, and its gauge says so.
    equal(
      await metric(sidecar, "sidecar_worker_connection_status", {
        status: "connected",
      }),
      1,
    );
    const refused = await generate(client, req("fill-3"));
    equal(refused.error?.code, grpc.status.UNAVAILABLE);
    match(refused.error!.details, /usage queue is full/);

    // Billing comes back on the same port and takes the backlog.
    billing.start();
    await billing.waitFor((u) => u.length === 3, 30_000);
    await waitUntil(
      "Watch sends SERVING again",
      () => watch.updates.at(-1) === "SERVING" && watch.updates.length === 3,
    );
    equal(await check(health, ""), "SERVING");
    equal(await ready(), 200);
    equal((await getStatus(client)).detail, "");
    equal(await metric(sidecar, "sidecar_ready"), 1);
    equal((await generate(client, req("after-1"))).error, null);
    deepStrictEqual(watch.updates, ["SERVING", "NOT_SERVING", "SERVING"]);
  } finally {
    watch.cancel();
    await t.close();
  }
});

Deno.test("at shutdown health, /readyz and sidecar_ready turn off together while the connection gauge still says connected", async () => {
  // A long grace, so the drain outlasts every check below.
  const t = await setup([], "[server]\nshutdown_grace_secs = 120");
  const { sidecar, client, health } = t;
  const watch = watchHealth(health);
  const long = endless(client, "drain-1");
  try {
    await waitUntil(
      "Watch sends SERVING",
      () => watch.updates[0] === "SERVING",
    );
    await waitUntil(
      "the generation runs",
      async () => (await getStatus(client)).in_flight === 1,
    );
    equal(await metric(sidecar, "sidecar_ready"), 1);

    sidecar.proc.signal("SIGTERM");
    await waitUntil(
      "Watch sends NOT_SERVING",
      () => watch.updates.includes("NOT_SERVING"),
    );
    const notReady = await readyz(sidecar.metricsUrl);
    equal(notReady.status, 503);
    equal(notReady.body.reasons.join(), "shutting_down");
    equal(notReady.body.worker_state, "ready");
    equal(await metric(sidecar, "sidecar_ready"), 0);
    // The drain still streams over the worker connection.
    equal(
      await metric(sidecar, "sidecar_worker_connection_status", {
        status: "connected",
      }),
      1,
    );
    deepStrictEqual(watch.updates, ["SERVING", "NOT_SERVING"]);

    // The last generation ends, so the drain does and the sidecar exits.
    long.cancel();
    equal((await within("the sidecar exits", sidecar.proc.exited)).code, 0);
  } finally {
    long.cancel();
    watch.cancel();
    await t.close();
  }
});
