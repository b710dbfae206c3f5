import { deepStrictEqual, equal, ok } from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import {
  gateway,
  req,
  startSidecar,
  startSim,
  tempDir,
  waitIdle,
  waitUntil,
  within,
} from "../helpers/harness.ts";
import { SessionDriver } from "../helpers/session.ts";
import { simTokenIds } from "../helpers/sim_reference.ts";

const ENDLESS = "keep talking [[sim tokens=100000 itl_ms=10]]";

/** A simulator, a sidecar, a client and one open Session. */
async function setup() {
  const dir = await tempDir();
  const sock = `${dir}/w.sock`;
  const sim = await startSim(sock, [
    "--ttft-ms",
    "5",
    "--itl-ms",
    "2",
    "--log-level",
    "debug",
  ]);
  const sidecar = await startSidecar(dir, sock);
  const client = gateway(sidecar.grpcAddr);
  const session = new SessionDriver(client);
  return {
    sim,
    client,
    session,
    workerCancelled: (id: string) =>
      sim.waitFor(new RegExp(`generation ended id=${id} outcome=cancelled$`)),
    async close() {
      session.call.cancel();
      client.close();
      await sidecar.proc.kill();
      await sim.kill();
    },
  };
}

Deno.test("one Session carries thirty interleaved generations, each with exactly its own tokens and one done", async () => {
  const t = await setup();
  try {
    const plans = Array.from({ length: 30 }, (_, i) => ({
      id: `mux-${i}`,
      prompt: `question ${i} about the old forest`,
      seed: 100 + i,
      maxTokens: 3 + (i * 5) % 25,
    }));
    const expected = await simTokenIds(
      plans.map((p) => ({
        prompt: p.prompt,
        seed: p.seed,
        count: p.maxTokens,
      })),
    );

    for (const p of plans) {
      t.session.generate(
        req(p.id, p.prompt, {
          session_id: "mux",
          sampling: { max_tokens: p.maxTokens, seed: p.seed },
        }),
      );
    }
    // Half-closed at once: the call must still end only after every
    // generation has ended.
    t.session.end();
    const ended = await within(
      "thirty generations",
      Promise.all(plans.map((p) => t.session.finished(p.id))),
      60_000,
    );
    await within("the session's end", t.session.closed());

    equal(t.session.status?.code, grpc.status.OK);
    plans.forEach((p, i) => {
      const g = ended[i];
      deepStrictEqual(g.tokenIds, expected[i], `${p.id}: token ids`);
      equal(g.events.at(-1), g.last, `${p.id}: nothing after its done`);
      ok("done" in g.last && g.last.kind === "done", `${p.id}: done`);
      equal(g.last.done.finish_reason, "length");
      equal(g.last.done.usage.completion_tokens, p.maxTokens);
      equal(g.events.filter((e) => e.kind === "done").length, 1);
    });
    const ids = new Set(plans.map((p) => p.id));
    ok(t.session.events.every((e) => ids.has(e.request_id)));
    equal(
      t.session.events.length,
      plans.reduce((n, p) => n + p.maxTokens + 1, 0),
    );
    // The generations really ran side by side on the one call: some
    // generation's events start before another's have ended.
    const spans = plans.map((p) => {
      const at = t.session.events.flatMap((e, i) =>
        e.request_id === p.id ? [i] : []
      );
      return [at[0], at.at(-1)!];
    }).sort((a, b) => a[0] - b[0]);
    let reach = -1;
    const overlaps = spans.filter(([start, end]) => {
      const overlap = start < reach;
      reach = Math.max(reach, end);
      return overlap;
    });
    ok(overlaps.length > 0, "events of different generations interleave");
  } finally {
    await t.close();
  }
});

