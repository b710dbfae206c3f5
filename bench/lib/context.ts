/**
 * What every scenario is given.
 *
 * @module
 */

import type { Env } from "./env.ts";
import type { Durations, Options } from "./options.ts";
import type { Report } from "./report.ts";

/** A scenario's inputs, and where its figures go. */
export interface Context {
  env: Env;
  options: Options;
  durations: Durations;
  report: Report;
}

/** A scenario: adds its rows and notes to `ctx.report`. */
export type Scenario = (ctx: Context) => Promise<void>;
