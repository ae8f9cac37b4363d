//! The tamper-evident audit trail: who did what, to which resources, with what outcome.
//!
//! Every service keeps its own trail in its own schema: a table `audit_log` of
//! [`AuditEntry`]s and a one-row `audit_head` (the last sequence and hash, and the anchor
//! pruning left). Each entry carries the hash of the one before it, so editing, deleting,
//! inserting or reordering a row breaks the chain where it happened ([`verify`]).
//!
//! - A write appends its record **in the transaction of the change**
//!   ([`AuditLog::append`], the last statement before the commit): no change without its
//!   record, and no record of a change that rolled back.
//! - A read of caller details, a refusal or a failed write has no change to join: it is
//!   appended alone ([`AuditLog::append_alone`], [`AuditSink`]), by the handler before it
//!   answers (reads) or by [`layer::AuditLayer`] through a bounded queue (refusals).
//! - [`AuditLog::prune`] forgets records older than the retention
//!   ([`settings::AuditSettings`]) and keeps the chain verifiable from an anchor.
//!
//! A record never holds a credential or a caller's personal data: only the principal's
//! subject, the RPC, resource ids (`incident:<id>`), the gRPC outcome and reason, the request
//! and trace ids, and the peer's address.

pub mod layer;
pub mod settings;
mod sink;
mod store;
mod verify;

pub use sink::AuditSink;
pub use store::{AuditLog, Head, PruneOutcome, genesis_head};
pub use verify::{Finding, FindingKind, Verified, Verifier, verify};

use sha2::{Digest, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::security::auth::{CredentialKind, Principal};

/// The `prev_hash` of the first record of a chain: 32 zero bytes, in hex.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The ids of a call, put in the request's extensions by
/// [`crate::layers::RequestContextLayer`]: what an audit record names it by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallIds {
    /// The `x-request-id` the caller sent, or the one the server made.
    pub request_id: String,
    /// The W3C trace id (32 hex digits), empty when there is none.
    pub trace_id: String,
}

/// What one audit record says (the chain's seq and hashes are added as it is appended).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// When (micros since the Unix epoch, wall clock).
    pub time: i64,
    /// The principal's subject; `anonymous` when the call had none.
    pub principal: String,
    /// How the principal proved itself: `token`, `certificate`, `development` or `none`.
    pub credential: String,
    /// The full gRPC method (`/relay.intake.v1.IntakeService/SubmitIncident`), or an
    /// `audit.*` event of the trail itself.
    pub rpc: String,
    /// The resources touched (`incident:<id>`, `team:<id>`): ids only, never personal data.
    pub resources: Vec<String>,
    /// The gRPC code name of the answer (`OK`, `PERMISSION_DENIED`).
    pub outcome: String,
    /// The `google.rpc.ErrorInfo` reason of a refusal, else empty.
    pub reason: String,
    /// The call's request id.
    pub request_id: String,
    /// The call's trace id.
    pub trace_id: String,
    /// The caller's address (`ip:port`), empty when unknown.
    pub peer: String,
}

/// A record as the chain holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Its place in the chain, from 1, gapless.
    pub seq: i64,
    /// What it says.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The hash of the record before it ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and the record's canonical encoding with `seq`, in hex.
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry's content should carry.
    #[must_use]
    pub fn expected_hash(&self) -> String {
        chain_hash(&self.prev_hash, self.seq, &self.record)
    }
}

/// The code name of a gRPC code, as records and metrics spell it (`PERMISSION_DENIED`).
#[must_use]
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The name a record gives a credential kind.
#[must_use]
pub fn credential_name(kind: Option<CredentialKind>) -> &'static str {
    match kind {
        Some(CredentialKind::Token) => "token",
        Some(CredentialKind::Certificate) => "certificate",
        Some(CredentialKind::Development) => "development",
        None => "none",
    }
}

/// The caller's address, from the connection info tonic puts in the extensions.
#[must_use]
pub fn peer_of(extensions: &http::Extensions) -> String {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
        .or_else(|| {
            extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
        })
        .map(|addr| addr.to_string())
        .unwrap_or_default()
}

