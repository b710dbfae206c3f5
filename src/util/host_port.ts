/**
 * Hosts as URLs and permission flags write them: an IPv6 address (held
 * bare, `::1`) gets its brackets here, once.
 *
 * @module
 */

/** `host`, bracketed when it is an IPv6 address: `[::1]`, `127.0.0.1`. */
export function bracketHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/** Formats `host` and `port`; `hostPort("::1", 80)` is `[::1]:80`. */
export function hostPort(host: string, port: number): string {
  return `${bracketHost(host)}:${port}`;
}
