import { deepStrictEqual, equal } from "node:assert/strict";
import { FakeClock } from "../util/clock.ts";
import { FRAME, h2Frame } from "../../tests/helpers/h2_frame.ts";
import { ConnectionTap } from "./connection_tap.ts";
import { encodeEventMessage } from "./event_codec.ts";
import {
  HIGH_WATER_BYTES,
  type LedgerCall,
  type LedgerOwner,
  type LedgerSlot,
  LOW_WATER_BYTES,
  StreamLedger,
} from "./stream_ledger.ts";
import type { GenerateEventPb } from "./types.ts";

const STALL_MS = 1_000;

/** An HTTP/2 stream whose bytes go out only when the test says so. */
class FakeWire {
  readonly tap = new ConnectionTap();
  /** Every write the ledger made, in order. */
  readonly writes: Uint8Array[] = [];
  metadataSent = 0;
  resetCode: number | null = null;
  #onClose: (() => void) | null = null;

  readonly stream = {
    id: 1,
    destroyed: false,
    closed: false,
    write: (chunk: Uint8Array) => {
      this.writes.push(chunk);
      return true;
    },
    close: (code: number) => {
      this.resetCode = code;
      this.stream.destroyed = true;
      this.#onClose?.();
    },
    once: (_event: "close", fn: () => void) => {
      this.#onClose = fn;
    },
  };

  readonly call: LedgerCall = {
    write: () => true,
    sendMetadata: () => {
      this.metadataSent++;
    },
    on: () => {},
  };

  /** The network sends `bytes` more DATA bytes of the stream. */
  send(bytes: number): void {
    this.tap.feed(h2Frame(FRAME.DATA, 0, 1, new Uint8Array(bytes)));
  }
}

function ledgerOn(w: FakeWire, clock = new FakeClock()): StreamLedger {
  return new StreamLedger(w.call, {
    clock,
    stallTimeoutMs: STALL_MS,
    transport: { stream: w.stream, tap: w.tap, socket: null },
  });
}

/** A generation, as the ledger sees it, with its slot in `ledger`. */
class Owner implements LedgerOwner {
  tokens = 0;
  releases = 0;
  readonly slot: LedgerSlot;
  constructor(ledger: StreamLedger) {
    this.slot = ledger.slot(this);
  }
  delivered(n: number): void {
    this.tokens += n;
  }
  release(): void {
    this.releases++;
  }
}

function chunk(n: number): GenerateEventPb {
  return {
    request_id: "req",
    chunk: { text: "tok ", token_ids: Array.from({ length: n }, (_, i) => i) },
  };
}

const size = (ev: GenerateEventPb) => encodeEventMessage(ev).length;

/** Lets queued microtasks run (the per-turn flush, settling). */
const turn = () => new Promise((r) => setTimeout(r, 0));

Deno.test("tokens count as delivered only once all of their event's bytes have been sent", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const gen = new Owner(ledger);
  ledger.write(chunk(1), gen.slot, 1);
  ledger.write(chunk(2), gen.slot, 2);
  await turn();
  equal(gen.tokens, 0, "written is not delivered");

  w.send(size(chunk(1)) - 1);
  await turn();
  equal(gen.tokens, 0, "a message sent but for its last byte is not delivered");

  w.send(1);
  await turn();
  equal(gen.tokens, 1);

  w.send(size(chunk(2)));
  await turn();
  equal(gen.tokens, 3);
  equal(ledger.unsentBytes, 0);
});

Deno.test("events written in one turn go to the stream as one write, after the headers", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const gen = new Owner(ledger);
  for (let i = 0; i < 5; i++) ledger.write(chunk(1), gen.slot, 1);
  await turn();

  equal(w.metadataSent, 1);
  equal(w.writes.length, 1);
  equal(w.writes[0].length, 5 * size(chunk(1)));

  ledger.write(chunk(1), gen.slot, 1);
  await turn();
  equal(w.writes.length, 2, "a later turn is a later write");
  equal(w.metadataSent, 1, "headers once");
});

Deno.test("a stream over the high-water mark blocks, and releases its waiters at the low-water mark", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const gen = new Owner(ledger);
  const one = size(chunk(1));
  let n = 0;
  while (!ledger.blocked) {
    ledger.write(chunk(1), gen.slot, 1);
    n++;
  }
  equal(n, Math.floor(HIGH_WATER_BYTES / one) + 1);
  ledger.wait(gen.slot);
  await turn();

  // Sending down to just above the low-water mark keeps it blocked.
  const unsent = ledger.unsentBytes;
  w.send(unsent - LOW_WATER_BYTES - one);
  await turn();
  equal(ledger.blocked, true);
  equal(gen.releases, 0);

  w.send(one);
  await turn();
  equal(ledger.blocked, false);
  equal(gen.releases, 1);
});

