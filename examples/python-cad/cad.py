#!/usr/bin/env python3
"""A small CAD adapter for Relay's IntakeService, in Python.

It submits an incident, watches the CAD's event stream, drops the stream and resumes it from
the last sequence it processed, reads the error details of a bad submission, and closes the
incident. It checks every answer against the contract in
proto/relay/intake/v1/intake_service.proto and exits 1 at the first one that is wrong.

    RELAY_INTAKE_ADDR=127.0.0.1:50051 RELAY_CA_FILE=... RELAY_TOKEN=... \
        PYTHONPATH=target/stubs/python python cad.py

RELAY_CA_FILE and RELAY_TOKEN are the lines `relay dev` prints (TLS and a bearer token).
"""

import os
import sys
import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from relay_channel import error_details, open_channel
from relay.common.v1 import common_pb2
from relay.intake.v1 import intake_service_pb2 as intake
from relay.intake.v1 import intake_service_pb2_grpc as intake_grpc

ADDR = os.environ.get("RELAY_INTAKE_ADDR", "127.0.0.1:50051")
DEADLINE = 5.0  # seconds; every unary call has one
WATCH_DEADLINE = 30.0  # seconds; bounds each stream in this example
Kind = intake.IncidentEventKind


def check(ok, what):
    if not ok:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def watch(stub, cad_system, after_sequence, until):
    """Reads the CAD's stream from after_sequence until until(event) holds, then hangs up.

    Returns the events read and the last sequence processed, the position to resume from.
    """
    request = intake.WatchIncidentEventsRequest(
        cad_system=cad_system, after_sequence=after_sequence
    )
    call = stub.WatchIncidentEvents(request, timeout=WATCH_DEADLINE)
    events, last = [], after_sequence
    try:
        first = next(call)
        check(first.WhichOneof("kind") == "heartbeat", "a stream opens with a Heartbeat")
        check(
            first.heartbeat.last_sequence >= after_sequence,
            f"heartbeat last_sequence {first.heartbeat.last_sequence} >= {after_sequence}",
        )
        for message in call:
            if message.WhichOneof("kind") != "event":
                continue  # a heartbeat: the stream is alive, nothing happened
            event = message.event
            if event.sequence <= last:
                continue  # the last event again after a resume: apply events idempotently
            check(event.sequence == last + 1, f"sequence {event.sequence} follows {last}")
            last = event.sequence
            events.append(event)
            if until(event):
                return events, last
    finally:
        call.cancel()  # hang up: the server sees CANCELLED and frees the stream
    check(False, "the stream ended before the expected event")


def submit_request(cad_system, cad_incident_id, **fields):
    received_at = Timestamp()
    received_at.GetCurrentTime()
    return intake.SubmitIncidentRequest(
        cad_system=cad_system,
        cad_incident_id=cad_incident_id,
        region="example-region",
        received_at=received_at,
        **fields,
    )


def main():
    # A cad_system of its own, so each run starts a fresh stream at sequence 1.
    cad_system = f"example-py-{uuid.uuid4().hex[:12]}"
    with open_channel(ADDR) as channel:
        grpc.channel_ready_future(channel).result(timeout=DEADLINE)
        stub = intake_grpc.IntakeServiceStub(channel)

        # 1. Submit. The key is (cad_system, cad_incident_id): resending after a lost
        # response or a DEADLINE_EXCEEDED returns the stored incident, created = false.
        request = submit_request(
            cad_system,
            "PY-0001",
            incident_type="WELFARE",
            priority=3,
            location=common_pb2.GeoPoint(latitude=44.0521, longitude=-123.0868),
            address="1234 Main St, Eugene OR",
        )
        submitted = stub.SubmitIncident(request, timeout=DEADLINE)
        incident_id = submitted.incident.incident_id
        check(submitted.created and incident_id, f"incident {incident_id} created")
        again = stub.SubmitIncident(request, timeout=DEADLINE)
        check(
            not again.created and again.incident.incident_id == incident_id,
            "resubmitting the same cad_incident_id returns the same incident",
        )

        # 2. Watch from the start until the incident is triaged, then drop the stream.
        events, last = watch(
            stub,
            cad_system,
            0,
            lambda e: e.incident_id == incident_id and e.kind == Kind.INCIDENT_EVENT_KIND_TRIAGED,
        )
        kinds = [Kind.Name(e.kind) for e in events]
        check(
            kinds[:2] == ["INCIDENT_EVENT_KIND_RECEIVED", "INCIDENT_EVENT_KIND_TRIAGED"],
            f"RECEIVED then TRIAGED (got {kinds})",
        )

        # 3. While disconnected: a bad submission. Priority is 1..5 and location is required.
        bad = submit_request(cad_system, "PY-BAD", incident_type="WELFARE", priority=9)
        try:
            stub.SubmitIncident(bad, timeout=DEADLINE)
            check(False, "a bad submission is rejected")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{error.code()} is INVALID_ARGUMENT")
            details = error_details(error)
            info, bad_request = details.get("ErrorInfo"), details.get("BadRequest")
            check(info is not None and bad_request is not None, "ErrorInfo and BadRequest present")
            check(
                (info.reason, info.domain) == ("INVALID_FIELD", "relay.intake.v1"),
                f"ErrorInfo {info.reason} in {info.domain}",
            )
            fields = {v.field for v in bad_request.field_violations}
            for v in bad_request.field_violations:
                print(f"    {v.field}: {v.description}")
            check({"priority", "location"} <= fields, f"violations name priority and location ({sorted(fields)})")

        # 4. Still disconnected: close the incident. Mutations carry a request_id, so a
        # retry with the same one (after a timeout, say) returns the first answer.
        close = intake.CloseIncidentRequest(
            request_id=str(uuid.uuid4()),
            incident_id=incident_id,
            outcome=intake.CLOSE_OUTCOME_RESOLVED_ON_SCENE,
            notes="resolved on scene by the example",
        )
        closed = stub.CloseIncident(close, timeout=DEADLINE)
        check(closed.incident.state == intake.INCIDENT_STATE_CLOSED, "incident closed")
        retried = stub.CloseIncident(close, timeout=DEADLINE)
        check(retried.incident.revision == closed.incident.revision, "retried close changes nothing")

        # 5. Resume after the last sequence processed: nothing is missed, CLOSED arrives.
        events, last = watch(
            stub,
            cad_system,
            last,
            lambda e: e.incident_id == incident_id and e.kind == Kind.INCIDENT_EVENT_KIND_CLOSED,
        )
        check(
            all(e.cad_incident_id == "PY-0001" for e in events),
            "the rejected submission left no event",
        )
        print(f"python-cad: done, resumed to sequence {last}")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        print(f"FAIL: unexpected {error.code()}: {error.details()}", file=sys.stderr)
        sys.exit(1)
