"""The channel both examples open: TLS and a bearer token when RELAY_CA_FILE is set.

`relay dev` serves TLS with a local CA and asks every caller for a bearer token; it prints
both as `export RELAY_CA_FILE=...` and `export RELAY_TOKEN=...`. Without RELAY_CA_FILE the
channel is plaintext (`relay dev --insecure`).
"""

import os

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# The google.rpc details Relay puts in a refusal's grpc-status-details-bin trailer.
DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
)


def open_channel(addr):
    """A channel to addr: TLS trusting RELAY_CA_FILE, with RELAY_TOKEN as
    `authorization: Bearer` on every call; plaintext when RELAY_CA_FILE is unset."""
    ca_file = os.environ.get("RELAY_CA_FILE")
    token = os.environ.get("RELAY_TOKEN")
    if not ca_file:
        return grpc.insecure_channel(addr)
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(addr, credentials)


def error_details(error):
    """The google.rpc details of a failed call (ErrorInfo, BadRequest, RetryInfo), decoded
    from its grpc-status-details-bin trailer, by type name; empty without the trailer."""
    status = rpc_status.from_call(error)  # None when the trailer is absent
    found = {}
    for detail in status.details if status else []:
        for kind in DETAIL_TYPES:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found
