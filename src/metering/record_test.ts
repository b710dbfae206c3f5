import { equal, match, ok } from "node:assert/strict";
import { uuidv7, uuidv7Time } from "./record.ts";

Deno.test("uuidv7 makes RFC 9562 version 7 ids that carry their millisecond and sort by it", () => {
  const seen = new Set<string>();
  let previous = "";
  // Enough ids to run through the random pool several times.
  for (let i = 0; i < 5_000; i++) {
    const ms = 1_796_000_000_000 + i * 977;
    const id = uuidv7(ms);
    match(
      id,
      /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
    equal(uuidv7Time(id), ms);
    ok(id > previous, "a later millisecond sorts later");
    ok(!seen.has(id));
    seen.add(id);
    previous = id;
  }
});

Deno.test("uuidv7 ids of the same millisecond differ", () => {
  const ids = new Set(
    Array.from({ length: 1_000 }, () => uuidv7(1_796_000_000_000)),
  );
  equal(ids.size, 1_000);
});
