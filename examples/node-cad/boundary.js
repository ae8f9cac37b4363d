// What Relay's security boundary answers an outsider, in Node.js.
//
// With narrower tokens than relay dev's (made by `relay token issue`), it checks, decoding
// each refusal's google.rpc details from the grpc-status-details-bin trailer:
// - a token without the RPC's scope: PERMISSION_DENIED, ErrorInfo reason SCOPE_MISSING;
// - a token bound to another CAD reading this CAD's incident: PERMISSION_DENIED,
//   CAD_SYSTEM_NOT_ALLOWED;
// - a caller over its rate limit: RESOURCE_EXHAUSTED, reason RATE_LIMITED, with a
//   google.rpc.RetryInfo saying when to retry (and the retry after it is served);
// - a responder's device restoring its call with routing's RestoreAssignment.
// It exits 1 at the first answer that is wrong.
//
//   RELAY_INTAKE_ADDR=... RELAY_AVAILABILITY_ADDR=... RELAY_ROUTING_ADDR=... \
//   RELAY_CA_FILE=... RELAY_TOKEN=... RELAY_BIN=target/debug/relay \
//   RELAY_SIGNING_KEY=DATA/signing-key.pem node boundary.js
//
// examples/run.sh sets these from `relay dev --data-dir DATA --rate-limit 20`.
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { bearer, channelCredentials, check, errorDetails, grpc, service, unary } from "./relay.js";

const IntakeService = service("intake", "IntakeService");
const AvailabilityService = service("availability", "AvailabilityService");
const RoutingService = service("routing", "RoutingService");
const HERE = { latitude: 44.0521, longitude: -123.0868 };

// A token from `relay token issue`, signed with relay dev's key.
function issue(subject, ...options) {
  const args = ["token", "issue", "--signing-key", process.env.RELAY_SIGNING_KEY, "--subject", subject];
  return execFileSync(process.env.RELAY_BIN, [...args, ...options], { encoding: "utf8" }).trim();
}

// Runs a call that must fail: its code and google.rpc details.
async function refusal(call) {
  const error = await call().then(() => null, (e) => e);
  check(error !== null, "the call is refused");
  return { code: error.code, ...errorDetails(error) };
}

