import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import * as v8 from "node:v8";
import {
  ChunkIndex,
  chunkKey,
  ChunkPacker,
  chunkValue,
  packChunks,
  readChunk,
} from "./chunk.ts";
import {
  CHUNK_BYTES,
  chunkBytes,
  KV_LIMITS,
  recordBytes,
} from "./kv_limits.ts";
import { PENDING } from "./queue_keys.ts";
import type { UsageRecord } from "./record.ts";
import { heavyLabels, testRecord } from "./test_support.ts";

function entry(value: unknown, id = "k"): Deno.KvEntry<unknown> {
  return { key: [...PENDING, id], value, versionstamp: "00000000000000010000" };
}

Deno.test("a chunk's value holds its records in id order, under the key of its oldest", () => {
  const [a, b, c] = [testRecord(), testRecord(), testRecord()]
    .sort((x, y) => x.id < y.id ? -1 : 1);
  const value = chunkValue([c, a, b]);
  deepStrictEqual(value.records.map((r) => r.id), [a.id, b.id, c.id]);
  equal(value.v, 1);
  deepStrictEqual(chunkKey([c, a, b]), [...PENDING, a.id]);
});

Deno.test("readChunk reads a chunk, and a record stored alone as a chunk of one", () => {
  const r = testRecord();
  const s = testRecord();
  deepStrictEqual(
    readChunk(entry(chunkValue([r, s]))).records,
    [r, s].sort(
      (x, y) => x.id < y.id ? -1 : 1,
    ),
  );
  const legacy = readChunk(entry(r, r.id));
  deepStrictEqual(legacy.records, [r]);
  deepStrictEqual(legacy.key, [...PENDING, r.id]);
  equal(legacy.versionstamp, "00000000000000010000");
});

Deno.test("readChunk refuses with a SyntaxError naming the key what is neither a chunk nor a record", () => {
  const cases: unknown[] = [
    { v: 2, records: [] },
    { v: 1, records: [{ no: "id" }] },
    { v: 1, records: "x" },
    "a string",
    null,
    [testRecord()],
  ];
  for (const value of cases) {
    throws(
      () => readChunk(entry(value, "bad-id")),
      (err: unknown) =>
        err instanceof SyntaxError &&
        err.message.includes("usage/pending/bad-id"),
      JSON.stringify(value),
    );
  }
  throws(() => readChunk(entry({ v: 2, records: [] })), /version 2/);
});

Deno.test("chunks are split exactly at the value budget, and an item over it stands alone", () => {
  const room = CHUNK_BYTES - chunkBytes(0);
  const fill = [room - 100, 100];
  deepStrictEqual(packChunks(fill, (n) => n), [fill], "exactly full: one");
  deepStrictEqual(
    packChunks([room - 100, 101], (n) => n),
    [[room - 100], [101]],
    "one byte over: two",
  );
  deepStrictEqual(
    packChunks([10, room + 1, 10, 10], (n) => n),
    [[10], [room + 1], [10, 10]],
  );
  deepStrictEqual(packChunks([], (n: number) => n), []);

  // The packer sized one item at a time splits as packChunks does.
  const packer = new ChunkPacker();
  deepStrictEqual(
    [10, room + 1, 10, 10].map((n) => packer.add(n)),
    [true, true, true, false],
  );
});

Deno.test("the fullest chunks the packer makes stay under Deno KV's 64 KiB per value, as V8 measures them", () => {
  const kinds: UsageRecord[][] = [
    Array.from({ length: 400 }, () => testRecord()),
    Array.from(
      { length: 40 },
      () => testRecord({ billing_labels: { note: "é".repeat(3000) } }),
    ),
    Array.from(
      { length: 6 },
      () => testRecord({ billing_labels: heavyLabels() }),
    ),
  ];
  for (const records of kinds) {
    const runs = packChunks(records, recordBytes);
    ok(runs.length > 1 || records.length === 1);
    for (const run of runs) {
      const estimate = chunkBytes(
        run.reduce((n, r) => n + recordBytes(r), 0),
      );
      const actual = v8.serialize(chunkValue(run)).length;
      ok(estimate >= actual, `estimate ${estimate} < V8's ${actual}`);
      ok(estimate <= CHUNK_BYTES || run.length === 1);
      ok(actual <= KV_LIMITS.valueBytes);
    }
  }
});

Deno.test("a chunk index finds each record's latest chunk and forgets replaced ones", () => {
  const [a, b, c] = [testRecord(), testRecord(), testRecord()];
  const index = new ChunkIndex();
  const first = readChunk(entry(chunkValue([a, b]), a.id));
  index.put(first);
  equal(index.find(b.id), first);

  // The same key read again without b: b is no longer known to be there.
  const again = readChunk(entry(chunkValue([a]), a.id));
  index.put(again);
  equal(index.find(a.id), again);
  equal(index.find(b.id), undefined);

  index.put(readChunk(entry(chunkValue([c]), c.id)));
  index.drop([...PENDING, a.id]);
  equal(index.find(a.id), undefined);
  ok(index.find(c.id) !== undefined);
  index.clear();
  equal(index.find(c.id), undefined);
});
