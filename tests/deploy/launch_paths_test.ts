/**
 * Every way of launching the sidecar takes its permissions from
 * src/permissions.ts: the compile task, the start task, the flag printer,
 * the test harness, the benchmark and (through the compile task) the
 * image. `-A` appears in none of them; in the tests and the benchmark it
 * is given only to processes that are not the sidecar (docs/deployment.md,
 * "The permission set").
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { loadConfig } from "../../src/config/mod.ts";
import { denoFlags, permissionSet } from "../../src/permissions.ts";
import {
  compileArgs,
  DEFAULT_BUILD_CONFIG,
  IMAGE_CONFIG_PATH,
  parseCompileArgs,
} from "../../scripts/compile.ts";
import { runArgs } from "../../scripts/start.ts";
import { sidecarFlags } from "../../tools/sidecar_flags.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test("the compile task bakes in the set of the image's config and reads that config by default", async () => {
  const args = await compileArgs(parseCompileArgs([]));
  const flags = denoFlags(
    permissionSet(
      await loadConfig(`${ROOT}${DEFAULT_BUILD_CONFIG}`),
      IMAGE_CONFIG_PATH,
    ),
  );
  equal(args[0], "compile");
  for (const flag of flags) ok(args.includes(flag), `missing ${flag}`);
  // Entry point, then the baked arguments that run-time ones follow.
  deepStrictEqual(args.slice(-3), [
    `${ROOT}main.ts`,
    "--config",
    IMAGE_CONFIG_PATH,
  ]);
});

Deno.test("the compile task derives the set from the --config it is given", async () => {
  const dir = await Deno.makeTempDir();
  const config = `${dir}/prod.toml`;
  await Deno.writeTextFile(
    config,
    '[server]\nworker_uds = "/run/cy/w.sock"\n' +
      '[metering]\nusage_db_path = "/data/queue/usage.kv"\n',
  );
  const args = await compileArgs(
    parseCompileArgs(["--config", config, "--config-path", "/cfg/s.toml"]),
  );
  ok(args.includes("--allow-read=/run/cy/w.sock,/data/queue,/cfg/s.toml"));
  ok(args.includes("--allow-write=/run/cy/w.sock,/data/queue"));
  deepStrictEqual(args.slice(-2), ["--config", "/cfg/s.toml"]);
});

Deno.test("the start task runs main.ts with the set of the config it is given", async () => {
  const config = `${ROOT}${DEFAULT_BUILD_CONFIG}`;
  const args = await runArgs(["--config", config, "--check-config"]);
  const flags = denoFlags(permissionSet(await loadConfig(config), config));
  deepStrictEqual(args, [
    "run",
    ...flags,
    `${ROOT}main.ts`,
    "--config",
    config,
    "--check-config",
  ]);
});

Deno.test("the tasks route through the scripts, and the harness through src/permissions.ts", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  ok(tasks.compile.endsWith(" scripts/compile.ts"), tasks.compile);
  ok(tasks.start.endsWith(" scripts/start.ts"), tasks.start);

  const harness = await Deno.readTextFile(`${ROOT}tests/helpers/harness.ts`);
  ok(harness.includes('from "../../src/permissions.ts"'));
  ok(/denoFlags\(permissionSet\(/.test(harness));

  const dockerfile = await Deno.readTextFile(`${ROOT}Dockerfile.distroless`);
  ok(/^RUN deno task compile /m.test(dockerfile));
});

/** Files that launch or describe launching the sidecar (not tests). */
async function launchFiles(): Promise<string[]> {
  const out = [
    "deno.json",
    "main.ts",
    "Dockerfile.distroless",
    "scripts/bootstrap.sh",
    "scripts/demo.sh",
  ];
  for (const dir of ["scripts", "tools", "k8s", "deploy", "src"]) {
    for await (const path of walk(`${ROOT}${dir}`)) {
      const rel = path.slice(ROOT.length);
      if (/_test\.ts$/.test(rel) || rel === "scripts/test.sh") continue;
      out.push(rel);
    }
  }
  return [...new Set(out)];
}

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walk(path);
    else yield path;
  }
}

