/**
 * The README walks an operator from a local run to a scraped deployment,
 * in a fixed order, each step with the commands it needs and a link to the
 * page that details it; the commands and links it gives exist.
 */

import { deepStrictEqual, equal, match, ok } from "node:assert/strict";

const ROOT = new URL("../../", import.meta.url).pathname;
const README = await Deno.readTextFile(`${ROOT}README.md`);

// The README opens with the two commands everything else builds on.
const OPENING = `# cy-sidecar

\`\`\`sh
bash scripts/demo.sh   # starts a simulated worker and the sidecar, streams a real generation
bash scripts/test.sh   # every check and test: fmt, lint, types, unit, end-to-end, Python
\`\`\`
`;

const STEPS = [
  "Run locally",
  "Configure",
  "Build the executable",
  "Build the image",
  "Deploy to Kubernetes",
  "Scrape metrics",
  "What it does not do",
];

/** The text under each `##`/`###` heading, up to the next heading. */
function sections(markdown: string): Map<string, string> {
  const out = new Map<string, string>();
  let name = "";
  let body: string[] = [];
  let fenced = false;
  for (const line of markdown.split("\n")) {
    if (line.startsWith("```")) fenced = !fenced;
    const h = !fenced && line.match(/^#{2,3} (.+)$/);
    if (h) {
      if (name) out.set(name, body.join("\n"));
      name = h[1];
      body = [];
    } else {
      body.push(line);
    }
  }
  if (name) out.set(name, body.join("\n"));
  return out;
}

/** The commands of a section's `sh` blocks: lines joined at `\`, comments and blanks dropped. */
function commands(section: string): string[] {
  const out: string[] = [];
  for (const block of section.matchAll(/```sh\n([\s\S]*?)```/g)) {
    const joined = block[1].replace(/\\\n\s*/g, " ");
    for (const line of joined.split("\n")) {
      const command = line.replace(/\s+#.*$/, "").trim();
      if (command && !command.startsWith("#")) out.push(command);
    }
  }
  return out;
}

/** GitHub's anchor for a heading. */
function slug(heading: string): string {
  return heading.toLowerCase().replace(/[^\w\- ]/g, "").replace(/ /g, "-");
}

/** Relative links `[text](path#anchor)` of a section. */
function links(section: string): { path: string; anchor?: string }[] {
  return [...section.matchAll(/\]\(([^)#\s]+)(?:#([^)\s]+))?\)/g)]
    .filter((m) => !/^[a-z]+:/.test(m[1]))
    .map((m) => ({ path: m[1], anchor: m[2] }));
}

Deno.test("the README still opens with the demo and test commands", () => {
  ok(README.startsWith(OPENING), README.slice(0, OPENING.length));
});

Deno.test("the README's steps come in order: run, configure, build, image, deploy, scrape, what it does not do", () => {
  const names = [...sections(README).keys()];
  const found = names.filter((n) => STEPS.includes(n));
  deepStrictEqual(found, STEPS);
  for (let i = 1; i < STEPS.length; i++) {
    ok(names.indexOf(STEPS[i - 1]) < names.indexOf(STEPS[i]), STEPS[i]);
  }
});

Deno.test("each README step gives one or two commands and links to a page that exists, anchor included", async () => {
  const all = sections(README);
  for (const step of STEPS) {
    const text = all.get(step)!;
    if (step !== "What it does not do") {
      const n = commands(text).length;
      ok(n >= 1 && n <= 2, `${step}: ${n} commands`);
    }
    const docs = links(text).filter((l) => l.path.startsWith("docs/"));
    ok(docs.length > 0, `${step} links to no page under docs/`);
    for (const { path, anchor } of docs) {
      const page = await Deno.readTextFile(`${ROOT}${path}`);
      if (anchor) {
        ok(
          [...sections(page).keys()].map(slug).includes(anchor),
          `${step}: ${path} has no heading for #${anchor}`,
        );
      }
    }
  }
});

Deno.test("the README's steps name what they need, and what they name exists", async () => {
  const all = sections(README);
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  for (const step of STEPS) {
    for (const command of commands(all.get(step)!)) {
      for (const [, task] of command.matchAll(/deno"? task (\S+)/g)) {
        ok(task in tasks, `${step}: no deno task ${task}`);
      }
    }
  }

  match(all.get("Configure")!, /\(docs\/configuration\.md\)/);
  match(commands(all.get("Configure")!)[0], /--check-config/);

  const compile = all.get("Build the executable")!;
  equal(commands(compile)[0], '"$DENO" task compile');
  match(compile, /dl\.deno\.land/);
  match(compile, /cannot finish/);

  match(commands(all.get("Build the image")!)[0], /-f Dockerfile\.distroless /);
  await Deno.stat(`${ROOT}Dockerfile.distroless`);

  equal(commands(all.get("Deploy to Kubernetes")!)[0], "kubectl apply -f k8s/");
  ok((await Deno.stat(`${ROOT}k8s`)).isDirectory);

  match(commands(all.get("Scrape metrics")!)[0], /:9090\/metrics/);

  const not = all.get("What it does not do")!;
  match(not, /Authentication/);
  match(not, /TLS/);
  match(not, /gateway/);
});

Deno.test("every relative link in README.md, python/README.md and docs/ points to a file that exists", async () => {
  const pages = [
    "README.md",
    "python/README.md",
    ...[...Deno.readDirSync(`${ROOT}docs`)].filter((e) =>
      e.name.endsWith(".md")
    )
      .map((e) => `docs/${e.name}`),
  ];
  const missing: string[] = [];
  for (const page of pages) {
    const text = await Deno.readTextFile(`${ROOT}${page}`);
    const dir = page.includes("/")
      ? page.slice(0, page.lastIndexOf("/") + 1)
      : "";
    for (const { path } of links(text)) {
      const target = new URL(path, `file://${ROOT}${dir}`).pathname;
      try {
        await Deno.stat(target);
      } catch {
        missing.push(`${page} -> ${path}`);
      }
    }
  }
  deepStrictEqual(missing, []);
});
