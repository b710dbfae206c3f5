import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import { WorkerClient } from "./client.ts";
import type { WorkerState } from "./state.ts";
import {
  type ClientBedOptions,
  clientOptions,
  eventually,
  expectProtocolError,
  ready,
  Recorder,
  recordingLogger,
  request,
  withClient,
} from "../../tests/helpers/worker_client.ts";
import { welcomeFrame } from "../../tests/helpers/scripted_worker.ts";

// Opening the connection and reconnecting: a worker that is not there,
// one that never answers, one whose welcome breaks the protocol.

const WAITS = "worker connect waits until an abandoned handshake socket closes";

function disconnected(client: WorkerClient) {
  const s = client.state as WorkerState;
  if (s.state !== "disconnected") throw new Error(`state is ${s.state}`);
  return s;
}

/**
 * A client on a fake clock whose test scripts the handshake, with a
 * 1000 ms handshake timeout, keeping the connection errors it reports and
 * the lines it logs.
 */
function scriptedHandshake(): {
  clock: FakeClock;
  kinds: string[];
  lines: Record<string, unknown>[];
  options: ClientBedOptions;
} {
  const clock = new FakeClock();
  const kinds: string[] = [];
  const { log, lines } = recordingLogger();
  const options: ClientBedOptions = {
    clock,
    logger: log,
    handshakeTimeoutMs: 1000,
    onConnectionError: (kind) => kinds.push(kind),
    welcome: false,
  };
  return { clock, kinds, lines, options };
}

Deno.test("a worker that is not there fails submissions at once with a retry hint", async () => {
  const dir = await Deno.makeTempDir();
  const client = new WorkerClient(
    clientOptions(`${dir}/absent.sock`, {
      reconnectDelayMs: 2000,
      reconnectMaxDelayMs: 4000,
    }),
  );
  try {
    client.start();
    await eventually(
      "the attempt fails",
      () => client.state.state === "disconnected",
    );
    const r = client.submit(request("a"), new Recorder());
    ok(!r.ok);
    equal(r.error.kind, "worker_unavailable");
    equal(r.error.grpcCode, 14);
    match(r.error.message, /Worker is restarting, please retry in \ds/);
    ok(r.error.retryAfterMs! > 0 && r.error.retryAfterMs! <= 4200);
  } finally {
    await client.stop();
  }
});

Deno.test("a welcome that arrives just before the handshake timeout is taken", () => {
  const { clock, kinds, options } = scriptedHandshake();
  return withClient(options, async ({ worker, client, peer }) => {
    await peer.expect("hello");
    clock.advance(999);
    await peer.send(welcomeFrame());

    await ready(client);
    // Past the timeout now: the handshake's timer is gone with it.
    clock.advance(5000);
    equal(client.state.state, "ready");
    deepStrictEqual(kinds, []);
    equal(worker.accepted, 1);
  });
});

Deno.test("a worker that never answers hello fails the handshake at the timeout; the retry comes reconnect_delay later, once the worker let go of the first socket", () => {
  const { clock, kinds, lines, options } = scriptedHandshake();
  return withClient(options, async ({ client, peer, reconnected }) => {
    await peer.expect("hello");
    clock.advance(1000);
    await eventually(
      "the handshake fails",
      () => client.state.state === "disconnected",
    );
    deepStrictEqual(kinds, ["handshake"]);
    const s = disconnected(client);
    match(s.lastError, /did not answer hello within 1000 ms/);
    equal(s.retryAt - s.since, 50, "the first retry is reconnect_delay later");
    // The worker is told by end-of-file that the sidecar gave up.
    await peer.waitClosed();

    // The fake clock runs the retry timer inside advance(): it is due at
    // exactly 50 ms, and waits for the socket the worker still holds.
    clock.advance(49);
    ok(!lines.some((l) => l.msg === WAITS), "no attempt before 50 ms");
    clock.advance(1);
    ok(lines.some((l) => l.msg === WAITS), "the attempt at 50 ms waits");

    // The worker closes its end, as one that comes back does: the attempt goes on.
    peer.close();
    await reconnected(1);
  });
});

Deno.test("while a worker that never answers holds the abandoned handshake, retries open no connection and requests fail at once; once it lets go, the link serves", () => {
  const { clock, kinds, lines, options } = scriptedHandshake();
  return withClient({
    ...options,
    reconnectDelayMs: 50,
    reconnectMaxDelayMs: 100,
  }, async ({ worker, client, peer, reconnected }) => {
    await peer.expect("hello");
    clock.advance(1000);
    await eventually("the handshake fails", () => kinds.length === 1);
    await peer.waitClosed();

    // Ten retry intervals and handshake timeouts, with real time for I/O
    // in between: the retry due at 50 ms is still waiting, no attempt has
    // entered "connecting", and no further failure was counted.
    for (let i = 0; i < 10; i++) {
      clock.advance(1100);
      await new Promise((r) => setTimeout(r, 5));
    }
    equal(lines.filter((l) => l.msg === WAITS).length, 1);
    equal(client.state.state, "disconnected");
    deepStrictEqual(kinds, ["handshake"]);
    equal(worker.accepted, 1);

    const refused = client.submit(request("a"), new Recorder());
    ok(!refused.ok);
    equal(refused.error.kind, "worker_unavailable");
    ok(refused.error.retryAfterMs! > 0);

    peer.close();
    const second = await reconnected(1);
    equal(worker.accepted, 2);
    ok(client.submit(request("b"), new Recorder()).ok);
    equal((await second.expect("generate")).id, "b");
  });
});

Deno.test("a worker that sends something else than welcome first is told why before the connection closes", () =>
  withClient({ welcome: false }, async ({ peer }) => {
    await peer.expect("hello");
    await peer.send({ type: "pong", seq: 1 });
    const err = await expectProtocolError(
      peer,
      /expected "welcome" as the first frame, got "pong"/,
    );
    ok(!("id" in err));
    await peer.waitClosed();
  }));

Deno.test("a welcome with an eta_ms over 32 bits fails the handshake as a protocol error the worker is told about", () => {
  const kinds: string[] = [];
  return withClient({
    onConnectionError: (kind) => kinds.push(kind),
    welcome: false,
  }, async ({ client, peer }) => {
    await peer.handshake({ state: "reloading", eta_ms: 2 ** 32 });

    await expectProtocolError(
      peer,
      /"eta_ms" must be an integer in 0\.\.4294967295, got 4294967296/,
    );
    await peer.waitClosed();
    await eventually(
      "the attempt fails",
      () => client.state.state === "disconnected",
    );
    deepStrictEqual(kinds, ["protocol"]);
    match(disconnected(client).lastError, /eta_ms/);
  });
});
