import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { findKeyLines, lineOf } from "./source_lines.ts";

Deno.test("findKeyLines places keys under the header they follow", () => {
  const lines = findKeyLines([
    "# comment",
    "[server]",
    'bind_addr = "0.0.0.0:1"',
    "",
    "  [ health ]  # spaced",
    "check_interval_secs=5",
  ].join("\n"));

  assertEquals(lineOf(lines, "server"), 2);
  assertEquals(lineOf(lines, "server.bind_addr"), 3);
  assertEquals(lineOf(lines, "health"), 5);
  assertEquals(lineOf(lines, "health.check_interval_secs"), 6);
});

Deno.test("findKeyLines follows dotted and quoted keys", () => {
  const lines = findKeyLines([
    'server.bind_addr = "0.0.0.0:1"',
    '"worker" . "max_frame_bytes" = 2048',
    "[metering]",
    "'format' = 'json'",
  ].join("\r\n"));

  assertEquals(lineOf(lines, "server.bind_addr"), 1);
  assertEquals(lineOf(lines, "worker.max_frame_bytes"), 2);
  assertEquals(lineOf(lines, "metering.format"), 4);
});

Deno.test("lineOf falls back to the inline table that holds a key", () => {
  const lines = findKeyLines('server = { bind_addr = "x" }\n');

  assertEquals(lineOf(lines, "server.bind_addr"), 1);
  assertEquals(lineOf(lines, "worker.max_frame_bytes"), undefined);
});

Deno.test("findKeyLines ignores key-like lines inside multi-line strings", () => {
  const lines = findKeyLines([
    "[metering]",
    'instance_id = """',
    "format = 1",
    '"""',
    "format = 'json'",
    "usage_db_path = '''/a",
    "batch_max_records = 2'''",
    "batch_max_records = 3",
  ].join("\n"));

  assertEquals(lineOf(lines, "metering.format"), 5);
  assertEquals(lineOf(lines, "metering.batch_max_records"), 8);
});
