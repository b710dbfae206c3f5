/**
 * `host:port` as URLs and permission flags write it: an IPv6 address (held
 * bare, `::1`) gets its brackets here, once.
 *
 * @module
 */

/** Formats `host` and `port`; `hostPort("::1", 80)` is `[::1]:80`. */
export function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}
