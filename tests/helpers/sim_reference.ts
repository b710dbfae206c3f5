/**
 * The simulator's output computed by the simulator's own code, without a
 * socket: what a generation must deliver, token id by token id. Tests
 * compare what a gateway stream carried against it, so a token that went
 * to the wrong stream, or got lost or duplicated, is caught.
 */

import { PYTHON } from "./harness.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

// Reads [{prompt, seed, count}] on stdin, prints [[token ids]]. The
// directive is stripped the way the simulator strips it before seeding.
const SCRIPT = `
import json, sys
from itertools import islice
from cy_worker.sim.directive import Plan
from cy_worker.sim.text import token_stream
plan = Plan()
out = []
for item in json.load(sys.stdin):
    _, text = plan.for_prompt(item["prompt"])
    out.append(list(islice(token_stream(text, item["seed"]), item["count"])))
json.dump(out, sys.stdout)
`;

/** One generation to reproduce. */
export interface SimGeneration {
  prompt: string;
  /** `sampling.seed`, 0 when the request has none. */
  seed: number;
  /** Tokens the generation delivers. */
  count: number;
}

/** The token ids the simulator produces for each generation. */
export async function simTokenIds(
  generations: SimGeneration[],
): Promise<number[][]> {
  const child = new Deno.Command(PYTHON, {
    args: ["-c", SCRIPT],
    env: { PYTHONPATH: `${ROOT}python` },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(generations)));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  if (code !== 0) {
    throw new Error(
      `sim reference failed: ${new TextDecoder().decode(stderr)}`,
    );
  }
  return JSON.parse(new TextDecoder().decode(stdout));
}
