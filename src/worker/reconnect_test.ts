import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import { AbandonedSockets } from "./abandoned.ts";
import type { WorkerConnection } from "./connection.ts";
import { WorkerConnectionError } from "./connection_errors.ts";
import { Reconnector } from "./reconnect.ts";

/** A promise and its resolver. */
function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Lets pending promise callbacks run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

/** A stand-in connection that records being closed. */
function fakeConn(): WorkerConnection & { closedByTest: boolean } {
  const c = {
    closedByTest: false,
    close() {
      c.closedByTest = true;
    },
  };
  return c as unknown as WorkerConnection & { closedByTest: boolean };
}

/** A reconnector whose attempts the test finishes by hand. */
function harness() {
  const clock = new FakeClock();
  const log: string[] = [];
  const opens: ReturnType<typeof deferred<WorkerConnection>>[] = [];
  let abandonedSet: AbandonedSockets | undefined;
  const r = new Reconnector({
    clock,
    open: (abandoned) => {
      abandonedSet = abandoned;
      const d = deferred<WorkerConnection>();
      opens.push(d);
      log.push("open");
      return d.promise;
    },
    due: () => true,
    connected: () => log.push("connected"),
    failed: (err) => log.push(`failed ${err.kind}`),
    waiting: (n) => log.push(`waiting ${n}`),
  });
  return { clock, log, opens, r, abandoned: () => abandonedSet! };
}

Deno.test("a retry falls due exactly after its delay, replacing one scheduled before", () => {
  const { clock, log, r } = harness();
  r.retryIn(100);
  r.retryIn(300);

  clock.advance(299);
  deepStrictEqual(log, []);
  clock.advance(1);
  deepStrictEqual(log, ["open"]);
});

Deno.test("a retry that falls due while an attempt is under way does not start a second", async () => {
  const { clock, log, opens, r } = harness();
  r.now();
  r.retryIn(10);
  clock.advance(10);
  deepStrictEqual(log, ["open"]);

  opens[0].resolve(fakeConn());
  await settle();
  deepStrictEqual(log, ["open", "connected"]);
});

Deno.test("an attempt that fails is reported with its kind, and the next one starts when told", async () => {
  const clock = new FakeClock();
  const log: string[] = [];
  const r: Reconnector = new Reconnector({
    clock,
    open: () => {
      log.push("open");
      return Promise.reject(new WorkerConnectionError("refused", "no socket"));
    },
    due: () => true,
    connected: () => log.push("connected"),
    failed: (err) => {
      log.push(`failed ${err.kind}`);
      r.retryIn(50);
    },
  });
  r.now();
  await settle();
  deepStrictEqual(log, ["open", "failed refused"]);

  // An attempt opens synchronously when its timer fires.
  clock.advance(49);
  deepStrictEqual(log, ["open", "failed refused"]);
  clock.advance(1);
  deepStrictEqual(log, ["open", "failed refused", "open"]);
  await settle();
  deepStrictEqual(log, ["open", "failed refused", "open", "failed refused"]);
  r.stop();
});

Deno.test("an attempt waits until the sockets abandoned before it have settled", async () => {
  const { clock, log, opens, r, abandoned } = harness();
  r.now();
  opens[0].resolve(fakeConn());
  await settle();

  // The handshake of a later attempt left a read pending on a shut socket.
  const pendingRead = deferred();
  abandoned().add(pendingRead.promise);
  r.retryIn(50);
  clock.advance(50);
  for (let i = 0; i < 5; i++) {
    clock.advance(1000);
    await settle();
  }
  deepStrictEqual(log, ["open", "connected", "waiting 1"]);

  pendingRead.resolve();
  await settle();
  deepStrictEqual(log, ["open", "connected", "waiting 1", "open"]);
});

Deno.test("after stop, no attempt starts and a connection still coming is closed", async () => {
  const { clock, log, opens, r } = harness();
  r.now();
  r.retryIn(10);
  r.stop();
  clock.advance(10);

  const late = fakeConn();
  opens[0].resolve(late);
  await settle();
  deepStrictEqual(log, ["open"]);
  ok(late.closedByTest);
});

Deno.test("abandoned sockets count what is pending and settle at once when nothing is", async () => {
  const abandoned = new AbandonedSockets();
  await abandoned.settled();

  const read = deferred();
  abandoned.add(read.promise);
  abandoned.add(Promise.reject(new Error("reset")));
  equal(abandoned.count, 2);
  await settle();
  equal(abandoned.count, 1, "a failed operation is settled too");

  let done = false;
  const all = abandoned.settled().then(() => (done = true));
  await settle();
  ok(!done);
  read.resolve();
  await all;
  equal(abandoned.count, 0);
});
