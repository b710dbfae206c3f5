/**
 * Static checks of Dockerfile.distroless (no Docker engine runs in CI;
 * hadolint lints the same file in scripts/test.sh): a build stage on the
 * pinned Deno that compiles with the compile task, and a distroless final
 * stage, non-root, with only the executable, its configuration and the
 * queue's empty folder, exposing the configured ports.
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { loadConfig } from "../../src/config/mod.ts";
import { dirOf } from "../../src/permissions.ts";
import {
  DEFAULT_BUILD_CONFIG,
  IMAGE_CONFIG_PATH,
} from "../../scripts/compile.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

interface Instruction {
  op: string;
  args: string;
}

interface Stage {
  from: string;
  name?: string;
  body: Instruction[];
}

/** Instructions, continuation lines joined and comments dropped, by stage. */
function stages(text: string): Stage[] {
  const out: Stage[] = [];
  const joined = text.split("\n")
    .filter((l) => !l.trimStart().startsWith("#"))
    .join("\n")
    .replace(/\\\n/g, " ");
  for (const line of joined.split("\n")) {
    const m = line.trim().match(/^(\w+)\s+(.*)$/);
    if (!m) continue;
    const op = m[1].toUpperCase();
    const args = m[2].replace(/\s+/g, " ").trim();
    if (op === "FROM") {
      const [from, as, name] = args.split(" ");
      out.push({
        from,
        name: as?.toUpperCase() === "AS" ? name : undefined,
        body: [],
      });
    } else {
      out.at(-1)?.body.push({ op, args });
    }
  }
  return out;
}

/** COPY's flags and operands: `--from=x --chown=y src dest`. */
function copy(args: string) {
  const words = args.split(" ");
  const flags = Object.fromEntries(
    words.filter((w) => w.startsWith("--")).map((w) => {
      const [k, v] = w.slice(2).split("=");
      return [k, v];
    }),
  );
  const operands = words.filter((w) => !w.startsWith("--"));
  return { flags, sources: operands.slice(0, -1), dest: operands.at(-1)! };
}

const TEXT = await Deno.readTextFile(`${ROOT}Dockerfile.distroless`);
const [BUILD, FINAL, ...MORE] = stages(TEXT);
const CONFIG = await loadConfig(`${ROOT}${DEFAULT_BUILD_CONFIG}`);
const EXECUTABLE = "/usr/local/bin/cy-sidecar";

Deno.test("the image has a build stage on the pinned Deno and a distroless final stage", async () => {
  equal(MORE.length, 0);
  const bootstrap = await Deno.readTextFile(`${ROOT}scripts/bootstrap.sh`);
  const pinned = bootstrap.match(/^DENO_VERSION=(\S+)$/m)?.[1];
  equal(BUILD.from, `denoland/deno:${pinned}`);
  equal(BUILD.name, "build");
  equal(FINAL.from, "gcr.io/distroless/cc-debian12:nonroot");
});

Deno.test("the build stage compiles with the compile task for the config the image ships", () => {
  const runs = BUILD.body.filter((i) => i.op === "RUN").map((i) => i.args);
  const compile = runs.find((r) => r.startsWith("deno task compile "));
  ok(compile, "no RUN deno task compile");
  ok(compile.includes(`--config-path ${IMAGE_CONFIG_PATH}`), compile);
  ok(compile.includes(`--config ${IMAGE_CONFIG_PATH}`), compile);
  ok(compile.includes("--output /out/cy-sidecar"), compile);

  // The config is put where the executable will read it, before compiling.
  const arg = BUILD.body.find((i) => i.op === "ARG")?.args;
  equal(arg, `SIDECAR_CONFIG=${DEFAULT_BUILD_CONFIG}`);
  const copies = BUILD.body.filter((i) => i.op === "COPY").map((i) =>
    copy(i.args)
  );
  ok(
    copies.some((c) =>
      c.sources[0] === "${SIDECAR_CONFIG}" && c.dest === IMAGE_CONFIG_PATH
    ),
  );

  // The executable is smoke-tested against that config.
  ok(runs.some((r) => r.includes("/out/cy-sidecar --check-config")));
});

Deno.test("the final stage holds only the executable, its config and the queue's folder", () => {
  equal(FINAL.body.filter((i) => i.op === "RUN" || i.op === "ADD").length, 0);
  const copies = FINAL.body.filter((i) => i.op === "COPY").map((i) =>
    copy(i.args)
  );
  ok(copies.every((c) => c.flags.from === "build"));
  deepStrictEqual(copies.map((c) => c.dest), [
    EXECUTABLE,
    IMAGE_CONFIG_PATH,
    dirOf(CONFIG.metering.usageDbPath),
  ]);
  deepStrictEqual(copies.map((c) => c.sources), [
    ["/out/cy-sidecar"],
    [IMAGE_CONFIG_PATH],
    ["/out/state"],
  ]);
  // Only the queue's folder belongs to the sidecar's user.
  deepStrictEqual(copies.map((c) => c.flags.chown), [
    undefined,
    undefined,
    "65532:65532",
  ]);
  const entry = FINAL.body.find((i) => i.op === "ENTRYPOINT")?.args;
  deepStrictEqual(JSON.parse(entry ?? "null"), [EXECUTABLE]);
});

Deno.test("the final stage runs as a numeric non-root user and exposes the configured ports", () => {
  const users = FINAL.body.filter((i) => i.op === "USER").map((i) => i.args);
  const last = users.at(-1) ?? "";
  ok(/^\d+(:\d+)?$/.test(last), `USER ${last} is not numeric`);
  ok(!last.split(":").includes("0"), "USER is root");

  const exposed = FINAL.body.filter((i) => i.op === "EXPOSE")
    .flatMap((i) => i.args.split(" "));
  deepStrictEqual(exposed, [
    String(CONFIG.server.bindPort),
    String(CONFIG.observability.metricsPort),
  ]);
});

Deno.test(".dockerignore lets in everything the build stage copies, and not .tools/", async () => {
  const lines = (await Deno.readTextFile(`${ROOT}.dockerignore`)).split("\n")
    .map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  equal(lines[0], "*");
  const allowed = lines.filter((l) => l.startsWith("!")).map((l) => l.slice(1));
  const sources = BUILD.body.filter((i) => i.op === "COPY")
    .flatMap((i) => copy(i.args).sources)
    .map((s) => s === "${SIDECAR_CONFIG}" ? DEFAULT_BUILD_CONFIG : s);
  for (const source of sources) {
    ok(
      allowed.some((a) =>
        a === source || (a.endsWith("/") && source.startsWith(a))
      ),
      `${source} is excluded from the build context`,
    );
  }
  ok(!allowed.some((a) => a.startsWith(".tools")));
});