Deno.test("whenDelivered waits for the owner's own events, not for another's", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const a = new Owner(ledger);
  const b = new Owner(ledger);
  ledger.write(chunk(1), a.slot, 1);
  ledger.write(chunk(1), b.slot, 1);
  let aDone = false;
  let bDone = false;
  ledger.whenDelivered(a.slot, () => (aDone = true));
  ledger.whenDelivered(b.slot, () => (bDone = true));
  await turn();
  equal(aDone || bDone, false);

  w.send(size(chunk(1)));
  await turn();
  deepStrictEqual([aDone, bDone, a.tokens, b.tokens], [true, false, 1, 0]);

  let idle = false;
  ledger.whenDelivered(new Owner(ledger).slot, () => (idle = true));
  equal(idle, true, "an owner with nothing pending is called at once");
});

Deno.test("when the stream goes, waiting owners are called with what was delivered before", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const gen = new Owner(ledger);
  ledger.write(chunk(1), gen.slot, 1);
  ledger.write(chunk(1), gen.slot, 1);
  let called = false;
  ledger.whenDelivered(gen.slot, () => (called = true));
  await turn();
  w.send(size(chunk(1)));
  await turn();

  w.stream.close(8); // the gateway reset it
  equal(called, true);
  equal(gen.tokens, 1, "the unsent event is not delivered");
  w.send(size(chunk(1)));
  await turn();
  equal(gen.tokens, 1, "bytes credited after the end count nothing");
});

Deno.test("a stream that sends none of its unsent bytes for a whole stall timeout is reset; one that trickles is not", async () => {
  const w = new FakeWire();
  const clock = new FakeClock();
  const ledger = ledgerOn(w, clock);
  const gen = new Owner(ledger);
  ledger.write(chunk(1), gen.slot, 1);
  ledger.write(chunk(1), gen.slot, 1);
  await turn();
  w.send(size(chunk(1)));
  await turn();

  // A byte now and then keeps it alive, however long it takes.
  for (let i = 0; i < 10; i++) {
    clock.advance(STALL_MS / 2);
    w.send(1);
    await turn();
  }
  equal(w.resetCode, null);

  // Then nothing: it is reset within two timeouts of the last byte.
  clock.advance(STALL_MS - 1);
  equal(w.resetCode, null);
  clock.advance(STALL_MS + 1);
  equal(w.resetCode, 8, "RST_STREAM CANCEL");
  equal(gen.tokens, 1, "the event it never finished sending is not delivered");
});

Deno.test("resetIfPending drops what is unsent; a stream with nothing unsent is not reset", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const gen = new Owner(ledger);
  ledger.write(chunk(1), gen.slot, 1);
  await turn();
  w.send(size(chunk(1)));
  await turn();
  equal(ledger.resetIfPending(), false);
  equal(w.resetCode, null);

  ledger.write(chunk(3), gen.slot, 3);
  equal(ledger.resetIfPending(), true);
  equal(w.resetCode, 8);
  equal(gen.tokens, 1);
});

Deno.test("without a tapped stream, events go through call.write and count when written", () => {
  const written: GenerateEventPb[] = [];
  let drain: () => void = () => {};
  const call: LedgerCall = {
    write: (ev) => {
      written.push(ev);
      return written.length < 2;
    },
    sendMetadata: () => {},
    on: (_e, fn) => {
      drain = fn;
    },
  };
  const ledger = new StreamLedger(call, {
    clock: new FakeClock(),
    stallTimeoutMs: STALL_MS,
    transport: null,
  });
  const gen = new Owner(ledger);
  ledger.write(chunk(2), gen.slot, 2);
  equal(gen.tokens, 2);
  equal(ledger.blocked, false);
  ledger.write(chunk(1), gen.slot, 1);
  equal(ledger.blocked, true, "write() returned false");
  ledger.wait(gen.slot);
  drain();
  deepStrictEqual([ledger.blocked, gen.releases, written.length], [
    false,
    1,
    2,
  ]);
});

Deno.test("a write that throws resets the stream; what it held is not delivered", async () => {
  const w = new FakeWire();
  const ledger = ledgerOn(w);
  const gen = new Owner(ledger);
  w.stream.write = () => {
    throw new Error("write after end");
  };
  ledger.write(chunk(2), gen.slot, 2);
  await turn();
  equal(w.resetCode, 8, "RST_STREAM CANCEL");
  equal(ledger.abandoned, true);
  equal(gen.tokens, 0);
});
