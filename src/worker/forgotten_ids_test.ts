import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { FORGOTTEN_IDS_KEPT, ForgottenIds } from "./forgotten_ids.ts";

Deno.test("forgotten ids past the limit drop the oldest first", () => {
  const ids = new ForgottenIds(3);
  for (const id of ["a", "b", "c", "d"]) ids.add(id);

  equal(ids.size, 3);
  deepStrictEqual(["a", "b", "c", "d"].map((id) => ids.has(id)), [
    false,
    true,
    true,
    true,
  ]);
});

Deno.test("an id the worker ended is no longer forgotten, and clear forgets all", () => {
  const ids = new ForgottenIds();
  ids.add("a");
  ids.add("b");
  ids.delete("a");
  ok(!ids.has("a"));
  ok(ids.has("b"));

  ids.clear();
  equal(ids.size, 0);
});

Deno.test("by default 1024 forgotten ids are kept", () => {
  const ids = new ForgottenIds();
  for (let i = 0; i <= FORGOTTEN_IDS_KEPT; i++) ids.add(`id-${i}`);
  equal(FORGOTTEN_IDS_KEPT, 1024);
  equal(ids.size, 1024);
  ok(!ids.has("id-0"));
  ok(ids.has("id-1"));
});

Deno.test("a forgotten-id limit below 1 is refused", () => {
  throws(() => new ForgottenIds(0), RangeError);
  throws(() => new ForgottenIds(1.5), /limit must be an integer >= 1, got 1.5/);
});
