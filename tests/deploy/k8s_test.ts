/**
 * The Kubernetes manifests agree with the sidecar: the ConfigMap's
 * sidecar.toml passes the sidecar's own validation and needs nothing the
 * image's executable was not compiled for, and the ports, probes, mounts,
 * grace period, Service and NetworkPolicy match that configuration.
 * (Their schema validity is checked offline with kubernetes-validate in
 * scripts/test.sh.)
 */

// deno-lint-ignore-file no-explicit-any -- manifests are untyped YAML
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { type Config, loadConfig, parseConfig } from "../../src/config/mod.ts";
import { dirOf, permissionSet } from "../../src/permissions.ts";
import { SIDECAR_VERSION } from "../../src/version.ts";
import {
  DEFAULT_BUILD_CONFIG,
  IMAGE_CONFIG_PATH,
} from "../../scripts/compile.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const DIR = `${ROOT}k8s`;

/** Every object in k8s/, by kind. */
async function manifests(): Promise<Map<string, any[]>> {
  const byKind = new Map<string, any[]>();
  for (
    const entry of [...Deno.readDirSync(DIR)].sort((a, b) =>
      a.name < b.name ? -1 : 1
    )
  ) {
    if (!entry.name.endsWith(".yaml")) continue;
    const text = await Deno.readTextFile(`${DIR}/${entry.name}`);
    for (const doc of parseAllDocuments(text)) {
      if ("errors" in doc && doc.errors.length > 0) {
        throw new Error(`${entry.name}: ${doc.errors[0].message}`);
      }
      const obj = doc.toJS();
      if (!obj) continue;
      byKind.set(obj.kind, [...(byKind.get(obj.kind) ?? []), obj]);
    }
  }
  return byKind;
}

function one(byKind: Map<string, any[]>, kind: string): any {
  const list = byKind.get(kind) ?? [];
  equal(list.length, 1, `expected one ${kind}, found ${list.length}`);
  return list[0];
}

const BY_KIND = await manifests();
const CONFIG_MAP = one(BY_KIND, "ConfigMap");
const DEPLOYMENT = one(BY_KIND, "Deployment");
const SERVICE = one(BY_KIND, "Service");
const POLICY = one(BY_KIND, "NetworkPolicy");
const POD = DEPLOYMENT.spec.template;
const SIDECAR = POD.spec.containers.find((c: any) => c.name === "sidecar");
const WORKER = POD.spec.containers.find((c: any) => c.name === "worker");

/** The configuration the ConfigMap holds, as the sidecar parses it. */
function clusterConfig(): Config {
  const result = parseConfig(
    CONFIG_MAP.data["sidecar.toml"],
    "k8s/configmap.yaml",
  );
  if (!result.ok) {
    throw new Error(
      `the ConfigMap's sidecar.toml has problems: ${
        JSON.stringify(result.problems)
      }`,
    );
  }
  return result.config;
}

function portNamed(container: any, name: string): number {
  const port = container.ports.find((p: any) => p.name === name);
  ok(port, `${container.name} has no port named ${name}`);
  return port.containerPort;
}

/** The volume mounted at `dir` in `container`, or undefined. */
function mountAt(container: any, dir: string): string | undefined {
  return container.volumeMounts?.find((m: any) =>
    dir === m.mountPath || dir.startsWith(`${m.mountPath}/`)
  )?.name;
}

Deno.test("the ConfigMap's sidecar.toml passes the sidecar's own validation", () => {
  clusterConfig();
});

Deno.test("the ConfigMap needs no permission the image's executable was not compiled for", async () => {
  const compiled = permissionSet(
    await loadConfig(`${ROOT}${DEFAULT_BUILD_CONFIG}`),
    IMAGE_CONFIG_PATH,
  );
  const needed = permissionSet(clusterConfig(), IMAGE_CONFIG_PATH);
  for (const kind of ["net", "read", "write", "env", "sys"] as const) {
    for (const target of needed[kind]) {
      ok(
        compiled[kind].includes(target),
        `the ConfigMap needs ${kind} ${target}; the image grants ${
          compiled[kind].join(",")
        }`,
      );
    }
  }
});

Deno.test("the sidecar container's ports, probes and metrics annotations follow the config", () => {
  const config = clusterConfig();
  equal(portNamed(SIDECAR, "grpc"), config.server.bindPort);
  equal(portNamed(SIDECAR, "metrics"), config.observability.metricsPort);

  const probe = (p: any) => ({ path: p.httpGet.path, port: p.httpGet.port });
  deepStrictEqual(probe(SIDECAR.readinessProbe), {
    path: "/readyz",
    port: "metrics",
  });
  deepStrictEqual(probe(SIDECAR.livenessProbe), {
    path: "/healthz",
    port: "metrics",
  });

  const notes = POD.metadata.annotations;
  equal(notes["prometheus.io/scrape"], "true");
  equal(notes["prometheus.io/port"], String(config.observability.metricsPort));
  equal(notes["prometheus.io/path"], "/metrics");
});

