/**
 * The benchmark suite's orchestrator. Run it through `bash bench/run.sh`,
 * which installs and builds what it needs first; `--help` lists the
 * options.
 *
 * Runs the seven scenarios in order, each starting and stopping its own
 * processes, then prints the table and writes it to
 * `bench/results/latest.json` and `bench/results/latest.md`. A scenario
 * that fails is reported and the others still run; the exit status is
 * non-zero if any failed. Every process started is stopped by its PID at
 * the end, also on SIGINT/SIGTERM.
 *
 * @module
 */

import type { Context, Scenario } from "./lib/context.ts";
import { describeMachine, loadEnv } from "./lib/env.ts";
import { FULL, parseOptions, SMOKE } from "./lib/options.ts";
import { stopAll } from "./lib/procs.ts";
import { markdown, Report, type Results, textTable } from "./lib/report.ts";
import { cpu } from "./scenarios/cpu.ts";
import { failFast } from "./scenarios/failfast.ts";
import { latency } from "./scenarios/latency.ts";
import { memoryScenario } from "./scenarios/memory.ts";
import { offload } from "./scenarios/offload.ts";
import { throughput } from "./scenarios/throughput.ts";

const env = loadEnv();
const options = parseOptions(Deno.args, env.root);
const durations = options.smoke ? SMOKE : FULL;
const report = new Report(options.smoke);
const ctx: Context = { env, options, durations, report };

for (const sig of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(sig, async () => {
    console.error(`bench: ${sig}; stopping every process started`);
    await stopAll();
    Deno.exit(130);
  });
}

const wanted = (n: string) => options.only === null || options.only.has(n);
// Each entry: a name, the scenario numbers it covers, and how to run it.
const scenarios: [string, number, Scenario][] = [];
if (wanted("1")) scenarios.push(["1. added latency per token", 1, latency]);
if (wanted("2") || wanted("6")) {
  const which = { two: wanted("2"), six: wanted("6") };
  const name = which.two && which.six
    ? "2. throughput and 6. metering cost"
    : which.two
    ? "2. throughput"
    : "6. metering cost";
  const count = Number(which.two) + Number(which.six);
  scenarios.push([name, count, (c) => throughput(c, which)]);
}
if (wanted("3")) scenarios.push(["3. memory", 1, memoryScenario]);
if (wanted("4")) scenarios.push(["4. CPU", 1, cpu]);
if (wanted("5")) scenarios.push(["5. protocol offloading", 1, offload]);
if (wanted("7")) scenarios.push(["7. fail fast", 1, failFast]);

const started = performance.now();
const machine = await describeMachine(env);
console.error(
  `bench: ${
    options.smoke ? "smoke" : "full"
  } run, ${options.repetitions} repetition(s), ` +
    `soak ${options.soakSecs} s; ${machine.nproc} cores, ${machine.cpuModel}, Deno ${machine.deno}`,
);

let passed = 0;
let failedCount = 0;
try {
  for (const [name, count, run] of scenarios) {
    const t0 = performance.now();
    console.error(`bench: ${name} ...`);
    try {
      await run(ctx);
      passed += count;
      console.error(
        `bench: ${name} done in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s`,
      );
    } catch (err) {
      const msg = err instanceof Error ? err.stack ?? err.message : String(err);
      report.failed.push(`${name}: ${msg.split("\n")[0]}`);
      failedCount += count;
      console.error(`bench: ${name} FAILED:\n${msg}`);
    }
    // Whatever a scenario left running (it should leave nothing) goes now.
    await stopAll();
  }
} finally {
  await stopAll();
}

const results: Results = {
  generated_at: new Date().toISOString(),
  command: `bash bench/run.sh${
    Deno.args.length ? " " + Deno.args.join(" ") : ""
  }`,
  mode: options.smoke ? "smoke" : "full",
  repetitions: options.repetitions,
  soak_secs: options.soakSecs,
  elapsed_s: (performance.now() - started) / 1000,
  machine,
  rows: report.rows,
  notes: report.notes,
  details: report.details,
  failed: report.failed,
};

await Deno.mkdir(options.outDir, { recursive: true });
await Deno.writeTextFile(
  `${options.outDir}/latest.json`,
  JSON.stringify(results, null, 2) + "\n",
);
await Deno.writeTextFile(`${options.outDir}/latest.md`, markdown(results));

console.log(textTable(report.rows));
if (report.notes.length) {
  console.log("\nNotes:\n" + report.notes.map((n) => `- ${n}`).join("\n"));
}
console.log(
  `\nWritten: ${options.outDir}/latest.json, ${options.outDir}/latest.md ` +
    `(${results.elapsed_s.toFixed(0)} s)`,
);
if (options.smoke) {
  // Smoke runs judge no timing: they pass when every scenario ran.
  console.log(
    `bench smoke: ${passed} passed, ${failedCount} failed`,
  );
}
if (report.failed.length) {
  console.error(`bench: failed: ${report.failed.join("; ")}`);
  Deno.exit(1);
}
