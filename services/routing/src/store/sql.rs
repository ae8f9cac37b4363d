//! The SQL both backends run, as constants: the same text on PostgreSQL and SQLite (sqlx
//! binds numbered `$n` parameters on SQLite too), and the tables of the event sequencer
//! ([`relay_runtime::sequencer`]). Each backend writes in its own way (its
//! [`Dialect`](super::Dialect)): PostgreSQL as one statement, SQLite statement by statement;
//! both append events as pending, and the sequencer numbers them gaplessly per region.

use relay_runtime::sequencer::{PendingRow, Tables};

/// The columns of an incident, in the order the PostgreSQL write binds them (a macro, so that
/// the statements below can be `concat!`ed constants).
macro_rules! incident_columns {
    () => {
        "incident_id, region, cad_system, priority, latitude, longitude, \
         required_capabilities, preferred_capabilities, expected_duration_seconds, state, \
         queued_time, escalate_time, unserved_reason, version, update_time, cad_incident_id"
    };
}

/// The columns of an assignment.
macro_rules! assignment_columns {
    () => {
        "assignment_id, incident_id, team_id, region, distance_meters, eta_seconds, \
         assigned_at, fencing_token, state, source, cad_system, end_time, end_reason, \
         end_cause, cad_incident_id"
    };
}

/// The columns of an incident.
pub(super) const INCIDENT_COLUMNS: &str = incident_columns!();

/// The columns of an assignment.
pub(super) const ASSIGNMENT_COLUMNS: &str = assignment_columns!();

/// One incident.
pub(super) const INCIDENT: &str = concat!(
    "SELECT ",
    incident_columns!(),
    " FROM incidents WHERE incident_id = $1"
);

/// One assignment.
pub(super) const ASSIGNMENT: &str = concat!(
    "SELECT ",
    assignment_columns!(),
    " FROM assignments WHERE assignment_id = $1"
);

/// The ACTIVE assignment of an incident.
pub(super) const ACTIVE_OF_INCIDENT: &str = concat!(
    "SELECT ",
    assignment_columns!(),
    " FROM assignments WHERE incident_id = $1 AND state = 'ACTIVE'"
);

/// The latest assignment of an incident, in whatever state.
pub(super) const LATEST_OF_INCIDENT: &str = concat!(
    "SELECT ",
    assignment_columns!(),
    " FROM assignments WHERE incident_id = $1 \
     ORDER BY assigned_at DESC, assignment_id DESC LIMIT 1"
);

/// The ACTIVE assignment of a team.
pub(super) const ACTIVE_OF_TEAM: &str = concat!(
    "SELECT ",
    assignment_columns!(),
    " FROM assignments WHERE team_id = $1 AND state = 'ACTIVE'"
);

/// The ACTIVE assignments of a region.
pub(super) const ACTIVE_OF_REGION: &str = concat!(
    "SELECT ",
    assignment_columns!(),
    " FROM assignments WHERE region = $1 AND state = 'ACTIVE' \
     ORDER BY assigned_at, assignment_id"
);

/// The first page of a region's queue.
pub(super) const QUEUE_FIRST: &str = concat!(
    "SELECT ",
    incident_columns!(),
    " FROM incidents WHERE region = $1 AND state = 'QUEUED' \
     ORDER BY priority, queued_time, incident_id LIMIT $2"
);

/// A page of a region's queue after a [`QueueCursor`](super::QueueCursor).
pub(super) const QUEUE_AFTER: &str = concat!(
    "SELECT ",
    incident_columns!(),
    " FROM incidents WHERE region = $1 AND state = 'QUEUED' \
     AND (priority, queued_time, incident_id) > ($2, $3, $4) \
     ORDER BY priority, queued_time, incident_id LIMIT $5"
);

/// Queued incidents due for escalation.
pub(super) const DUE_ESCALATIONS: &str = concat!(
    "SELECT ",
    incident_columns!(),
    " FROM incidents WHERE state = 'QUEUED' AND escalate_time <= $1 \
     ORDER BY escalate_time, incident_id LIMIT $2"
);

/// Regions with a queued incident, an ACTIVE assignment, or any event.
pub(super) const REGIONS: &str = "SELECT region FROM region_counters \
     UNION SELECT region FROM incidents WHERE state = 'QUEUED' \
     UNION SELECT region FROM assignments WHERE state = 'ACTIVE' ORDER BY 1";

/// A remembered response.
pub(super) const REQUEST: &str = "SELECT fingerprint, response FROM requests WHERE request_id = $1";

/// Numbered events of a region after a sequence number.
pub(super) const EVENTS_AFTER: &str =
    "SELECT seq, payload FROM events WHERE region = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// The last sequence number given in a region.
pub(super) const LAST_SEQUENCE: &str = "SELECT last_seq FROM region_counters WHERE region = $1";

/// The oldest retained sequence number of a region.
pub(super) const FIRST_SEQUENCE: &str = "SELECT MIN(seq) FROM events WHERE region = $1";

/// How many events wait for their number.
pub(super) const PENDING_COUNT: &str = "SELECT COUNT(*) FROM pending_events";

/// The oldest event waiting for its number.
pub(super) const PENDING_OLDEST: &str =
    "SELECT payload FROM pending_events ORDER BY pending_id LIMIT 1";

/// Whether any event waits for its number.
pub(super) const ANY_PENDING: &str = "SELECT EXISTS (SELECT 1 FROM pending_events)";

/// Forgets events older than `$1`.
pub(super) const PRUNE_EVENTS: &str = "DELETE FROM events WHERE event_time < $1";

/// Forgets remembered responses older than `$1`.
pub(super) const PRUNE_REQUESTS: &str = "DELETE FROM requests WHERE create_time < $1";

/// The tables of routing's sequencer: pending assignment events, streamed per region.
pub(super) const SEQUENCER_TABLES: Tables<'static> = Tables {
    pending: "pending_events",
    key: "region",
    columns: "pending_id, region, payload",
    counters: "region_counters",
    last: "last_seq",
};

/// How many pending events one sequencer transaction moves.
pub(super) const SEQUENCER_BATCH: i64 = 1000;

/// A pending event as the sequencer takes it: the `AssignmentEvent` (prost, `event_id`
/// empty) of a region.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub(super) pending_id: i64,
    pub(super) region: String,
    pub(super) payload: Vec<u8>,
}

impl PendingRow for PendingEvent {
    fn pending_id(&self) -> i64 {
        self.pending_id
    }

    fn stream_key(&self) -> &str {
        &self.region
    }
}
