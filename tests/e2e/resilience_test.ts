// deno-lint-ignore-file no-explicit-any -- grpc-js stubs are untyped
import { equal, match, ok } from "node:assert/strict";
import {
  gateway,
  generate,
  metric,
  type Proc,
  req,
  runMain,
  startSidecar,
  startSim,
  tempDir,
  waitReady,
  within,
} from "../helpers/harness.ts";
import { ScriptedWorker } from "../helpers/scripted_worker.ts";

const FAST = ["--ttft-ms", "2", "--itl-ms", "2"];

async function poll(
  cond: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function pushback(err: any): number {
  return Number(err?.metadata?.get("grpc-retry-pushback-ms")?.[0] ?? NaN);
}

async function status(
  metricsUrl: string,
): Promise<{ code: number; body: any }> {
  const res = await fetch(`${metricsUrl}/readyz`);
  return { code: res.status, body: await res.json() };
}

Deno.test("with no worker running, requests fail at once with UNAVAILABLE, a human message and a pushback", async () => {
  const dir = await tempDir();
  const sidecar = await startSidecar(dir, `${dir}/absent.sock`, "", {
    waitReady: false,
  });
  const client = gateway(sidecar.grpcAddr);
  try {
    const out = await generate(client, req("nw-1"));
    equal(out.error?.code, 14);
    match(out.error!.details, /^Worker is restarting, please retry in \d+s$/);
    ok(pushback(out.error) > 0);
    equal((await status(sidecar.metricsUrl)).code, 503);
    equal(
      await metric(sidecar, "sidecar_worker_connection_status", {
        status: "disconnected",
      }),
      1,
    );
    ok(
      await metric(sidecar, "sidecar_worker_connection_errors_total", {
        kind: "refused",
      }) >= 1,
    );
  } finally {
    client.close();
    await sidecar.proc.kill();
  }
});

Deno.test("a worker killed mid-stream ends every stream with UNAVAILABLE; a new worker on the same socket is picked up", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  let sim: Proc = await startSim(sock, FAST);
  const sidecar = await startSidecar(dir, sock);
  const client = gateway(sidecar.grpcAddr);
  try {
    const streams = Array.from(
      { length: 5 },
      (_, i) =>
        generate(client, req(`k-${i}`, "long [[sim tokens=500 itl_ms=20]]")),
    );
    await poll(
      async () =>
        (await metric(sidecar, "sidecar_generations_in_flight")) === 5,
      "5 in flight",
    );
    await sim.kill();

    const results = await Promise.all(streams);
    for (const r of results) {
      equal(r.error?.code, 14);
      match(r.error!.details, /worker connection lost mid-stream/);
      ok(pushback(r.error) > 0);
    }

    sim = await startSim(sock, FAST);
    await waitReady(sidecar);
    equal((await generate(client, req("k-after"))).error, null);
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

Deno.test("a hung worker (SIGSTOP) is detected by heartbeat; it serves again after SIGCONT", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, FAST);
  const sidecar = await startSidecar(
    dir,
    sock,
    "[worker]\nhandshake_timeout_secs = 0.5",
  );
  const client = gateway(sidecar.grpcAddr);
  try {
    const stream = generate(
      client,
      req("h-1", "long [[sim tokens=500 itl_ms=20]]"),
    );
    await poll(
      async () =>
        (await metric(sidecar, "sidecar_generations_in_flight")) === 1,
      "in flight",
    );
    sim.signal("SIGSTOP");

    const hung = await stream;
    equal(hung.error?.code, 14);
    ok(
      await metric(sidecar, "sidecar_worker_connection_errors_total", {
        kind: "heartbeat",
      }) >= 1,
    );
    const meanwhile = await generate(client, req("h-2"));
    equal(meanwhile.error?.code, 14);
    ok(pushback(meanwhile.error) > 0);
    // The stopped process's socket still accepts connections: an attempt
    // fails its handshake at the timeout, and the next one waits until the
    // stopped process lets go of that socket rather than leave one more
    // behind at every retry.
    await sidecar.proc.waitFor(
      /"msg":"worker connect waits until an abandoned handshake socket closes"/,
      15_000,
    );
    equal(
      await metric(sidecar, "sidecar_worker_connection_errors_total", {
        kind: "handshake",
      }),
      1,
    );

    sim.signal("SIGCONT");
    await waitReady(sidecar, 20_000);
    equal((await generate(client, req("h-3"))).error, null);
  } finally {
    sim.signal("SIGCONT");
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

/** Collects a Generate stream's events as they come, for reload tests. */
function watch(client: any, request: Record<string, unknown>) {
  const events: any[] = [];
  let error: any = null;
  const ended = new Promise<void>((resolve) => {
    const call = client.Generate(request);
    call.on("data", (e: any) => events.push(e));
    call.on("error", (e: any) => {
      error = e;
      resolve();
    });
    call.on("end", () => resolve());
  });
  return { events, ended, error: () => error };
}

Deno.test("a reload holds new requests with a system message, then streams the new model's tokens on the same stream", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, [
    ...FAST,
    "--reload-eta-secs",
    "2",
    "--reload-secs",
    "1",
  ]);
  const sidecar = await startSidecar(dir, sock);
  const client = gateway(sidecar.grpcAddr);
  try {
    // One generation in flight when the reload starts: it finishes on the old model.
    const inflight = watch(
      client,
      req("r-0", "before [[sim tokens=20 itl_ms=20]]", {
        sampling: { max_tokens: 0 },
      }),
    );
    await poll(() => inflight.events.length > 0, "first token");
    sim.signal("SIGUSR1");
    await poll(
      async () =>
        (await status(sidecar.metricsUrl)).body.worker_state === "reloading",
      "reloading",
    );

    const held = watch(client, req("r-1", "during the reload"));
    await poll(() => held.events.length > 0, "a system event");
    equal(held.events[0].kind, "system");
    equal(held.events[0].system.kind, "RELOADING");
    match(
      held.events[0].system.text,
      /^\[System\] Loading new model, ETA \ds\.\.\.$/,
    );
    ok(held.events[0].system.eta_ms > 0);

    await Promise.all([inflight.ended, held.ended]);
    equal(inflight.error(), null);
    equal(inflight.events.at(-1).done.model_id, "sim-1");
    equal(held.error(), null);
    const kinds = held.events.map((e) =>
      e.kind === "system" ? e.system.kind : e.kind
    );
    equal(kinds[0], "RELOADING");
    equal(kinds[1], "RESUMED");
    ok(kinds.slice(2, -1).every((k) => k === "chunk") && kinds.length > 3);
    equal(held.events.at(-1).done.model_id, "sim-2");
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

Deno.test("a reload by process restart: held requests go to the new process on the same socket", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  let sim = await startSim(sock, [
    ...FAST,
    "--reload-mode",
    "exit",
    "--reload-eta-secs",
    "3",
  ]);
  const sidecar = await startSidecar(dir, sock);
  const client = gateway(sidecar.grpcAddr);
  try {
    sim.signal("SIGUSR1");
    await sim.exited;
    const held = watch(client, req("x-1"));
    await poll(() => held.events.length > 0, "a system event");
    equal(held.events[0].system.kind, "RELOADING");
    equal((await status(sidecar.metricsUrl)).body.worker_state, "reloading");

    // The supervisor (here: the test) starts the worker with the new model.
    sim = await startSim(sock, [...FAST, "--model-id", "llama-next"]);
    await held.ended;
    equal(held.error(), null);
    equal(held.events.at(-1).done.model_id, "llama-next");
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

Deno.test("a reload that overruns its hold fails held requests with UNAVAILABLE and a pushback", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, [
    ...FAST,
    "--reload-eta-secs",
    "0.2",
    "--reload-secs",
    "30",
  ]);
  const sidecar = await startSidecar(
    dir,
    sock,
    "[health]\nreload_grace_secs = 0.5",
  );
  const client = gateway(sidecar.grpcAddr);
  try {
    sim.signal("SIGUSR1");
    await poll(
      async () =>
        (await status(sidecar.metricsUrl)).body.worker_state === "reloading",
      "reloading",
    );
    const held = watch(client, req("o-1"));
    await held.ended;
    equal(held.events[0].system.kind, "RELOADING");
    const err = held.error();
    equal(err?.code, 14);
    match(err.details, /reload/i);
    ok(pushback(err) > 0);
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

Deno.test("beyond the worker's concurrency limit requests wait in a bounded queue, then get RESOURCE_EXHAUSTED", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, [...FAST, "--max-concurrency", "2"]);
  const sidecar = await startSidecar(
    dir,
    sock,
    "[worker]\nmax_queued_requests = 1\nqueue_timeout_secs = 30",
  );
  const client = gateway(sidecar.grpcAddr);
  try {
    const long = (id: string) =>
      generate(
        client,
        req(id, "slow [[sim tokens=40 itl_ms=25]]", {
          sampling: { max_tokens: 0 },
        }),
      );
    const running = [long("c-1"), long("c-2")];
    await poll(
      async () =>
        (await metric(sidecar, "sidecar_generations_in_flight")) === 2,
      "2 in flight",
    );
    const queued = long("c-3");
    await poll(
      async () => (await metric(sidecar, "sidecar_generations_waiting")) === 1,
      "1 waiting",
    );

    const refused = await generate(client, req("c-4"));
    equal(refused.error?.code, 8);
    match(refused.error!.details, /limit of 2 generations/);
    ok(pushback(refused.error) > 0);

    // The queued one runs once a slot frees.
    const results = await Promise.all([...running, queued]);
    ok(results.every((r) => r.error === null));
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`${signal} lets streams in flight finish, refuses new ones, flushes usage and exits 0`, async () => {
    const dir = await tempDir();
    const sock = `${dir}/w.sock`;
    const sim = await startSim(sock, FAST);
    const sidecar = await startSidecar(dir, sock);
    const client = gateway(sidecar.grpcAddr);
    try {
      const streams = [0, 1, 2].map((i) =>
        generate(
          client,
          req(`t-${i}`, "drain [[sim tokens=30 itl_ms=30]]", {
            sampling: { max_tokens: 0 },
          }),
        )
      );
      await poll(
        async () =>
          (await metric(sidecar, "sidecar_generations_in_flight")) === 3,
        "3 in flight",
      );
      sidecar.proc.signal(signal);
      await sidecar.proc.waitFor(/"msg":"shutting down"/);

      const results = await Promise.all(streams);
      for (const r of results) {
        equal(r.error, null);
        equal(r.tokenIds.length, 30);
      }
      const late = await generate(gateway(sidecar.grpcAddr), req("t-late"));
      equal(late.error?.code, 14);

      const exit = await sidecar.proc.exited;
      equal(exit.code, 0);
      await sidecar.proc.waitFor(/"msg":"stopped"/);
    } finally {
      client.close();
      await sidecar.proc.kill();
      await sim.kill();
    }
  });
}

Deno.test("a second SIGINT during the drain exits at once with status 130, where the first alone keeps draining", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, FAST);
  // The grace is far longer than the test: only the second signal can end it.
  const sidecar = await startSidecar(
    dir,
    sock,
    "[server]\nshutdown_grace_secs = 300",
  );
  const client = gateway(sidecar.grpcAddr);
  try {
    const tokens: number[] = [];
    const call = client.Generate(
      req("i-1", "endless [[sim tokens=100000 itl_ms=10]]", {
        sampling: { max_tokens: 0 },
      }),
    );
    call.on("data", (e: any) => {
      if (e.kind === "chunk") tokens.push(...e.chunk.token_ids);
    });
    const ended = new Promise<any>((resolve) => {
      call.on("error", resolve);
      call.on("end", () => resolve(null));
    });
    await poll(() => tokens.length > 0, "the first token");

    sidecar.proc.signal("SIGINT");
    await sidecar.proc.waitFor(/"msg":"shutting down".*"signal":"SIGINT"/);
    // Draining: the stream goes on and the process stays.
    const atFirst = tokens.length;
    await poll(
      () => tokens.length >= atFirst + 20,
      "20 more tokens after SIGINT",
    );
    const late = await generate(gateway(sidecar.grpcAddr), req("i-late"));
    equal(late.error?.code, 14);

    sidecar.proc.signal("SIGINT");
    const exit = await within("the exit", sidecar.proc.exited);
    equal(exit.code, 130);
    const warning = JSON.parse(
      await sidecar.proc.waitFor(/"msg":"second signal, exiting now"/),
    );
    equal(warning.exit_code, 130);
    ok(!sidecar.proc.lines.some((l) => l.includes('"msg":"stopped"')));
    // The stream was cut, not drained.
    const err = await within("the stream's end", ended);
    ok(err !== null, "the stream failed");
    ok(tokens.length < 100_000);
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

Deno.test("a request waiting for a worker slot fails after queue_timeout_secs with RESOURCE_EXHAUSTED and a pushback", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, [...FAST, "--max-concurrency", "1"]);
  const sidecar = await startSidecar(
    dir,
    sock,
    "[worker]\nmax_queued_requests = 4\nqueue_timeout_secs = 0.5",
  );
  const client = gateway(sidecar.grpcAddr);
  const busy = client.Generate(
    req("q-1", "endless [[sim tokens=100000 itl_ms=10]]", {
      sampling: { max_tokens: 0 },
    }),
  );
  busy.on("data", () => {});
  busy.on("error", () => {});
  try {
    await poll(
      async () =>
        (await metric(sidecar, "sidecar_generations_in_flight")) === 1,
      "the slot taken",
    );
    const waited = await within(
      "the queued request",
      generate(client, req("q-2")),
    );

    equal(waited.error?.code, 8);
    match(waited.error!.details, /no worker slot became free within 500 ms/);
    ok(pushback(waited.error) > 0);
    equal(await metric(sidecar, "sidecar_generations_waiting"), 0);
  } finally {
    busy.cancel();
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});

Deno.test("a worker that keeps re-announcing its reload holds a request no longer than max_hold_secs; past max_held_requests requests fail at once", async () => {
  const worker = await ScriptedWorker.listen();
  const dir = await tempDir();
  const sidecar = await startSidecar(
    dir,
    worker.path,
    "[health]\nreload_grace_secs = 0.5\nmax_hold_secs = 2\nmax_held_requests = 1\nheartbeat_timeout_secs = 5",
    { waitReady: false },
  );
  worker.answerAll();
  await waitReady(sidecar);
  const peer = worker.live!;
  const client = gateway(sidecar.grpcAddr);
  // Every 200 ms the worker says it needs another second: each
  // announcement alone would hold a request 1.5 s past it.
  let announcing = true;
  const announcer = (async () => {
    while (announcing && !peer.closed) {
      await peer.send({ type: "status", state: "reloading", eta_ms: 1000 })
        .catch(() => {});
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  try {
    await poll(
      async () =>
        (await status(sidecar.metricsUrl)).body.worker_state === "reloading",
      "reloading",
    );
    const held = watch(client, req("mh-1"));
    await poll(() => held.events.length > 0, "the hold's system event");
    equal(held.events[0].system.kind, "RELOADING");

    const second = await generate(client, req("mh-2"));
    equal(second.error?.code, 14);
    match(second.error!.details, /1 requests are already held/);
    ok(pushback(second.error) > 0);

    await within("the held request's end", held.ended);
    const err = held.error();
    equal(err?.code, 14);
    match(
      err.details,
      /after holding this request for 2s \(health\.max_hold_secs\)/,
    );
    ok(pushback(err) > 0);
    // The worker was still announcing: only the cap ended the hold.
    equal((await status(sidecar.metricsUrl)).body.worker_state, "reloading");
  } finally {
    announcing = false;
    await announcer;
    client.close();
    await sidecar.proc.kill();
    worker.close();
  }
});

Deno.test("past the shutdown grace, generations still running fail with UNAVAILABLE and are metered", async () => {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, FAST);
  const sidecar = await startSidecar(
    dir,
    sock,
    "[server]\nshutdown_grace_secs = 0.3",
  );
  const client = gateway(sidecar.grpcAddr);
  try {
    const stream = generate(
      client,
      req("g-1", "endless [[sim tokens=1000 itl_ms=20]]", {
        sampling: { max_tokens: 0 },
      }),
    );
    await poll(
      async () =>
        (await metric(sidecar, "sidecar_generations_in_flight")) === 1,
      "in flight",
    );
    sidecar.proc.signal("SIGTERM");

    const out = await stream;
    equal(out.error?.code, 14);
    match(out.error!.details, /shutting down/);
    equal((await sidecar.proc.exited).code, 0);

    const dump = await runMain(sidecar.configPath, ["--dump-usage"]);
    equal(dump.code, 0);
    const [entry] = dump.stdout.filter((l) => l.startsWith("{")).map((l) =>
      JSON.parse(l)
    );
    equal(entry.record.request_id, "g-1");
    equal(entry.record.completion_tokens, out.tokenIds.length);
    equal(entry.record.finish_reason, "error");
  } finally {
    client.close();
    await sidecar.proc.kill();
    await sim.kill();
  }
});
