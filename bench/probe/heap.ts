/**
 * Where the idle sidecar's memory goes, in three steps measured in fresh
 * processes: an empty Deno program, the same after importing the
 * sidecar's modules (grpc-js, prom-client, protobufjs, ...), and a sidecar
 * started in-process (`startSidecar`, as `main.ts` does) with its worker
 * connected. Each prints one JSON object: RSS and V8's heap figures
 * (`Deno.memoryUsage()`) after a full garbage collection.
 *
 *   deno run <the sidecar's flags for sidecar.toml, V8 flags plus --expose-gc> \
 *     bench/probe/heap.ts --stage bare|imports|idle [--config sidecar.toml]
 *
 * Run by scenario 3 of `bench/run.ts`, with the production permission set
 * of the config (src/permissions.ts), as the sidecar itself runs.
 *
 * @module
 */

const args = Deno.args;
const stage = args[args.indexOf("--stage") + 1];
const configPath = args.includes("--config")
  ? args[args.indexOf("--config") + 1]
  : undefined;

// The idle sidecar settles (first heartbeats, timers) before it is read.
const SETTLE_MS = 2_000;

async function measure(): Promise<Record<string, number>> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  await new Promise((r) => setTimeout(r, 50));
  gc?.();
  const m = Deno.memoryUsage();
  return {
    rss: m.rss,
    heapTotal: m.heapTotal,
    heapUsed: m.heapUsed,
    external: m.external,
  };
}

let stop: (() => Promise<void>) | null = null;
if (stage === "imports" || stage === "idle") {
  const { loadConfig } = await import("../../src/config/mod.ts");
  const { createLogger } = await import("../../src/log/logger.ts");
  const { startSidecar } = await import("../../src/sidecar.ts");
  if (stage === "idle") {
    const config = await loadConfig(configPath);
    const log = createLogger({ level: "warn", format: "json" });
    const sidecar = await startSidecar(config, log);
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    stop = () => sidecar.shutdown(0);
  }
} else if (stage !== "bare") {
  console.error("usage: heap.ts --stage bare|imports|idle [--config FILE]");
  Deno.exit(2);
}

console.log(JSON.stringify({ stage, ...(await measure()) }));
await stop?.();
Deno.exit(0);
