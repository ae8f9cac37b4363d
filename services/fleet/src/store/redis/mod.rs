//! The Redis backend of [`TeamStore`] and [`DispatchStore`]: the keyspace of
//! [`crate::keyspace`], changed only by the Lua scripts of [`scripts`](self) (loaded once,
//! called by SHA, reloaded on `NOSCRIPT`).
//!
//! Round trips of routing's reads: `nearest_available` is two (a `GEOSEARCH ... COUNT` of the
//! region's AVAILABLE set, then the found teams' hashes in one pipeline); `nearest_unavailable`
//! is one or two (the same on the region's set of on-duty teams that are not available; no
//! pipeline when it finds none); `teams_near` and `busy_teams` page through the region's teams
//! (one `SMEMBERS`-and-hashes read per 500 teams); `claim` and `release` are one script call
//! each. Announcements of freed teams come from each region's event stream
//! ([`DispatchStore::subscribe`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script, Value, streams::StreamReadReply};
use relay_runtime::redis_link::{RedisConnection, RedisTarget};

use tokio::sync::broadcast;

use super::{
    ChangeError, Claim, ClaimError, DispatchStore, EventsError, FleetTeam, LocationOutcome,
    LocationReport, Nearest, Recorded, ReleaseError, ReleaseOutcome, RequestRecord, StoreError,
    TeamAvailable, TeamPage, TeamStore, UpsertOutcome,
    announce::{Announcer, EventSource},
    busy_of, is_unavailable, on_duty_near, rank_candidates, rank_placed, region_teams, scripts,
};
use crate::{
    keyspace::Keyspace,
    model::{
        EventId, EventKind, Position, Team, TeamDefinition, TeamEvent, TeamStatus, TeamSummary,
        allowed_from, from_micros, to_micros,
    },
};

mod codec;
pub use codec::*;
mod events;
use events::*;
mod dispatch;
mod ops;
mod team_store;

/// Reports sent to Redis together (one location script call per region) by
/// [`TeamStore::report_locations`].
const LOCATION_BATCH: usize = 256;
/// Extra search radius for the GEO index query, covering its quantization; the exact
/// distance filter runs afterwards.
const GEO_MARGIN_METERS: f64 = 5.0;
/// The radius a nearest-teams search starts with (then four times wider each round).
const FIRST_REACH_METERS: f64 = 2_000.0;

struct Scripts {
    upsert: Script,
    seed: Script,
    move_out: Script,
    undo_create: Script,
    move_in: Script,
    set_status: Script,
    report_locations: Script,
    claim: Script,
    release: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{}{body}", scripts::PRELUDE))
}

/// Team live state in Redis.
pub struct RedisTeamStore {
    connection: RedisConnection,
    events: Events,
    keys: Keyspace,
    scripts: Scripts,
    retention: Duration,
    regions: RwLock<HashMap<String, String>>,
    announcer: Announcer,
}

impl std::fmt::Debug for RedisTeamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTeamStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
