//! The teams' live state, shared by availability and routing: who is where, in what status,
//! working which incident, and the atomic claim that makes a team DISPATCHED on one incident.
//!
//! Availability serves the live state and routing dispatches from it; both run on the same
//! keys, so both use this one crate rather than one service reaching into the other:
//!
//! - [`keyspace`] names every Redis key (one hash tag per region);
//! - [`model`] holds the team, its status rules ([`model::is_busy`],
//!   [`model::allowed_from`], [`model::landing_status`]) and events, with the geometry of
//!   `relay_runtime::geo`;
//! - [`store`] holds the two traits, [`TeamStore`] (the live state availability serves:
//!   upserts, statuses, positions, queries, events) and [`DispatchStore`] (what routing needs:
//!   nearest teams, claim, release, recommendations, announcements of freed teams), both
//!   implemented by [`RedisTeamStore`] (the Lua scripts of `store/scripts.rs`) and by its
//!   in-process twin [`MemoryTeamStore`] (`relay dev` and tests);
//! - [`live_state`] detects that Redis lost the live state (its epoch) and rebuilds it.
//!
//! With the `testing` feature, [`conformance`] is the suite every store passes.

pub mod keyspace;
pub mod live_state;
pub mod model;
pub mod store;

#[cfg(feature = "testing")]
pub mod conformance;

pub use keyspace::Keyspace;
pub use store::{
    ChangeError, Claim, ClaimError, DispatchStore, EventsError, FleetStore, FleetTeam,
    LocationOutcome, LocationReport, MemoryTeamStore, Nearest, Recorded, RedisTeamStore,
    ReleaseError, ReleaseOutcome, RequestRecord, StoreError, TeamAvailable, TeamPage, TeamStore,
    UpsertOutcome,
};
