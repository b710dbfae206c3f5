import { equal } from "node:assert/strict";
import {
  ERROR_STATUS,
  GrpcCode,
  SidecarError,
  WORKER_CODES,
  workerCodeStatus,
} from "./errors.ts";

Deno.test("every documented worker error code maps to its gRPC status", () => {
  const table: [string, number][] = [
    ["invalid_argument", GrpcCode.INVALID_ARGUMENT],
    ["model_mismatch", GrpcCode.FAILED_PRECONDITION],
    ["overloaded", GrpcCode.RESOURCE_EXHAUSTED],
    ["unavailable", GrpcCode.UNAVAILABLE],
    ["cancelled", GrpcCode.CANCELLED],
    ["deadline_exceeded", GrpcCode.DEADLINE_EXCEEDED],
    ["internal", GrpcCode.INTERNAL],
  ];
  equal(Object.keys(WORKER_CODES).length, table.length);
  for (const [code, status] of table) {
    equal(workerCodeStatus(code), status, code);
    equal(
      new SidecarError("worker_error", "m", { workerCode: code }).grpcCode,
      status,
      code,
    );
  }
});

Deno.test("worker error codes named like Object.prototype members map to INTERNAL", () => {
  const codes = [
    "constructor",
    "toString",
    "__proto__",
    "valueOf",
    "hasOwnProperty",
    "isPrototypeOf",
    "__defineGetter__",
    "toLocaleString",
  ];
  for (const code of codes) {
    equal(workerCodeStatus(code), GrpcCode.INTERNAL, code);
    const err = new SidecarError("worker_error", "m", { workerCode: code });
    equal(err.grpcCode, GrpcCode.INTERNAL, code);
    equal(typeof err.grpcCode, "number", code);
  }
});

Deno.test("an unknown worker error code maps to INTERNAL", () => {
  equal(workerCodeStatus("something_new"), GrpcCode.INTERNAL);
  equal(workerCodeStatus(""), GrpcCode.INTERNAL);
});

Deno.test("a worker_error without a code uses the kind's status", () => {
  equal(
    new SidecarError("worker_error", "m").grpcCode,
    ERROR_STATUS.worker_error.grpc,
  );
});
