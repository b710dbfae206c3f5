/**
 * The sidecar's configuration: load `sidecar.toml` into a typed
 * {@link Config}, or learn every problem the file has at once.
 *
 * @example
 * ```ts
 * import { ConfigError, loadConfig } from "./mod.ts";
 *
 * try {
 *   const config = await loadConfig("sidecar.toml");
 *   console.log(config.server.bindPort, config.health.checkIntervalMs);
 * } catch (error) {
 *   if (!(error instanceof ConfigError)) throw error;
 *   console.error(error.message); // one "file:line: key: problem" per line
 * }
 * ```
 *
 * @module
 */

export {
  ConfigError,
  type ConfigProblem,
  formatProblem,
  loadConfig,
  parseConfig,
  type ParseConfigResult,
} from "./load.ts";
export {
  type Config,
  CONFIG_KEYS,
  type ConfigKey,
  DEFAULT_CONFIG,
  defaultConfig,
  type HealthConfig,
  type LogFormat,
  type LogLevel,
  type MeteringConfig,
  type MeteringMode,
  type ObservabilityConfig,
  type SectionName,
  SECTIONS,
  type ServerConfig,
  type UsageFormat,
  type WorkerConfig,
} from "./schema.ts";
export type { ValueType } from "./values.ts";
