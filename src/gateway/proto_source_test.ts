import { equal } from "node:assert/strict";
import { HEALTH_PROTO, SIDECAR_PROTO } from "./proto_source.ts";

const root = new URL("../../", import.meta.url);

Deno.test("embedded proto sources match proto/ (run `deno task gen:proto` after editing)", async () => {
  equal(
    SIDECAR_PROTO,
    await Deno.readTextFile(new URL("proto/cy/sidecar/v1/sidecar.proto", root)),
  );
  equal(
    HEALTH_PROTO,
    await Deno.readTextFile(new URL("proto/grpc/health/v1/health.proto", root)),
  );
});
