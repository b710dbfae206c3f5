/**
 * The start-up check that the sandbox covers the configuration. The
 * permissions a sidecar runs with are fixed when it is launched (or, for
 * the executable, when it is compiled) from one configuration; a config
 * file changed afterwards can point the sidecar at a socket, a queue
 * folder, a listener or a billing host outside them. Without this check
 * that shows up later as one `NotCapable` error at first use, deep in a
 * reconnect loop or a billing retry. With it, the sidecar names every
 * missing permission at once and exits before it opens or contacts
 * anything.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import { type PermissionName, requirements } from "../permissions.ts";

/** Answers whether one permission is granted (`Deno.permissions.querySync`). */
export type PermissionQuery = (
  descriptor: Deno.PermissionDescriptor,
) => Deno.PermissionState;

/** A permission the configuration needs and the process was not given. */
export interface MissingPermission {
  name: PermissionName;
  target: string;
  /** The settings that need it, in the order they were found. */
  reasons: string[];
}

const realQuery: PermissionQuery = (d) => Deno.permissions.querySync(d).state;

function descriptor(
  name: PermissionName,
  target: string,
): Deno.PermissionDescriptor {
  switch (name) {
    case "net":
      return { name, host: target };
    case "read":
    case "write":
      return { name, path: target };
    case "env":
      return { name, variable: target };
    case "sys":
      return { name, kind: target as Deno.SysPermissionDescriptor["kind"] };
  }
}

/**
 * Every permission `config` needs that `query` does not report granted,
 * one entry per permission even when several settings need it. The config
 * file itself is left out: it has been read by the time this runs.
 */
export function missingPermissions(
  config: Config,
  query: PermissionQuery = realQuery,
): MissingPermission[] {
  const missing = new Map<string, MissingPermission>();
  for (const r of requirements(config)) {
    const key = `${r.name} ${r.target}`;
    const seen = missing.get(key);
    if (seen) {
      if (!seen.reasons.includes(r.reason)) seen.reasons.push(r.reason);
      continue;
    }
    if (query(descriptor(r.name, r.target)) === "granted") continue;
    missing.set(key, { name: r.name, target: r.target, reasons: [r.reason] });
  }
  return [...missing.values()];
}

/**
 * The report for missing permissions: one line each, in the form of the
 * config problems (`source: setting: problem`), then what to do.
 */
export function describeMissing(
  missing: readonly MissingPermission[],
  source: string,
): string {
  const lines = missing.map((m) =>
    `${source}: ${m.reasons.join(", ")}: no ${m.name} permission for ` +
    `${JSON.stringify(m.target)} (--allow-${m.name})`
  );
  lines.push(
    `cy-sidecar: the permission set it was started with does not cover ` +
      `this configuration (${missing.length} missing); nothing was opened ` +
      `or contacted.`,
    `cy-sidecar: start it with the set derived from this file ` +
      `(deno task start --config FILE), or compile it for this file ` +
      `(deno task compile --config FILE); see docs/deployment.md.`,
  );
  return lines.join("\n");
}

/**
 * Exits with status 1 after printing every missing permission, unless the
 * process may use everything `config` points at.
 */
export function exitUnlessPermitted(config: Config, configPath?: string): void {
  const missing = missingPermissions(config);
  if (missing.length === 0) return;
  console.error(
    describeMissing(missing, configPath ?? "(embedded defaults)"),
  );
  Deno.exit(1);
}
