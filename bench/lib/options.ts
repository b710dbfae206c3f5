/**
 * The benchmark's command line, and the durations of a full and of a
 * smoke run.
 *
 * @module
 */

/** Parsed command-line options. */
export interface Options {
  smoke: boolean;
  repetitions: number;
  soakSecs: number;
  outDir: string;
  /** Scenario numbers to run ("1".."7"); all when null. */
  only: Set<string> | null;
  /** Profile the sidecar's CPU in scenarios 2, 4 and 6 (default: when a target is missed). */
  profile: "auto" | "always" | "never";
}

/** How long each kind of run lasts, in seconds. */
export interface Durations {
  /** A latency run (scenario 1 and 5), warm-up included. */
  latencyS: number;
  /** A throughput run (scenarios 2, 5 and 6), warm-up included. */
  throughputS: number;
  /** The first part of every run, not counted. */
  warmupS: number;
  /** How long the idle sidecar settles before its RSS is read. */
  idleSettleS: number;
  /** How long 1,000 streams are held open. */
  holdS: number;
  /** The CPU window of scenario 4, warm-up included. */
  cpuS: number;
  /** How often RSS is sampled during the soak. */
  soakSampleS: number;
  /** A refusal run of scenario 7, warm-up included. */
  failFastS: number;
}

export const FULL: Durations = {
  latencyS: 12,
  throughputS: 12,
  warmupS: 2,
  idleSettleS: 3,
  holdS: 15,
  cpuS: 22,
  soakSampleS: 2,
  failFastS: 10,
};

export const SMOKE: Durations = {
  latencyS: 1.5,
  throughputS: 1.5,
  warmupS: 0.5,
  idleSettleS: 0.5,
  holdS: 2,
  cpuS: 2,
  soakSampleS: 0.5,
  failFastS: 2,
};

export const USAGE = `Usage: bash bench/run.sh [options]

Starts the simulator, the sidecar, a billing endpoint, the load generator
and the alternatives compared (a grpcio worker, nginx) itself, runs every
scenario, prints a table and writes bench/results/latest.{json,md}.

  --smoke            every scenario for seconds, one repetition; no targets judged
  --reps N           repetitions per figure (default 3; 1 with --smoke)
  --soak-secs N      length of the memory soak (default 600; 5 with --smoke)
  --only LIST        scenarios to run, e.g. --only 1,4 (default: all seven)
  --profile MODE     sidecar CPU profiles in scenarios 2, 4 and 6: auto (when
                     their target is missed), always or never (default auto)
  --out DIR          where results go (default bench/results)
  --no-install       (bench/run.sh) do not apt-get install nginx
  --help             this text
`;

/** Parses `args`; exits with the usage text on a bad one. */
export function parseOptions(args: string[], root: string): Options {
  const o: Options = {
    smoke: false,
    repetitions: NaN,
    soakSecs: NaN,
    outDir: `${root}/bench/results`,
    only: null,
    profile: "auto",
  };
  const bad = (msg: string): never => {
    console.error(`bench: ${msg}\n\n${USAGE}`);
    Deno.exit(2);
  };
  const num = (flag: string, v: string | undefined, minimum: number) => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < minimum) {
      bad(`${flag} needs a number >= ${minimum}, got ${JSON.stringify(v)}`);
    }
    return n;
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--smoke") o.smoke = true;
    else if (a === "--reps") o.repetitions = num(a, args[++i], 1);
    else if (a === "--soak-secs") o.soakSecs = num(a, args[++i], 1);
    else if (a === "--out") o.outDir = args[++i] ?? bad("--out needs a path");
    else if (a === "--only") {
      const list = (args[++i] ?? "").split(",").filter(Boolean);
      if (!list.length || list.some((s) => !/^[1-7]$/.test(s))) {
        bad(`--only takes scenario numbers 1 to 7, got ${args[i]}`);
      }
      o.only = new Set(list);
    } else if (a === "--profile") {
      const v = args[++i];
      if (v !== "auto" && v !== "always" && v !== "never") {
        bad(`--profile is auto, always or never, got ${JSON.stringify(v)}`);
      }
      o.profile = v as Options["profile"];
    } else if (a === "--help" || a === "-h") {
      console.log(USAGE);
      Deno.exit(0);
    } else bad(`unknown argument ${JSON.stringify(a)}`);
  }
  if (Number.isNaN(o.repetitions)) o.repetitions = o.smoke ? 1 : 3;
  if (Number.isNaN(o.soakSecs)) o.soakSecs = o.smoke ? 5 : 600;
  return o;
}
