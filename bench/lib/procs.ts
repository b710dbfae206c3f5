/**
 * Processes the benchmark starts, and what /proc says about them.
 *
 * Every child is registered when it starts and killed by its own PID when
 * the run ends, however it ends (normal end, an error, SIGINT/SIGTERM to
 * the orchestrator): nothing is ever looked up or killed by name.
 *
 * @module
 */

const LIVE = new Set<Proc>();

/** A child process whose output is kept, line by line, for start-up checks. */
export class Proc {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  readonly pid: number;
  readonly lines: string[] = [];
  readonly exited: Promise<Deno.CommandStatus>;
  #stdout = "";
  #waiters: (() => void)[] = [];
  #done = false;

  constructor(
    name: string,
    cmd: string,
    args: string[],
    options: { env?: Record<string, string>; cwd?: string } = {},
  ) {
    this.name = name;
    this.child = new Deno.Command(cmd, {
      args,
      env: options.env,
      cwd: options.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.pid = this.child.pid;
    LIVE.add(this);
    void this.#collect(this.child.stderr, false);
    void this.#collect(this.child.stdout, true);
    this.exited = this.child.status.then((s) => {
      this.#done = true;
      LIVE.delete(this);
      this.#wake();
      return s;
    });
  }

  /** Whether the process has exited. */
  get done(): boolean {
    return this.#done;
  }

  /** Everything the process wrote on stdout (for tools that print JSON). */
  get stdout(): string {
    return this.#stdout;
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  async #collect(
    stream: ReadableStream<Uint8Array>,
    keep: boolean,
  ): Promise<void> {
    let buf = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      if (keep) this.#stdout += text;
      buf += text;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        // Bounded: a chatty process must not grow the orchestrator.
        if (this.lines.length < 5_000) this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
      this.#wake();
    }
    if (buf && this.lines.length < 5_000) this.lines.push(buf);
    this.#wake();
  }

  /** Waits for an output line matching `re`, and returns it. */
  async waitFor(re: RegExp, timeoutMs = 30_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find((l) => re.test(l));
      if (hit) return hit;
      if (this.#done || Date.now() > until) {
        throw new Error(
          `${this.name} (pid ${this.pid}) ${
            this.#done ? "exited" : `printed nothing matching ${re}`
          } within ${timeoutMs} ms; its output:\n${this.tail()}`,
        );
      }
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  /** The last lines of output, for error messages. */
  tail(n = 30): string {
    return this.lines.slice(-n).join("\n");
  }

  /** Sends a signal; a process already gone is not an error. */
  signal(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* already exited */ }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.#done) return;
    this.signal("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => {
      timer = setTimeout(() => r("late"), graceMs);
    });
    const outcome = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (outcome === "late") {
      this.signal("SIGKILL");
      await this.exited;
    }
  }

  /** Waits for a normal exit within `timeoutMs`, else kills. */
  async wait(timeoutMs: number): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((r) => {
      timer = setTimeout(() => r(null), timeoutMs);
    });
    const status = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (status) return status;
    this.signal("SIGKILL");
    await this.exited;
    throw new Error(
      `${this.name} (pid ${this.pid}) did not finish within ${timeoutMs} ms`,
    );
  }
}

/** Kills every child still running (SIGTERM, then SIGKILL), by PID. */
export async function stopAll(graceMs = 3_000): Promise<void> {
  await Promise.all([...LIVE].map((p) => p.stop(graceMs)));
}

/** Runs a command to its end; returns its stdout, throws on failure. */
export async function runTool(
  name: string,
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; cwd?: string; timeoutMs: number },
): Promise<string> {
  const proc = new Proc(name, cmd, args, options);
  const status = await proc.wait(options.timeoutMs);
  // Let the output readers take the last bytes.
  await new Promise((r) => setTimeout(r, 20));
  if (!status.success) {
    throw new Error(
      `${name} exited with status ${status.code}; its output:\n${proc.tail()}`,
    );
  }
  return proc.stdout;
}

// Clock ticks per second of /proc/<pid>/stat times (USER_HZ). 100 on every
// Linux this runs on; `getconf CLK_TCK` would say otherwise.
const TICKS_PER_S = 100;

/** CPU seconds (user + system, all threads) a process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // The command name may hold spaces and parentheses: fields start after
  // the last ")". utime and stime are fields 14 and 15 of the line.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_S;
}

/** Resident set size and its peak so far, in bytes. */
export function memory(
  pid: number,
): { rss: number; peak: number; anon: number; file: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = (key: string) => {
    const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"));
    return m ? Number(m[1]) * 1024 : 0;
  };
  // RssFile is mostly the Deno executable's own code pages: clean, shared,
  // and the first thing the kernel reclaims under memory pressure.
  return {
    rss: kb("VmRSS"),
    peak: kb("VmHWM"),
    anon: kb("RssAnon"),
    file: kb("RssFile"),
  };
}

/** PIDs whose parent is `pid` (nginx's workers, for instance). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(entry.name));
    } catch { /* the process went away */ }
  }
  return out;
}

/** CPU used by a set of processes while `work` runs, in seconds each. */
export async function cpuDuring<T>(
  pids: Record<string, number>,
  work: () => Promise<T>,
): Promise<{ value: T; cpuS: Record<string, number>; wallS: number }> {
  const before = Object.fromEntries(
    Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]),
  );
  const t0 = performance.now();
  const value = await work();
  const wallS = (performance.now() - t0) / 1000;
  const cpuS = Object.fromEntries(
    Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid) - before[k]]),
  );
  return { value, cpuS, wallS };
}

/** Samples a value every `everyMs` until stopped; returns the samples. */
export function sampler(
  read: () => number,
  everyMs: number,
): { stop(): number[] } {
  const samples: number[] = [];
  const take = () => {
    try {
      samples.push(read());
    } catch { /* the process is gone; the run will report it */ }
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
