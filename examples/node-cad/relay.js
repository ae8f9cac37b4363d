// What the Node examples share (cad.js, boundary.js): the services' clients over TLS with a
// bearer token, unary calls with a deadline, and the google.rpc details of a refused call.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

export { grpc };

// The .proto files are loaded at run time from the repository's proto/ tree.
const PROTO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../proto");
export const DEADLINE_MS = 5_000; // every unary call has one

// A bearer token as call credentials: `authorization: Bearer <token>` on each call.
export function bearer(token) {
  return grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${token}`);
    callback(null, metadata);
  });
}

// TLS with the CA's certificate (RELAY_CA_FILE), and `token` on every call; plaintext
// without RELAY_CA_FILE (`relay dev --insecure`), no token when it is empty.
export function channelCredentials(token = process.env.RELAY_TOKEN) {
  const caFile = process.env.RELAY_CA_FILE;
  if (!caFile) return grpc.credentials.createInsecure();
  const tls = grpc.credentials.createSsl(fs.readFileSync(caFile));
  if (!token) return tls;
  return grpc.credentials.combineChannelCredentials(tls, bearer(token));
}

// keepCase: field names as in the .proto; longs: Number is safe for sequences (< 2^53).
const loaderOptions = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

// The service `name` of relay.<pkg>.v1 (`service("intake", "IntakeService")`).
export function service(pkg, name) {
  const definition = protoLoader.loadSync(`relay/${pkg}/v1/${pkg}_service.proto`, {
    ...loaderOptions,
    includeDirs: [PROTO],
  });
  return grpc.loadPackageDefinition(definition).relay[pkg].v1[name];
}

// google.rpc.Status and its details, from the vendored googleapis files, to decode the
// grpc-status-details-bin trailer (grpc-js hands it over as raw bytes).
const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => path.join(PROTO, target);
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");
const DETAIL_TYPES = ["google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"];

export function check(ok, what) {
  if (!ok) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

// Calls a unary RPC with a deadline (and `options`, such as call credentials); resolves
// with the response, rejects with the error.
export function unary(client, method, request, options = {}) {
  const deadline = new Date(Date.now() + DEADLINE_MS);
  return new Promise((resolve, reject) =>
    client[method](request, { deadline, ...options }, (error, response) =>
      error ? reject(error) : resolve(response),
    ),
  );
}

// The ErrorInfo, BadRequest and RetryInfo of a failed call, keyed by their type name.
export function errorDetails(error) {
  const [bytes] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!bytes) return {};
  const details = {};
  for (const any of Status.decode(bytes).details) {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    if (DETAIL_TYPES.includes(name)) details[name] = rpc.lookupType(name).decode(any.value);
  }
  return details;
}
