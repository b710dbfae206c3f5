/**
 * Every way of launching the sidecar takes its permissions from
 * src/permissions.ts: the compile task, the start task, the test harness
 * and (through the compile task) the image. `-A` appears in none of them.
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
