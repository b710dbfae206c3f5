import { strictEqual as assertEquals } from "node:assert/strict";
import { closest } from "./suggest.ts";

const KEYS = ["bind_addr", "worker_uds", "max_concurrent_streams"];

Deno.test("closest suggests a known name for a likely typo", () => {
  const rows: [string, string | undefined][] = [
    ["bind_adr", "bind_addr"],
    ["bnid_addr", "bind_addr"],
    ["Bind-Addr", "bind_addr"],
    ["worker_sock", undefined],
    ["max_concurent_stream", "max_concurrent_streams"],
    ["port", undefined],
  ];

  for (const [typed, suggestion] of rows) {
    assertEquals(closest(typed, KEYS), suggestion, typed);
  }
});

Deno.test("closest allows a single edit on short names", () => {
  assertEquals(closest("sever", ["server"]), "server");
  assertEquals(closest("svr", ["server"]), undefined);
  assertEquals(closest("helth", ["health"]), "health");
});
