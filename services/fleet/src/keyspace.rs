//! The Redis keyspace of the teams' live state, shared by availability and routing.
//!
//! Every key of one region carries the hash tag `{region}`, so on a Redis Cluster all keys of a
//! region live in one slot and every Lua script touches one slot. The prefix is configurable
//! (`availability.key_prefix` and `routing.key_prefix`, default `relay`, which must be equal);
//! tests use a unique prefix.
//!
//! The rule that keeps this true on a cluster: a script touches only the keys it is given in
//! `KEYS`, all of one region (scripts.rs tests it; the conformance suite runs on a real
//! cluster, which refuses a script across slots with CROSSSLOT). The two keys outside a region
//! (`team_regions`, `live_epoch`, `recommendation:*`) are read and written by single-key commands only, never inside a
//! script; a new global key a script needs (an epoch, a counter) must be one per region.
//!
//! | key | type | fields / members | written by |
//! |---|---|---|---|
//! | `<p>:{<region>}:team:<team_id>` | hash | `id`, `name`, `region`, `caps` (comma-joined sorted tags), `status` (TeamStatus number), `lat`, `lon` (degrees, empty until a position), `loc_at` (µs since epoch of the position's `recorded_at`), `hdg`, `spd`, `acc` (optional, empty when unknown), `incident` (empty unless busy), `last_incident` (the incident the team last left), `shift_end` (µs, empty when unknown), `rev` (revision), `fence` (fencing counter: increased by each claim, never decreased, kept across roster upserts), `created`, `updated` (µs) | availability scripts (upsert, status, location, move); routing through [`crate::DispatchStore::claim`] and [`crate::DispatchStore::release`] |
//! | `<p>:{<region>}:available` | GEO (sorted set) | exactly the teams of the region that are `AVAILABLE` and have a position | the same scripts, in the same step as the hash |
//! | `<p>:{<region>}:unavailable` | GEO (sorted set) | exactly the teams of the region that are on duty but not `AVAILABLE` (busy or out of service) and have a position: what routing lists beside the nearest available teams, to say why each nearer team lost | the same scripts, in the same step as the hash (a team busy or out of service when this set was introduced joins it at its next status change or position report) |
//! | `<p>:{<region>}:teams` | set | every team id of the region | upsert and move scripts |
//! | `<p>:{<region>}:events` | stream | one entry per change: `kind` (`upserted`, `status`, `location`, `removed`), `at` (µs), then every field of the team hash after the change; trimmed by age (`MINID`) to the retention window | every script that changes a team |
//! | `<p>:team_regions` | hash | team id → region (the only key outside a region: it finds a team's region from its id) | upsert and move |
//! | `<p>:live_epoch` | string | a random id written once the live state was built from the roster; its absence means Redis lost the live state (issue 18), which availability detects and rebuilds | availability's loss watch ([`crate::live_state`]) |
//! | `<p>:{<region>}:live_epoch` | string | the keyspace's epoch, stamped in each region the roster has once its teams were built: its absence in a region this replica saw stamped means that region's keys were lost (a Redis Cluster primary failing over to a replica without them) though the keyspace's epoch, elsewhere, survived | availability's loss watch ([`crate::live_state`]) |
//! | `<p>:{<region>}:req:<rpc>:<request_id>` | hash | `~fp` (the request's fingerprint), `~tag` (what the change did: `created`, `updated`, `same`, `ok`), then every field of the team hash after the change; expires after 24 h. In the team's region, so that the script making the change writes it in the same step (and a retry finds it there and replays) | the upsert, move-in and status scripts, for availability's UpsertTeam and SetTeamStatus (idempotency) |
//! | `<p>:recommendation:<incident_id>` | string | the encoded `AssignTeamRequest` of an incident routing only recommended a team for, expires after an hour: ConfirmAssignment and CancelRouting on any replica find the incident there | routing ([`crate::DispatchStore::remember_recommendation`]) |

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "relay";

/// Key names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Default for Keyspace {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keyspace {
    /// Keys under `prefix` (no trailing colon).
    #[must_use]
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<p>:{<region>}`: the start of every key of a region.
    #[must_use]
    pub fn region_prefix(&self, region: &str) -> String {
        format!("{}:{{{region}}}", self.prefix)
    }

    /// The hash of one team.
    #[must_use]
    pub fn team(&self, region: &str, team_id: &str) -> String {
        format!("{}:team:{team_id}", self.region_prefix(region))
    }

    /// The GEO set of the region's available teams with a position.
    #[must_use]
    pub fn available(&self, region: &str) -> String {
        format!("{}:available", self.region_prefix(region))
    }

    /// The GEO set of the region's on-duty teams that are not available, with a position.
    #[must_use]
    pub fn unavailable(&self, region: &str) -> String {
        format!("{}:unavailable", self.region_prefix(region))
    }

    /// The set of the region's team ids.
    #[must_use]
    pub fn teams(&self, region: &str) -> String {
        format!("{}:teams", self.region_prefix(region))
    }

    /// The region's event stream.
    #[must_use]
    pub fn events(&self, region: &str) -> String {
        format!("{}:events", self.region_prefix(region))
    }

    /// The index from team id to region.
    #[must_use]
    pub fn team_regions(&self) -> String {
        format!("{}:team_regions", self.prefix)
    }

    /// The live-state epoch (outside any region: one per keyspace).
    #[must_use]
    pub fn live_epoch(&self) -> String {
        format!("{}:live_epoch", self.prefix)
    }

    /// The live-state epoch stamped in one region, so that the loss of one region's keys
    /// alone (on a Redis Cluster, its primary failing over to a replica without them) is seen
    /// even when the keyspace's own epoch, on another primary, survived.
    #[must_use]
    pub fn region_epoch(&self, region: &str) -> String {
        format!("{}:live_epoch", self.region_prefix(region))
    }

    /// The idempotency record of a request that changes a team of `region`.
    #[must_use]
    pub fn request(&self, region: &str, rpc: &str, request_id: &str) -> String {
        format!("{}:req:{rpc}:{request_id}", self.region_prefix(region))
    }

    /// The remembered request of an incident routing only recommended a team for: a key
    /// family of its own, apart from availability's idempotency records.
    #[must_use]
    pub fn recommendation(&self, incident_id: &str) -> String {
        format!("{}:recommendation:{incident_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_keys_share_one_hash_tag() {
        let keys = Keyspace::default();
        assert_eq!(keys.team("north", "t1"), "relay:{north}:team:t1");
        assert_eq!(keys.available("north"), "relay:{north}:available");
        assert_eq!(keys.unavailable("north"), "relay:{north}:unavailable");
        assert_eq!(keys.teams("north"), "relay:{north}:teams");
        assert_eq!(keys.events("north"), "relay:{north}:events");
        let custom = Keyspace::new("test_1");
        assert_eq!(custom.team_regions(), "test_1:team_regions");
        assert_eq!(
            custom.request("north", "upsert", "r1"),
            "test_1:{north}:req:upsert:r1"
        );
        assert_eq!(custom.recommendation("i1"), "test_1:recommendation:i1");
    }
}
