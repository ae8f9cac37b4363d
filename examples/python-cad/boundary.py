#!/usr/bin/env python3
"""What Relay's security boundary answers an outsider, in Python.

With narrower tokens than relay dev's (made by `relay token issue`), it checks, decoding each
refusal's google.rpc details from the grpc-status-details-bin trailer:

- a token without the RPC's scope: PERMISSION_DENIED, ErrorInfo reason SCOPE_MISSING;
- a token bound to another CAD reading this CAD's incident: PERMISSION_DENIED,
  CAD_SYSTEM_NOT_ALLOWED;
- a caller over its rate limit: RESOURCE_EXHAUSTED, reason RATE_LIMITED, with a
  google.rpc.RetryInfo saying when to retry (and the retry after it is served);
- a responder's device restoring its call with routing's RestoreAssignment.

It exits 1 at the first answer that is wrong.

    RELAY_INTAKE_ADDR=... RELAY_AVAILABILITY_ADDR=... RELAY_ROUTING_ADDR=... \
    RELAY_CA_FILE=... RELAY_TOKEN=... RELAY_BIN=target/debug/relay \
    RELAY_SIGNING_KEY=DATA/signing-key.pem PYTHONPATH=target/stubs/python python boundary.py

examples/run.sh sets these from `relay dev --data-dir DATA --rate-limit 20`.
"""

import os
import subprocess
import sys
import time
import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from relay_channel import error_details, open_channel
from relay.availability.v1 import availability_service_pb2 as availability
from relay.availability.v1 import availability_service_pb2_grpc as availability_grpc
from relay.common.v1 import common_pb2
from relay.intake.v1 import intake_service_pb2 as intake
from relay.intake.v1 import intake_service_pb2_grpc as intake_grpc
from relay.routing.v1 import routing_service_pb2 as routing
from relay.routing.v1 import routing_service_pb2_grpc as routing_grpc

DEADLINE = 5.0  # seconds; every call has one
HERE = common_pb2.GeoPoint(latitude=44.0521, longitude=-123.0868)


def check(ok, what):
    if not ok:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def issue(subject, *options):
    """A token from `relay token issue`, signed with relay dev's key."""
    command = [
        os.environ["RELAY_BIN"], "token", "issue",
        "--signing-key", os.environ["RELAY_SIGNING_KEY"],
        "--subject", subject, *options,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def as_bearer(token):
    """Call metadata carrying `token` (the channel's own token is not sent with it)."""
    return grpc.access_token_call_credentials(token)


def details(error):
    """The ErrorInfo and RetryInfo of a failed call."""
    found = error_details(error)
    return found.get("ErrorInfo"), found.get("RetryInfo")


def refusal(call):
    """Runs call(), which must fail: its code, ErrorInfo and RetryInfo."""
    try:
        call()
    except grpc.RpcError as error:
        info, retry = details(error)
        return error.code(), info, retry
    check(False, "the call is refused")


def now():
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def main():
    ca = open(os.environ["RELAY_CA_FILE"], "rb").read()
    # TLS only: each call below names its own token, so the channel carries none.
    tls = grpc.ssl_channel_credentials(root_certificates=ca)
    cad = f"example-py-{uuid.uuid4().hex[:12]}"
    with open_channel(os.environ["RELAY_INTAKE_ADDR"]) as dev_channel, \
            grpc.secure_channel(os.environ["RELAY_INTAKE_ADDR"], tls) as intake_channel:
        dev = intake_grpc.IntakeServiceStub(dev_channel)
        stub = intake_grpc.IntakeServiceStub(intake_channel)
        submitted = dev.SubmitIncident(
            intake.SubmitIncidentRequest(
                cad_system=cad, cad_incident_id="PY-B-1", region="example-region",
                received_at=now(), incident_type="WELFARE", priority=3, location=HERE,
                address="1234 Main St, Eugene OR",
            ),
            timeout=DEADLINE,
        )
        incident_id = submitted.incident.incident_id

        # 1. A token that may read incidents but not submit them.
        reader = issue("example-reader", "--scope", "incidents.read")
        code, info, _ = refusal(lambda: stub.SubmitIncident(
            intake.SubmitIncidentRequest(cad_system=cad, cad_incident_id="PY-B-2"),
            timeout=DEADLINE, credentials=as_bearer(reader)))
        check(code == grpc.StatusCode.PERMISSION_DENIED, f"no scope: {code}")
        check(info.reason == "SCOPE_MISSING" and info.metadata["scope"] == "incidents.submit",
              f"ErrorInfo {info.reason}, scope {info.metadata.get('scope')}")

        # 2. A token bound to another CAD reads nothing of this one's, and its own CAD's
        # token reads the incident.
        other = issue("example-other-cad", "--scope", "incidents.read", "--cad-system", "other-cad")
        code, info, _ = refusal(lambda: stub.GetIncident(
            intake.GetIncidentRequest(incident_id=incident_id),
            timeout=DEADLINE, credentials=as_bearer(other)))
        check(code == grpc.StatusCode.PERMISSION_DENIED, f"another CAD: {code}")
        check(info.reason == "CAD_SYSTEM_NOT_ALLOWED", f"ErrorInfo {info.reason}")
        own = issue("example-own-cad", "--scope", "incidents.read", "--cad-system", cad)
        got = stub.GetIncident(intake.GetIncidentRequest(incident_id=incident_id),
                               timeout=DEADLINE, credentials=as_bearer(own))
        check(got.incident.caller_details_withheld, "its own CAD reads it, caller details withheld")

        # 3. Over the rate limit (20 per second, burst 40, for this example's relay dev).
        burst = issue(f"example-burst-{uuid.uuid4().hex[:8]}", "--scope", "incidents.read")
        read = intake.GetIncidentRequest(incident_id=incident_id)
        for served in range(200):
            try:
                stub.GetIncident(read, timeout=DEADLINE, credentials=as_bearer(burst))
            except grpc.RpcError as error:
                code = error.code()
                info, retry = details(error)
                break
        else:
            check(False, "200 calls at once were never limited")
        check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"after {served} calls: {code}")
        check(info.reason == "RATE_LIMITED", f"ErrorInfo {info.reason}, class {info.metadata.get('class')}")
        delay = retry.retry_delay.ToTimedelta().total_seconds() if retry else 0
        check(retry is not None and 0 < delay <= 1, f"RetryInfo retry_delay {delay:.3f}s")
        time.sleep(delay)  # what a client does: wait retry_delay, then retry
        stub.GetIncident(read, timeout=DEADLINE, credentials=as_bearer(burst))
        check(True, "served again after retry_delay")

    restore_a_call(tls)
    print("python boundary: done")


