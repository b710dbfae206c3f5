import { deepStrictEqual, equal } from "node:assert/strict";
import { summarizeProfile } from "./cpu_profile.ts";

const REPO = "file:///work/main";
const GRPC =
  "https://registry.npmjs.org/@grpc/grpc-js/1.14.7/build/src/server.js";

function node(
  id: number,
  functionName: string,
  url: string,
  hitCount: number,
  children: number[] = [],
) {
  return {
    id,
    callFrame: { functionName, url, lineNumber: 0 },
    hitCount,
    children,
  };
}

// root ─┬ append (src/metering/queue.ts) ── op_kv_atomic_write: 5 hits
//       ├ chunk (src/gateway/generation.ts): 3 hits
//       ├ handle (grpc-js): 2 hits
//       └ (idle): 10 hits, not busy
const PROFILE = {
  startTime: 0,
  endTime: 20_000,
  nodes: [
    node(1, "(root)", "", 0, [2, 4, 5, 6]),
    node(2, "append", `${REPO}/src/metering/queue.ts`, 0, [3]),
    node(3, "op_kv_atomic_write", "", 5),
    node(4, "chunk", `${REPO}/src/gateway/generation.ts`, 3),
    node(5, "handle", GRPC, 2),
    node(6, "(idle)", "", 10),
  ],
};

Deno.test("a profile summary counts native callees toward the sidecar's own files and directories", async () => {
  const path = await Deno.makeTempFile({ suffix: ".cpuprofile" });
  try {
    await Deno.writeTextFile(path, JSON.stringify(PROFILE));
    const s = await summarizeProfile(path);
    equal(s.busyMs, 10);
    const pct = (xs: { name: string; pct: number }[]) =>
      Object.fromEntries(xs.map((x) => [x.name, Math.round(x.pct)]));
    deepStrictEqual(pct(s.files), {
      "[native code]": 50,
      "src/gateway/generation.ts": 30,
      "npm:@grpc/grpc-js/build/src/server.js": 20,
    });
    // grpc-js's own src/ is a package's, not the sidecar's.
    deepStrictEqual(pct(s.inclusive), {
      "src/": 80,
      "src/metering/": 50,
      "src/metering/queue.ts": 50,
      "src/gateway/": 30,
      "src/gateway/generation.ts": 30,
    });
  } finally {
    await Deno.remove(path);
  }
});