function now() {
  const ms = Date.now();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

// google.protobuf.Duration as seconds.
const seconds = (d) => Number(d?.seconds ?? 0) + (d?.nanos ?? 0) / 1e9;

async function scopesCadsAndLimits() {
  const dev = new IntakeService(process.env.RELAY_INTAKE_ADDR, channelCredentials());
  // TLS only: each call below names its own token.
  const intake = new IntakeService(process.env.RELAY_INTAKE_ADDR, channelCredentials(""));
  const cad = `example-node-${randomUUID().slice(0, 12)}`;
  try {
    const submitted = await unary(dev, "SubmitIncident", {
      cad_system: cad, cad_incident_id: "NODE-B-1", region: "example-region", received_at: now(),
      incident_type: "WELFARE", priority: 3, location: HERE, address: "1234 Main St, Eugene OR",
    });
    const incidentId = submitted.incident.incident_id;
    const as = (token) => ({ credentials: bearer(token) });

    // 1. A token that may read incidents but not submit them.
    const reader = issue("example-reader", "--scope", "incidents.read");
    let r = await refusal(() =>
      unary(intake, "SubmitIncident", { cad_system: cad, cad_incident_id: "NODE-B-2" }, as(reader)),
    );
    const info = () => r["google.rpc.ErrorInfo"] ?? {};
    check(r.code === grpc.status.PERMISSION_DENIED, `no scope: ${r.code}`);
    check(
      info().reason === "SCOPE_MISSING" && info().metadata?.scope === "incidents.submit",
      `ErrorInfo ${info().reason}, scope ${info().metadata?.scope}`,
    );

    // 2. A token bound to another CAD reads nothing of this one's; its own CAD's does.
    const other = issue("example-other-cad", "--scope", "incidents.read", "--cad-system", "other-cad");
    r = await refusal(() => unary(intake, "GetIncident", { incident_id: incidentId }, as(other)));
    check(r.code === grpc.status.PERMISSION_DENIED, `another CAD: ${r.code}`);
    check(info().reason === "CAD_SYSTEM_NOT_ALLOWED", `ErrorInfo ${info().reason}`);
    const own = issue("example-own-cad", "--scope", "incidents.read", "--cad-system", cad);
    const got = await unary(intake, "GetIncident", { incident_id: incidentId }, as(own));
    check(got.incident.caller_details_withheld, "its own CAD reads it, caller details withheld");

    // 3. Over the rate limit (20 per second, burst 40, for this example's relay dev).
    const burst = issue(`example-burst-${randomUUID().slice(0, 8)}`, "--scope", "incidents.read");
    let served = 0;
    for (;;) {
      const error = await unary(intake, "GetIncident", { incident_id: incidentId }, as(burst)).then(
        () => null,
        (e) => e,
      );
      if (error) {
        r = { code: error.code, ...errorDetails(error) };
        break;
      }
      served += 1;
      if (served >= 200) check(false, "200 calls at once were never limited");
    }
    check(r.code === grpc.status.RESOURCE_EXHAUSTED, `after ${served} calls: ${r.code}`);
    check(info().reason === "RATE_LIMITED", `ErrorInfo ${info().reason}, class ${info().metadata?.class}`);
    const delay = seconds(r["google.rpc.RetryInfo"]?.retry_delay);
    check(delay > 0 && delay <= 1, `RetryInfo retry_delay ${delay.toFixed(3)}s`);
    await sleep(delay * 1000); // what a client does: wait retry_delay, then retry
    await unary(intake, "GetIncident", { incident_id: incidentId }, as(burst));
    check(true, "served again after retry_delay");
  } finally {
    dev.close();
    intake.close();
  }
}

// A team on a call; its device restores the call with its own team-bound token.
async function restoreACall() {
  const team = `example-team-${randomUUID().slice(0, 8)}`;
  const region = `example-region-${randomUUID().slice(0, 8)}`;
  const incidentId = randomUUID();
  const fleet = new AvailabilityService(process.env.RELAY_AVAILABILITY_ADDR, channelCredentials());
  const dispatch = new RoutingService(process.env.RELAY_ROUTING_ADDR, channelCredentials());
  const device = new RoutingService(process.env.RELAY_ROUTING_ADDR, channelCredentials(""));
  try {
    await unary(fleet, "UpsertTeam", {
      request_id: randomUUID(), team_id: team, display_name: "Example team", region,
      capabilities: ["clinician"],
    });
    await unary(fleet, "SetTeamStatus", { request_id: randomUUID(), team_id: team, status: "TEAM_STATUS_AVAILABLE" });
    await unary(fleet, "ReportLocation", { team_id: team, location: HERE, recorded_at: now() });
    const assigned = await unary(dispatch, "AssignTeam", {
      request_id: randomUUID(), incident_id: incidentId, region, location: HERE,
      required_capabilities: ["clinician"], priority: 3, cad_system: "example-cad",
      mode: "ASSIGNMENT_MODE_AUTO_ASSIGN",
    });
    check(
      assigned.outcome === "ASSIGNMENT_OUTCOME_ASSIGNED" && assigned.assignment.team_id === team,
      `${team} assigned`,
    );
    const token = issue(`device-${team}`, "--scope", "teams.report", "--team-id", team);
    const restored = await unary(
      device,
      "RestoreAssignment",
      { request_id: randomUUID(), incident_id: incidentId, team_id: team },
      { credentials: bearer(token) },
    );
    check(
      restored.assignment.assignment_id === assigned.assignment.assignment_id &&
        restored.assignment.state === "ASSIGNMENT_STATE_ACTIVE",
      "RestoreAssignment from the team's device returns its ACTIVE assignment",
    );
  } finally {
    fleet.close();
    dispatch.close();
    device.close();
  }
}

async function main() {
  await scopesCadsAndLimits();
  await restoreACall();
  console.log("node boundary: done");
}

main().catch((error) => {
  console.error(`FAIL: unexpected ${error.code ?? ""} ${error.details ?? error.stack}`);
  process.exit(1);
});
