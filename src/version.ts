/** The sidecar's release version, reported in logs, GetStatus and the worker handshake. */
export const SIDECAR_VERSION = "0.1.0";

/** Product name and version as one token, e.g. `cy-sidecar/0.1.0`. */
export const SIDECAR_AGENT = `cy-sidecar/${SIDECAR_VERSION}`;