Deno.test("the grace period covers the preStop pause, the drain, the close and the last usage flush", async () => {
  const config = clusterConfig();
  // The shutdown's fixed budgets, as src/sidecar.ts defines them.
  const source = await Deno.readTextFile(`${ROOT}src/sidecar.ts`);
  const secs = (name: string) => {
    const ms = source.match(new RegExp(`${name} = ([\\d_]+)`))?.[1];
    ok(ms, `${name} not found in src/sidecar.ts`);
    return Number(ms.replaceAll("_", "")) / 1000;
  };
  const closeSecs = secs("CLOSE_GRACE_MS");
  const flushSecs = secs("USAGE_FLUSH_ON_SHUTDOWN_MS");

  const pause = SIDECAR.lifecycle.preStop.sleep.seconds;
  equal(WORKER.lifecycle.preStop.sleep.seconds, pause);
  const needed = pause + config.server.shutdownGraceMs / 1000 + closeSecs +
    flushSecs;
  const grace = POD.spec.terminationGracePeriodSeconds;
  ok(
    grace >= needed + 2 && grace <= needed + 30,
    `terminationGracePeriodSeconds ${grace}; the sidecar needs ${needed} s ` +
      `plus a margin of 2 to 30 s`,
  );
});

Deno.test("the sidecar has the design's limits; the worker its GPU and memory", () => {
  deepStrictEqual(SIDECAR.resources.limits, { cpu: "500m", memory: "128Mi" });
  equal(WORKER.resources.limits["nvidia.com/gpu"], 1);
  equal(WORKER.resources.limits.memory, "32Gi");
  equal(SIDECAR.image, `cy-llm-sidecar:${SIDECAR_VERSION}`);
});

Deno.test("the socket's folder is one emptyDir in both containers; the queue's is the sidecar's alone", () => {
  const config = clusterConfig();
  const volumes = new Map<string, any>(
    POD.spec.volumes.map((v: any) => [v.name, v]),
  );

  const socketDir = dirOf(config.server.workerSocketPath);
  const socketVolume = mountAt(SIDECAR, socketDir);
  ok(socketVolume, `nothing mounted at ${socketDir} in the sidecar`);
  equal(mountAt(WORKER, socketDir), socketVolume);
  ok("emptyDir" in volumes.get(socketVolume));

  const queueDir = dirOf(config.metering.usageDbPath);
  const queueVolume = mountAt(SIDECAR, queueDir);
  ok(queueVolume, `nothing mounted at ${queueDir} in the sidecar`);
  ok("emptyDir" in volumes.get(queueVolume));
  ok(!WORKER.volumeMounts.some((m: any) => m.name === queueVolume));

  // The ConfigMap lands where the executable reads its config.
  const configVolume = mountAt(SIDECAR, IMAGE_CONFIG_PATH);
  ok(configVolume);
  equal(volumes.get(configVolume).configMap.name, CONFIG_MAP.metadata.name);
  const mount = SIDECAR.volumeMounts.find((m: any) => m.name === configVolume);
  equal(mount.mountPath, dirOf(IMAGE_CONFIG_PATH));
  ok(IMAGE_CONFIG_PATH.slice(mount.mountPath.length + 1) in CONFIG_MAP.data);
});

Deno.test("the Service selects the pod and reaches both named ports", () => {
  const config = clusterConfig();
  const labels = POD.metadata.labels;
  for (const [k, v] of Object.entries(SERVICE.spec.selector)) {
    equal(labels[k], v, `Service selector ${k}=${v} misses the pod`);
  }
  const ports = Object.fromEntries(
    SERVICE.spec.ports.map((p: any) => [p.targetPort, p.port]),
  );
  deepStrictEqual(ports, {
    grpc: config.server.bindPort,
    metrics: config.observability.metricsPort,
  });
});

Deno.test("the NetworkPolicy admits only the gateway to the gRPC port", () => {
  const config = clusterConfig();
  const labels = POD.metadata.labels;
  for (const [k, v] of Object.entries(POLICY.spec.podSelector.matchLabels)) {
    equal(labels[k], v, `NetworkPolicy selector ${k}=${v} misses the pod`);
  }
  deepStrictEqual(POLICY.spec.policyTypes, ["Ingress"]);

  const rules: any[] = POLICY.spec.ingress;
  // A rule without `from` or `ports` would admit everyone or everything.
  ok(rules.every((r) => r.from?.length > 0 && r.ports?.length > 0));
  const toGrpc = rules.filter((r) =>
    r.ports.some((p: any) => p.port === config.server.bindPort)
  );
  equal(toGrpc.length, 1);
  deepStrictEqual(toGrpc[0].from, [{
    podSelector: { matchLabels: { "app.kubernetes.io/name": "cy-gateway" } },
  }]);
  const allowed = new Set(
    rules.flatMap((r) => r.ports.map((p: any) => p.port)),
  );
  deepStrictEqual(
    [...allowed].sort(),
    [config.server.bindPort, config.observability.metricsPort].sort(),
  );
});
