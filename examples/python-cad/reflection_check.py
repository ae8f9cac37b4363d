#!/usr/bin/env python3
"""Checks that server reflection resolves the error detail types, as grpcurl needs them.

Without them a reflection client answers "symbol google.rpc.ErrorInfo not found" and shows a
failed call's details as bytes (issue 16). Exits 1 when a type is missing or incomplete.

    RELAY_INTAKE_ADDR=127.0.0.1:50051 RELAY_CA_FILE=... RELAY_TOKEN=... python reflection_check.py

Reflection needs a valid credential when the server asks for them (`relay dev` does).
"""

import os
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from relay_channel import open_channel

ADDR = os.environ.get("RELAY_INTAKE_ADDR", "127.0.0.1:50051")
EXPECTED_FIELDS = {
    "google.rpc.Status": {"code", "message", "details"},
    "google.rpc.ErrorInfo": {"reason", "domain", "metadata"},
    "google.rpc.BadRequest": {"field_violations"},
    "google.rpc.RetryInfo": {"retry_delay"},
}


with open_channel(ADDR) as channel:
    grpc.channel_ready_future(channel).result(timeout=5)
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    failed = "relay.intake.v1.IntakeService" not in services
    print(f"{'ok' if not failed else 'FAIL'}: reflection lists relay.intake.v1.IntakeService")
    for name, fields in EXPECTED_FIELDS.items():
        try:
            found = {f.name for f in pool.FindMessageTypeByName(name).fields}
        except (KeyError, grpc.RpcError) as error:  # NOT_FOUND: symbol not found
            print(f"FAIL: reflection does not resolve {name}: {error}", file=sys.stderr)
            failed = True
            continue
        ok = fields <= found
        failed |= not ok
        print(f"{'ok' if ok else 'FAIL'}: reflection resolves {name} with {sorted(fields)}")
sys.exit(1 if failed else 0)