def restore_a_call(tls):
    """A team on a call; its device restores the call with its own team-bound token."""
    team = f"example-team-{uuid.uuid4().hex[:8]}"
    region = f"example-region-{uuid.uuid4().hex[:8]}"
    incident_id = str(uuid.uuid4())
    with open_channel(os.environ["RELAY_AVAILABILITY_ADDR"]) as channel:
        fleet = availability_grpc.AvailabilityServiceStub(channel)
        fleet.UpsertTeam(availability.UpsertTeamRequest(
            request_id=str(uuid.uuid4()), team_id=team, display_name="Example team",
            region=region, capabilities=["clinician"]), timeout=DEADLINE)
        fleet.SetTeamStatus(availability.SetTeamStatusRequest(
            request_id=str(uuid.uuid4()), team_id=team,
            status=common_pb2.TEAM_STATUS_AVAILABLE), timeout=DEADLINE)
        fleet.ReportLocation(availability.ReportLocationRequest(
            team_id=team, location=HERE, recorded_at=now()), timeout=DEADLINE)
    with open_channel(os.environ["RELAY_ROUTING_ADDR"]) as dev_channel, \
            grpc.secure_channel(os.environ["RELAY_ROUTING_ADDR"], tls) as channel:
        assigned = routing_grpc.RoutingServiceStub(dev_channel).AssignTeam(routing.AssignTeamRequest(
            request_id=str(uuid.uuid4()), incident_id=incident_id, region=region, location=HERE,
            required_capabilities=["clinician"], priority=3, cad_system="example-cad",
            mode=common_pb2.ASSIGNMENT_MODE_AUTO_ASSIGN), timeout=DEADLINE)
        check(assigned.outcome == routing.ASSIGNMENT_OUTCOME_ASSIGNED
              and assigned.assignment.team_id == team, f"{team} assigned")
        device = issue(f"device-{team}", "--scope", "teams.report", "--team-id", team)
        restored = routing_grpc.RoutingServiceStub(channel).RestoreAssignment(
            routing.RestoreAssignmentRequest(
                request_id=str(uuid.uuid4()), incident_id=incident_id, team_id=team),
            timeout=DEADLINE, credentials=as_bearer(device))
        check(restored.assignment.assignment_id == assigned.assignment.assignment_id
              and restored.assignment.state == routing.ASSIGNMENT_STATE_ACTIVE,
              "RestoreAssignment from the team's device returns its ACTIVE assignment")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        print(f"FAIL: unexpected {error.code()}: {error.details()}", file=sys.stderr)
        sys.exit(1)
