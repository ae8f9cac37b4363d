//! The in-process backend of [`TeamStore`] and [`DispatchStore`] for `relay dev` and tests: the
//! same semantics as the Redis backend, with one mutex for atomicity (every operation is one critical section, as
//! every Redis script is) and a `watch` channel to wake event readers.
//!
//! Proximity is a scan of the region's available set followed by the same exact ranking as
//! Redis ([`rank_candidates`]). A region holds tens to a few hundred teams, for which a scan is
//! as fast as an R-tree and has no index to keep in step.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use tokio::sync::broadcast;

use super::{
    ChangeError, Claim, ClaimError, DispatchStore, EventsError, FleetTeam, LocationOutcome,
    LocationReport, Nearest, Recorded, ReleaseError, ReleaseOutcome, RequestRecord, StoreError,
    TeamAvailable, TeamPage, TeamStore, UpsertOutcome, announce::Announcer, announces, busy_of,
    is_unavailable, on_duty_near, rank_candidates, rank_placed,
};
use crate::model::{
    EventId, EventKind, Position, Team, TeamDefinition, TeamEvent, TeamStatus, TeamSummary,
    allowed_from, is_busy, landing_status,
};

mod dispatch;
mod ops;
mod team_store;
#[cfg(feature = "testing")]
mod testing;

#[derive(Debug, Default)]
struct Region {
    teams: BTreeSet<String>,
    available: BTreeSet<String>,
    events: VecDeque<TeamEvent>,
    /// The newest event trimmed away (history before it is gone).
    max_deleted: Option<EventId>,
}

#[derive(Debug, Clone)]
struct Entry {
    team: Team,
    last_incident: String,
}

/// What a change under a request id did, as its record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Created,
    Changed,
    Same,
}

/// The idempotency record of a request: as the Redis store's, the team right after the change.
#[derive(Debug, Clone)]
struct RequestEntry {
    fingerprint: String,
    tag: Tag,
    team: Team,
}

/// The record of `request` when it exists: `Err` when it was made by another request (another
/// fingerprint). Expired records are dropped.
fn recall(state: &mut State, request: &RequestRecord<'_>) -> Option<Result<RequestEntry, ()>> {
    let now = Instant::now();
    state.requests.retain(|_, (_, expires)| *expires > now);
    let (entry, _) = state
        .requests
        .get(&format!("{}:{}", request.rpc, request.request_id))?;
    Some(if entry.fingerprint == request.fingerprint {
        Ok(entry.clone())
    } else {
        Err(())
    })
}

/// Writes the record of `request`, in the same critical section as its change.
fn remember(state: &mut State, request: &RequestRecord<'_>, tag: Tag, team: &Team) {
    state.requests.insert(
        format!("{}:{}", request.rpc, request.request_id),
        (
            RequestEntry {
                fingerprint: request.fingerprint.to_owned(),
                tag,
                team: team.clone(),
            },
            Instant::now() + request.ttl,
        ),
    );
}

#[derive(Debug, Default)]
struct State {
    teams: HashMap<String, Entry>,
    regions: HashMap<String, Region>,
    last_id: EventId,
    requests: HashMap<String, (RequestEntry, Instant)>,
    recommendations: HashMap<String, (Vec<u8>, DateTime<Utc>)>,
    epoch: Option<String>,
    region_epochs: HashMap<String, String>,
}

/// Team live state in this process.
#[derive(Debug)]
pub struct MemoryTeamStore {
    state: Mutex<State>,
    retention: Duration,
    notify: watch::Sender<u64>,
    announcer: Announcer,
}

fn poisoned() -> StoreError {
    StoreError::Corrupt(String::from("the in-process store's lock was poisoned"))
}

fn indexable(team: &Team) -> bool {
    team.status == TeamStatus::Available
        && team
            .location
            .is_some_and(|p| p.latitude.abs() <= super::MAX_INDEXED_LATITUDE)
}
