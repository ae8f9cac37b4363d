// A small CAD adapter for Relay's IntakeService, in Node.js.
//
// It submits an incident, watches the CAD's event stream, drops the stream and resumes it
// from the last sequence it processed, reads the error details of a bad submission, and
// closes the incident. It checks every answer against the contract in
// proto/relay/intake/v1/intake_service.proto and exits 1 at the first one that is wrong.
//
//   RELAY_INTAKE_ADDR=127.0.0.1:50051 RELAY_CA_FILE=... RELAY_TOKEN=... node cad.js
//
// RELAY_CA_FILE and RELAY_TOKEN are the lines `relay dev` prints: TLS trusting that CA, and
// the bearer token on every call. Without RELAY_CA_FILE it connects in plaintext
// (`relay dev --insecure`).
import { randomUUID } from "node:crypto";

import { channelCredentials, check, errorDetails, grpc, service, unary } from "./relay.js";

const ADDR = process.env.RELAY_INTAKE_ADDR ?? "127.0.0.1:50051";
const WATCH_DEADLINE_MS = 30_000; // bounds each stream in this example
const IntakeService = service("intake", "IntakeService");

// Reads the CAD's stream from afterSequence until until(event) holds, then hangs up.
// Returns the events read and the last sequence processed, the position to resume from.
async function watch(client, cadSystem, afterSequence, until) {
  const deadline = new Date(Date.now() + WATCH_DEADLINE_MS);
  const call = client.WatchIncidentEvents(
    { cad_system: cadSystem, after_sequence: afterSequence },
    { deadline },
  );
  call.on("error", () => {}); // our own cancel() ends the call with CANCELLED
  const events = [];
  let last = afterSequence;
  let first = true;
  try {
    for await (const message of call) {
      if (first) {
        first = false;
        check(message.kind === "heartbeat", "a stream opens with a Heartbeat");
        const head = message.heartbeat.last_sequence;
        check(head >= afterSequence, `heartbeat last_sequence ${head} >= ${afterSequence}`);
        continue;
      }
      if (message.kind !== "event") continue; // a heartbeat: alive, nothing happened
      const event = message.event;
      if (event.sequence <= last) continue; // the last event again after a resume
      check(event.sequence === last + 1, `sequence ${event.sequence} follows ${last}`);
      last = event.sequence;
      events.push(event);
      if (until(event)) return { events, last };
    }
  } finally {
    call.cancel(); // hang up: the server sees CANCELLED and frees the stream
  }
  check(false, "the stream ended before the expected event");
}

function submitRequest(cadSystem, cadIncidentId, fields) {
  const now = Date.now();
  const received_at = { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 };
  return { cad_system: cadSystem, cad_incident_id: cadIncidentId, region: "example-region", received_at, ...fields };
}

async function main() {
  // A cad_system of its own, so each run starts a fresh stream at sequence 1.
  const cadSystem = `example-node-${randomUUID().slice(0, 12)}`;
  const client = new IntakeService(ADDR, channelCredentials());
  try {
    // 1. Submit. The key is (cad_system, cad_incident_id): resending after a lost response
    // or a DEADLINE_EXCEEDED returns the stored incident with created = false.
    const request = submitRequest(cadSystem, "NODE-0001", {
      incident_type: "WELFARE",
      priority: 3,
      location: { latitude: 44.0521, longitude: -123.0868 },
      address: "1234 Main St, Eugene OR",
    });
    const submitted = await unary(client, "SubmitIncident", request);
    const incidentId = submitted.incident.incident_id;
    check(submitted.created && incidentId, `incident ${incidentId} created`);
    const again = await unary(client, "SubmitIncident", request);
    check(!again.created && again.incident.incident_id === incidentId, "resubmitting returns the same incident");

    // 2. Watch from the start until the incident is triaged, then drop the stream.
    const ours = (kind) => (e) => e.incident_id === incidentId && e.kind === kind;
    let { events, last } = await watch(client, cadSystem, 0, ours("INCIDENT_EVENT_KIND_TRIAGED"));
    const kinds = events.map((e) => e.kind);
    check(
      kinds[0] === "INCIDENT_EVENT_KIND_RECEIVED" && kinds[1] === "INCIDENT_EVENT_KIND_TRIAGED",
      `RECEIVED then TRIAGED (got ${kinds})`,
    );

    // 3. While disconnected: a bad submission. Priority is 1..5 and location is required.
    const bad = submitRequest(cadSystem, "NODE-BAD", { incident_type: "WELFARE", priority: 9 });
    const error = await unary(client, "SubmitIncident", bad).then(() => null, (e) => e);
    check(error?.code === grpc.status.INVALID_ARGUMENT, `bad submission is INVALID_ARGUMENT (${error?.code})`);
    const { "google.rpc.ErrorInfo": info, "google.rpc.BadRequest": badRequest } = errorDetails(error);
    check(info && badRequest, "ErrorInfo and BadRequest present");
    check(
      info.reason === "INVALID_FIELD" && info.domain === "relay.intake.v1",
      `ErrorInfo ${info.reason} in ${info.domain}`,
    );
    for (const v of badRequest.field_violations) console.log(`    ${v.field}: ${v.description}`);
    const fields = badRequest.field_violations.map((v) => v.field);
    check(fields.includes("priority") && fields.includes("location"), `violations name priority and location (${fields})`);

    // 4. Still disconnected: close the incident. Mutations carry a request_id, so a retry
    // with the same one (after a timeout, say) returns the first answer.
    const close = {
      request_id: randomUUID(),
      incident_id: incidentId,
      outcome: "CLOSE_OUTCOME_RESOLVED_ON_SCENE",
      notes: "resolved on scene by the example",
    };
    const closed = await unary(client, "CloseIncident", close);
    check(closed.incident.state === "INCIDENT_STATE_CLOSED", "incident closed");
    const retried = await unary(client, "CloseIncident", close);
    check(retried.incident.revision === closed.incident.revision, "retried close changes nothing");

    // 5. Resume after the last sequence processed: nothing is missed, CLOSED arrives.
    ({ events, last } = await watch(client, cadSystem, last, ours("INCIDENT_EVENT_KIND_CLOSED")));
    check(events.every((e) => e.cad_incident_id === "NODE-0001"), "the rejected submission left no event");
    console.log(`node-cad: done, resumed to sequence ${last}`);
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`FAIL: unexpected ${error.code ?? ""} ${error.details ?? error.stack}`);
  process.exit(1);
});