Deno.test("-A and --allow-all appear nowhere outside the tests", async () => {
  const allowAll = /(^|[\s"'`[,])(-A|--allow-all)(?=$|[\s"'`\],])/m;
  for (const file of await launchFiles()) {
    const text = await Deno.readTextFile(`${ROOT}${file}`);
    ok(!allowAll.test(text), `${file} grants every permission`);
  }
});

Deno.test("tools/sidecar_flags.ts prints the start task's flags, granting a config by the path given even through symbolic links", async () => {
  // A ConfigMap's layout: sidecar.toml -> ..data/sidecar.toml, ..data -> ..<version>.
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/..v1`);
  await Deno.writeTextFile(
    `${dir}/..v1/sidecar.toml`,
    `[server]\nworker_uds = "unix://${dir}/w.sock"\n` +
      `[metering]\nusage_db_path = "${dir}/usage/usage.kv"\n`,
  );
  await Deno.symlink("..v1", `${dir}/..data`);
  await Deno.symlink("..data/sidecar.toml", `${dir}/sidecar.toml`);
  const link = `${dir}/sidecar.toml`;

  // The command line, from another folder, with a relative path.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      `--config=${ROOT}deno.json`,
      "--allow-read",
      `${ROOT}tools/sidecar_flags.ts`,
      "./sidecar.toml",
    ],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const printed = new TextDecoder().decode(out.stdout).trim().split("\n");

  const start = await runArgs(["--config", link]);
  deepStrictEqual(printed, start.slice(1, start.indexOf(`${ROOT}main.ts`)));
  deepStrictEqual(await sidecarFlags("sidecar.toml", dir), printed);
  ok(
    printed.includes(
      `--allow-read=${dir}/w.sock,${dir}/usage,${link}`,
    ),
    printed.join("\n"),
  );
});

// Commands that may run with -A in the tests and the benchmark: none of
// them is the sidecar, and none starts one in its own process.
const ALLOWED_WITH_ALL = new Map([
  ["bench/run.ts", "the benchmark's orchestrator (bench/lib/stack.ts)"],
  ["tools/generate.ts", "a gateway client, killed by tests"],
]);

/** Files of the tests, the benchmark and the Python gateway tests. */
async function harnessFiles(): Promise<string[]> {
  const out: string[] = [];
  for (const dir of ["tests", "bench", "python/tests_gateway"]) {
    for await (const path of walk(`${ROOT}${dir}`)) {
      const rel = path.slice(ROOT.length);
      if (rel.startsWith("bench/results/") || rel.includes("__pycache__")) {
        continue;
      }
      if (/\.(ts|mjs|js|sh|py)$/.test(rel)) out.push(rel);
    }
  }
  return out;
}

/**
 * Each `-A` or `--allow-all` in `text` with the command it belongs to: in
 * TypeScript the innermost array literal around a string that holds it, or
 * the line of a comment; in shell and Python the line.
 */
export function commandsGrantingAll(
  text: string,
  language: "ts" | "line",
): { line: number; command: string }[] {
  const flag = /(^|[\s"'`[,])(-A|--allow-all)(?=$|[\s"'`\],])/;
  const lineOf = (i: number) => text.slice(0, i).split("\n").length;
  const out: { line: number; command: string }[] = [];
  if (language === "line") {
    text.split("\n").forEach((l, i) => {
      if (flag.test(l)) out.push({ line: i + 1, command: l });
    });
    return out;
  }

  // A small scanner: strings and comments are skipped when matching
  // brackets, so "[[sim ...]]" inside a string does not count.
  const opens: number[] = [];
  const pending: { at: number; open: number }[] = [];
  const closes = new Map<number, number>();
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "/" && text[i + 1] === "/") {
      const end = text.indexOf("\n", i);
      const stop = end < 0 ? text.length : end;
      const comment = text.slice(i, stop);
      if (flag.test(comment)) out.push({ line: lineOf(i), command: comment });
      i = stop;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      const stop = end < 0 ? text.length : end + 2;
      for (const l of text.slice(i, stop).split("\n")) {
        if (flag.test(l)) out.push({ line: lineOf(i), command: l });
      }
      i = stop - 1;
    } else if (c === '"' || c === "'" || c === "`") {
      let j = i + 1;
      while (j < text.length && text[j] !== c) j += text[j] === "\\" ? 2 : 1;
      const literal = text.slice(i + 1, j);
      if (/^(-A|--allow-all)$/.test(literal)) {
        pending.push({ at: i, open: opens.at(-1) ?? -1 });
      }
      i = j;
    } else if (c === "[") {
      opens.push(i);
    } else if (c === "]") {
      const open = opens.pop();
      if (open !== undefined) closes.set(open, i);
    }
  }
  for (const p of pending) {
    const end = p.open < 0 ? -1 : closes.get(p.open) ?? -1;
    const command = end < 0
      ? text.slice(p.at, text.indexOf("\n", p.at))
      : text.slice(p.open, end + 1);
    out.push({ line: lineOf(p.at), command });
  }
  return out;
}

Deno.test("the scanner finds -A with its command, past brackets inside strings", () => {
  const found = commandsGrantingAll(
    `new Proc(DENO, ["run", "-A", "tools/generate.ts",
  ...["--prompt", "x [[sim tokens=2]]"]]);
// deno run -A main.ts
run(["-A", "main.ts"]);
const re = /-A/; // the literal above is not a command
`,
    "ts",
  );
  deepStrictEqual(found.map((f) => f.line), [3, 1, 4]);
  ok(found[1].command.includes("tools/generate.ts"));
  ok(found[1].command.endsWith('"x [[sim tokens=2]]"]]'));
  ok(found[2].command.includes("main.ts"));
});

Deno.test("in the tests and the benchmark, -A goes only to processes that are not the sidecar", async () => {
  const problems: string[] = [];
  for (const file of await harnessFiles()) {
    // This file names the flag to look for it; the test runner's own -A
    // (scripts/test.sh) is outside these folders.
    if (file === "tests/deploy/launch_paths_test.ts") continue;
    const text = await Deno.readTextFile(`${ROOT}${file}`);
    const language = /\.(ts|mjs|js)$/.test(file) ? "ts" : "line";
    for (const { line, command } of commandsGrantingAll(text, language)) {
      const scripts = command.match(/[\w./${}-]+\.(ts|mjs|js)\b/g) ?? [];
      const named = scripts.map((s) =>
        [...ALLOWED_WITH_ALL.keys()].find((k) => s.endsWith(k)) ?? s
      );
      const allowed = named.length > 0 &&
        named.every((s) => ALLOWED_WITH_ALL.has(s));
      if (!allowed) problems.push(`${file}:${line}: ${command.trim()}`);
    }
  }
  deepStrictEqual(
    problems,
    [],
    "-A given to the sidecar (or to a process that runs it in-process); " +
      "run main.ts with the production set instead (tests/helpers/harness.ts " +
      "runMain or startSidecar):\n" + problems.join("\n"),
  );
});

Deno.test("the benchmark starts sidecars only with the production set, in-process ones included", async () => {
  const stack = await Deno.readTextFile(`${ROOT}bench/lib/stack.ts`);
  ok(/denoFlags\(permissionSet\(parsed\.config, configPath\)\)/.test(stack));

  // Only the heap probe runs a sidecar in its own process, and the one
  // scenario that launches it derives the set from the probe's config.
  const inProcess: string[] = [];
  for (const file of await harnessFiles()) {
    const text = await Deno.readTextFile(`${ROOT}${file}`);
    if (/import\(?\s*["'][./]*src\/sidecar\.ts["']/.test(text)) {
      inProcess.push(file);
    }
  }
  deepStrictEqual(inProcess, ["bench/probe/heap.ts"]);
  const memory = await Deno.readTextFile(`${ROOT}bench/scenarios/memory.ts`);
  ok(memory.includes("bench/probe/heap.ts"));
  ok(/denoFlags\(permissionSet\(parsed\.config, config\)\)/.test(memory));
});