/// Now, in micros since the Unix epoch (the wall clock: an audit trail tells real time even
/// when a development setup simulates the service's clock).
#[must_use]
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl AuditRecord {
    /// The record of a call from what its extensions hold (principal, ids, peer), with
    /// outcome `OK`: the handler names the RPC's resources and sets the outcome if it refuses.
    #[must_use]
    pub fn of_extensions(extensions: &http::Extensions, rpc: &str, resources: Vec<String>) -> Self {
        let principal = extensions.get::<Principal>();
        let ids = extensions.get::<CallIds>().cloned().unwrap_or_default();
        Self {
            time: now_micros(),
            principal: principal.map_or_else(|| "anonymous".to_owned(), |p| p.subject.clone()),
            credential: credential_name(principal.map(|p| p.kind)).to_owned(),
            rpc: rpc.to_owned(),
            resources,
            outcome: code_name(tonic::Code::Ok).to_owned(),
            reason: String::new(),
            request_id: ids.request_id,
            trace_id: ids.trace_id,
            peer: peer_of(extensions),
        }
    }

    /// [`Self::of_extensions`] of a tonic request.
    #[must_use]
    pub fn of_call<T>(request: &tonic::Request<T>, rpc: &str, resources: Vec<String>) -> Self {
        Self::of_extensions(request.extensions(), rpc, resources)
    }

    /// A record the trail writes about itself (`audit.pruned`, `audit.dropped`).
    #[must_use]
    pub fn of_trail(event: &str, reason: String) -> Self {
        Self {
            time: now_micros(),
            principal: "relay".to_owned(),
            credential: credential_name(None).to_owned(),
            rpc: event.to_owned(),
            outcome: code_name(tonic::Code::Ok).to_owned(),
            reason,
            ..Self::default()
        }
    }

    /// This record with the outcome of `status`: its code name and ErrorInfo reason.
    #[must_use]
    pub fn with_status(mut self, status: &tonic::Status) -> Self {
        self.outcome = code_name(status.code()).to_owned();
        self.reason = reason_of(status);
        self
    }

    /// The canonical encoding hashed into the chain: `seq`, `time`, then each text field
    /// (and each resource, after their count) as a big-endian u64 length and its bytes.
    #[must_use]
    pub fn canonical(&self, seq: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.time.to_be_bytes());
        let mut text = |value: &str| {
            out.extend_from_slice(&(value.len() as u64).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        };
        text(&self.principal);
        text(&self.credential);
        text(&self.rpc);
        text(&self.outcome);
        text(&self.reason);
        text(&self.request_id);
        text(&self.trace_id);
        text(&self.peer);
        out.extend_from_slice(&(self.resources.len() as u64).to_be_bytes());
        for resource in &self.resources {
            out.extend_from_slice(&(resource.len() as u64).to_be_bytes());
            out.extend_from_slice(resource.as_bytes());
        }
        out
    }
}

/// The `google.rpc.ErrorInfo` reason a status carries, else empty.
#[must_use]
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// SHA-256 of `prev_hash` (its text) and the canonical encoding of `record` at `seq`, in hex.
#[must_use]
pub fn chain_hash(prev_hash: &str, seq: i64, record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(record.canonical(seq));
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            time: 5,
            principal: "cad-a".into(),
            credential: "token".into(),
            rpc: "/relay.intake.v1.IntakeService/SubmitIncident".into(),
            resources: vec!["incident:1".into()],
            outcome: "OK".into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn the_hash_covers_every_field_the_seq_and_the_previous_hash() {
        let base = chain_hash(GENESIS, 1, &record());
        assert_eq!(base.len(), 64);
        assert_eq!(base, chain_hash(GENESIS, 1, &record()));
        assert_ne!(base, chain_hash(GENESIS, 2, &record()));
        assert_ne!(base, chain_hash(&base, 1, &record()));
        let changes: [fn(&mut AuditRecord); 5] = [
            |r| r.time += 1,
            |r| r.principal.push('x'),
            |r| r.resources.push(String::new()),
            |r| r.outcome = "INTERNAL".into(),
            |r| r.peer = "1.2.3.4:5".into(),
        ];
        for change in changes {
            let mut other = record();
            change(&mut other);
            assert_ne!(base, chain_hash(GENESIS, 1, &other));
        }
        // Lengths are encoded: moving a byte from one field to the next changes the hash.
        let mut split = record();
        split.principal = "cad-".into();
        split.credential = "atoken".into();
        assert_ne!(base, chain_hash(GENESIS, 1, &split));
    }
}
