/**
 * One load run against a sidecar launched under V8's CPU profiler
 * (`--cpu-prof`), summarized into the notes and a Markdown file beside the
 * results: what a scenario adds when it misses its target.
 *
 * @module
 */

import type { Context } from "./context.ts";
import {
  profileMarkdown,
  type ProfileSummary,
  summarizeProfile,
} from "./cpu_profile.ts";
import { type LoadSpec, runGrpc } from "./load.ts";
import { type MeteringMode, startStack, waitIdle } from "./stack.ts";

/** What to profile, and where the summary goes. */
export interface ProfileRun {
  scenario: string;
  /** The load, as the table names it. */
  label: string;
  spec: LoadSpec;
  /** File name (without extension) in the results directory. */
  file: string;
  /** The sidecar's metering mode; durable by default. */
  metering?: MeteringMode;
}

/**
 * Runs `run.spec` once under the profiler and reports where time went;
 * returns the summary, or null when no profile was written.
 */
export async function profileRun(
  ctx: Context,
  run: ProfileRun,
): Promise<ProfileSummary | null> {
  const { env, report, options } = ctx;
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "cybp" });
  try {
    const stack = await startStack(env, {
      metering: run.metering ?? "durable",
      denoFlags: [`--cpu-prof-dir=${dir}`, "--cpu-prof-md"],
    });
    try {
      await runGrpc(env, stack.grpcAddr, run.spec, {});
      await waitIdle(stack);
    } finally {
      // The profile is written when the sidecar exits.
      await stack.stop();
    }
    const files = [...Deno.readDirSync(dir)].map((e) => e.name);
    const prof = files.find((f) => f.endsWith(".cpuprofile"));
    if (!prof) {
      report.note(`${run.scenario}: the CPU profile run wrote no profile`);
      return null;
    }
    const summary = await summarizeProfile(`${dir}/${prof}`);
    await Deno.mkdir(options.outDir, { recursive: true });
    const out = `${options.outDir}/${run.file}.md`;
    await Deno.writeTextFile(
      out,
      `# Sidecar CPU profile: ${run.label}\n\n` +
        profileMarkdown(summary, "Summary") + "\n",
    );
    const md = files.find((f) => f.endsWith(".md"));
    if (md) {
      await Deno.copyFile(
        `${dir}/${md}`,
        `${options.outDir}/${run.file}-deno.md`,
      );
    }
    report.detail(run.scenario, { profile: run.label, summary });
    const top = (xs: { name: string; pct: number }[], n: number, sep: string) =>
      xs.slice(0, n).map((s) => `${s.name} ${s.pct.toFixed(0)}%`).join(sep);
    report.note(
      `${run.scenario}: a CPU profile at ${run.label} (${out}) puts the busy samples in: ` +
        `${top(summary.files, 6, ", ")}. Hottest functions (self time): ${
          top(summary.functions, 6, "; ")
        }.`,
    );
    return summary;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
