/**
 * The results of a benchmark run: one row per figure (the median over the
 * repetitions, each repetition's value, the target and whether it was met),
 * notes, and the raw runs; printed as a table and written as JSON and
 * Markdown.
 *
 * @module
 */

import type { Machine } from "./env.ts";
import { median } from "./stats.ts";

/** A figure's target: the figure must be `op` the value. */
export interface Target {
  op: "<=" | ">=";
  value: number;
  /** How the target reads in the table, e.g. "≤ 0.1 ms". */
  text: string;
}

/** One figure of the table. */
export interface Row {
  scenario: string;
  metric: string;
  load: string;
  unit: string;
  /** One value per repetition. */
  runs: number[];
  /** The median of `runs`. */
  value: number;
  target?: Target;
  /** PASS or MISS against the target; "-" in a smoke run; "" without one. */
  verdict: "PASS" | "MISS" | "-" | "";
  digits: number;
}

/** Everything a run produced. */
export interface Results {
  generated_at: string;
  command: string;
  mode: "full" | "smoke";
  repetitions: number;
  soak_secs: number;
  elapsed_s: number;
  machine: Machine;
  rows: Row[];
  notes: string[];
  /** Raw results of every run, by scenario. */
  details: Record<string, unknown>;
  failed: string[];
}

/** Collects rows, notes and raw details as the scenarios run. */
export class Report {
  readonly rows: Row[] = [];
  readonly notes: string[] = [];
  readonly details: Record<string, unknown[]> = {};
  readonly failed: string[] = [];
  readonly smoke: boolean;

  constructor(smoke: boolean) {
    this.smoke = smoke;
  }

  /** Adds a figure; its value is the median of `runs`. */
  add(
    scenario: string,
    metric: string,
    load: string,
    runs: number[],
    unit: string,
    options: { target?: Target; digits?: number } = {},
  ): Row {
    const value = median(runs);
    const { target } = options;
    let verdict: Row["verdict"] = "";
    if (target) {
      const met = target.op === "<="
        ? value <= target.value
        : value >= target.value;
      verdict = this.smoke
        ? "-"
        : Number.isNaN(value)
        ? "MISS"
        : met
        ? "PASS"
        : "MISS";
    }
    const row: Row = {
      scenario,
      metric,
      load,
      unit,
      runs,
      value,
      target,
      verdict,
      digits: options.digits ?? 1,
    };
    this.rows.push(row);
    return row;
  }

  /** A note printed under the table. */
  note(text: string): void {
    this.notes.push(text);
    console.error(`note: ${text}`);
  }

  /** Keeps a run's raw result. */
  detail(scenario: string, value: unknown): void {
    (this.details[scenario] ??= []).push(value);
  }
}

function fmt(v: number, digits: number): string {
  if (!Number.isFinite(v)) return "n/a";
  return v.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function cells(r: Row): string[] {
  return [
    r.scenario,
    r.metric,
    r.load,
    `${fmt(r.value, r.digits)} ${r.unit}`,
    r.runs.map((v) => fmt(v, r.digits)).join(" / "),
    r.target?.text ?? "",
    r.verdict,
  ];
}

const HEADER = [
  "scenario",
  "metric",
  "load",
  "median",
  "runs",
  "target",
  "result",
];

/** The table as plain text, columns padded. */
export function textTable(rows: Row[]): string {
  const all = [HEADER, ...rows.map(cells)];
  const widths = HEADER.map((_, i) => Math.max(...all.map((c) => c[i].length)));
  const line = (c: string[]) =>
    c.map((s, i) => s.padEnd(widths[i])).join("  ").trimEnd();
  return [
    line(HEADER),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...all.slice(1).map(line),
  ].join("\n");
}

/** The table as Markdown. */
export function markdownTable(rows: Row[]): string {
  const esc = (s: string) => s.replaceAll("|", "\\|");
  return [
    `| ${HEADER.join(" | ")} |`,
    `| ${HEADER.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${cells(r).map(esc).join(" | ")} |`),
  ].join("\n");
}

/** The whole result as a Markdown page. */
export function markdown(res: Results): string {
  const m = res.machine;
  return `# cy-sidecar benchmark results

- Command: \`${res.command}\` (${res.mode} run, ${res.repetitions} repetition${
    res.repetitions === 1 ? "" : "s"
  } per figure, soak ${res.soak_secs} s, ${Math.round(res.elapsed_s)} s in all)
- Generated: ${res.generated_at}
- Machine: ${m.nproc} cores, ${m.cpuModel}, ${m.memoryGiB} GiB memory, Linux ${m.kernel}
- Deno ${m.deno} (V8 ${m.v8}), ${m.python} with grpcio ${m.grpcio}, nginx ${
    m.nginx ?? "not installed"
  }, ${m.go ?? "Go not found"}

Each figure is the median over the repetitions; "runs" lists every
repetition's value. Ratios compare runs made in this same run.

${markdownTable(res.rows)}

${
    res.notes.length
      ? "Notes:\n\n" + res.notes.map((n) => `- ${n}`).join("\n")
      : ""
  }
${
    res.failed.length
      ? "\nScenarios that failed:\n\n" +
        res.failed.map((f) => `- ${f}`).join("\n")
      : ""
  }
`;
}