Deno.test("a Session cancel ends that generation with done cancelled while the others stream on", async () => {
  const t = await setup();
  try {
    t.session.generate(req("victim", ENDLESS, { sampling: { max_tokens: 0 } }));
    t.session.generate(
      req("bystander", ENDLESS, { sampling: { max_tokens: 0 } }),
    );
    t.session.generate(req("short", "a brief answer"));
    await waitUntil(
      "victim and bystander stream",
      () =>
        t.session.eventsOf("victim").length > 0 &&
        t.session.eventsOf("bystander").length > 0,
    );

    t.session.cancel("victim");
    const victim = await within("victim's end", t.session.finished("victim"));
    ok("done" in victim.last && victim.last.kind === "done");
    equal(victim.last.done.finish_reason, "cancelled");
    equal(victim.last.done.usage.completion_tokens, victim.tokenIds.length);
    await t.workerCancelled("victim");

    // The bystander keeps streaming after the cancel, and the short one
    // completes whole.
    const seen = t.session.eventsOf("bystander").length;
    await waitUntil(
      "the bystander streams on",
      () => t.session.eventsOf("bystander").length >= seen + 5,
    );
    const short = await within("short's end", t.session.finished("short"));
    const [expected] = await simTokenIds([
      { prompt: "a brief answer", seed: 0, count: 8 },
    ]);
    deepStrictEqual(short.tokenIds, expected);
    ok("done" in short.last && short.last.kind === "done");
    equal(short.last.done.finish_reason, "length");
    equal(t.session.eventsOf("bystander").at(-1)?.kind, "chunk");

    t.session.cancel("bystander");
    const bystander = await within(
      "bystander's end",
      t.session.finished("bystander"),
    );
    ok("done" in bystander.last);
    equal(bystander.last.done.finish_reason, "cancelled");
    equal(
      bystander.last.done.usage.completion_tokens,
      bystander.tokenIds.length,
    );
    await waitIdle(t.client);
  } finally {
    await t.close();
  }
});

Deno.test("a duplicate request_id on a Session gets an ALREADY_EXISTS error event; the original streams on", async () => {
  const t = await setup();
  try {
    t.session.generate(req("dup", ENDLESS, { sampling: { max_tokens: 0 } }));
    await waitUntil(
      "the first generation streams",
      () => t.session.eventsOf("dup").length > 0,
    );

    t.session.generate(req("dup", "the same id again"));
    await waitUntil(
      "an error event for the duplicate",
      () => t.session.eventsOf("dup").some((e) => e.kind === "error"),
    );
    const error = t.session.eventsOf("dup").find((e) => e.kind === "error")!;
    ok("error" in error);
    equal(error.error.code, grpc.status.ALREADY_EXISTS);
    ok(error.error.message.includes('"dup"'), error.error.message);

    const seen = t.session.eventsOf("dup").length;
    await waitUntil(
      "the original streams on",
      () => t.session.eventsOf("dup").length >= seen + 5,
    );
    t.session.cancel("dup");
    await waitUntil(
      "the original ends cancelled",
      () => t.session.eventsOf("dup").some((e) => e.kind === "done"),
    );
    const done = t.session.eventsOf("dup").find((e) => e.kind === "done")!;
    ok("done" in done);
    equal(done.done.finish_reason, "cancelled");
    await waitIdle(t.client);
  } finally {
    await t.close();
  }
});

Deno.test("a Session survives invalid and failing requests: error events, and the next generation streams", async () => {
  const t = await setup();
  try {
    t.session.generate(req("bad-top-p", "hi", { sampling: { top_p: 2 } }));
    t.session.generate(
      req("worker-error", "hi [[sim fault=error code=unavailable]]"),
    );
    t.session.call.write({});
    const bad = await within("bad-top-p", t.session.finished("bad-top-p"));
    const failed = await within(
      "worker-error",
      t.session.finished("worker-error"),
    );
    await waitUntil(
      "an error for the empty message",
      () => t.session.eventsOf("").some((e) => e.kind === "error"),
    );

    ok("error" in bad.last);
    equal(bad.last.error.code, grpc.status.INVALID_ARGUMENT);
    ok(bad.last.error.message.startsWith("sampling.top_p:"));
    ok("error" in failed.last);
    equal(failed.last.error.code, grpc.status.UNAVAILABLE);
    equal(
      failed.last.error.message,
      "sim fault: injected error for worker-error",
    );
    const empty = t.session.eventsOf("").find((e) => e.kind === "error")!;
    ok("error" in empty);
    equal(empty.error.code, grpc.status.INVALID_ARGUMENT);

    t.session.generate(req("after", "still here"));
    const after = await within("after", t.session.finished("after"));
    equal(after.last.kind, "done");
    equal(after.tokenIds.length, 8);
  } finally {
    await t.close();
  }
});
