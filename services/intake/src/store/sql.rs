//! The SQL both backends run, as constants: the same text on PostgreSQL and SQLite
//! (numbered `$n` parameters, `ON CONFLICT`, `RETURNING`, integer micros for times).

use relay_runtime::{idempotency::RequestLog, sequencer::Tables};

#[cfg(doc)]
use super::{
    Consumed, IncidentRow, ListFilter, Observation, OutboxItem, Stamped, event_of,
    incident_arguments, observation_of, outbox_of, pending_body,
};

/// The insert of a new incident, parameters in the order of [`incident_arguments`]; a
/// `(cad_system, cad_incident_id)` that exists already writes nothing.
pub(crate) const INSERT_INCIDENT: &str = "INSERT INTO incidents (incident_id, cad_system, \
     cad_incident_id, region, state, disposition, received_at, revision, body, \
     override_disposition, team_status, narrative, caller, notes, close_notes, team_id, \
     routing_state, unserved_reason) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
     ON CONFLICT (cad_system, cad_incident_id) DO NOTHING";

/// The update of an incident at the revision read, parameters in the order of
/// [`incident_arguments`]. The personal columns of a purged incident stay empty.
pub(crate) const UPDATE_INCIDENT: &str = "UPDATE incidents SET region = $3, state = $4, \
     disposition = $5, received_at = $6, revision = $7, body = $8, override_disposition = $9, \
     team_status = $10, narrative = CASE WHEN purged_at IS NULL THEN $11 ELSE '' END, \
     caller = CASE WHEN purged_at IS NULL THEN $12 ELSE NULL END, \
     notes = CASE WHEN purged_at IS NULL THEN $13 ELSE NULL END, \
     close_notes = CASE WHEN purged_at IS NULL THEN $14 ELSE '' END, team_id = $15, \
     routing_state = $16, unserved_reason = $17 \
     WHERE incident_id = $1 AND revision = $2";

/// One incident ([`IncidentRow`]) by Relay id.
pub(crate) const GET_INCIDENT: &str = "SELECT body, narrative, caller, notes, close_notes, \
     override_disposition, team_status FROM incidents WHERE incident_id = $1";

/// One incident ([`IncidentRow`]) by the CAD's id.
pub(crate) const GET_BY_CAD: &str = "SELECT body, narrative, caller, notes, close_notes, \
     override_disposition, team_status FROM incidents \
     WHERE cad_system = $1 AND cad_incident_id = $2";

/// Incidents ([`IncidentRow`]) matching a [`ListFilter`], bound in the order of its fields
/// (see the backends' `list_incidents`).
pub(crate) const LIST_INCIDENTS: &str = "SELECT body, narrative, caller, notes, close_notes, \
     override_disposition, team_status FROM incidents WHERE \
     ($1 = '' OR cad_system = $1) AND ($2 = '' OR region = $2) \
     AND ($3 = 0 OR state = $3) AND ($4 = 0 OR disposition = $4) \
     AND ($5 IS NULL OR received_at >= $5) AND ($6 IS NULL OR received_at < $6) \
     AND ($7 IS NULL OR received_at < $7 OR (received_at = $7 AND incident_id < $8)) \
     AND ($10 = 0 OR routing_state = $10) AND ($11 = 0 OR unserved_reason = $11) \
     ORDER BY received_at DESC, incident_id DESC LIMIT $9";

/// The open incident ([`IncidentRow`]) whose assigned team `$1` reported a status.
pub(crate) const INCIDENT_FOR_TEAM: &str = "SELECT body, narrative, caller, notes, close_notes, \
     override_disposition, team_status FROM incidents \
     WHERE state = 1 AND team_id = $1 AND team_status <> 0 ORDER BY received_at DESC LIMIT 1";

/// Incidents ([`IncidentRow`]) whose routing shows team `$1` in routing state `$2`.
pub(crate) const ASSIGNED_TO_TEAM: &str = "SELECT body, narrative, caller, notes, close_notes, \
     override_disposition, team_status FROM incidents \
     WHERE team_id = $1 AND routing_state = $2 ORDER BY received_at DESC, incident_id DESC";

/// The kept team statuses of an incident ([`observation_of`]).
pub(crate) const OBSERVATIONS: &str = "SELECT incident_id, team_id, event_id, status, \
     source_time, record_time FROM team_observations WHERE incident_id = $1 \
     ORDER BY record_time, event_id";

/// Keeps a team status ([`Observation`] fields in order).
pub(crate) const INSERT_OBSERVATION: &str = "INSERT INTO team_observations (incident_id, \
     team_id, event_id, status, source_time, record_time) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (incident_id, team_id, event_id) DO NOTHING";

/// Deletes a kept team status that a change applied.
pub(crate) const DELETE_OBSERVATION: &str =
    "DELETE FROM team_observations WHERE incident_id = $1 AND team_id = $2 AND event_id = $3";

/// Adds an outbox row ([`OutboxItem`] fields in order, then the creation time).
pub(crate) const INSERT_OUTBOX: &str = "INSERT INTO outbox (outbox_id, incident_id, kind, \
     payload, attempts, next_attempt_at, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Settles an outbox row, unless it is settled already.
pub(crate) const SETTLE_OUTBOX: &str =
    "UPDATE outbox SET delivered_at = $2 WHERE outbox_id = $1 AND delivered_at IS NULL";

/// Leases up to `$3` due rows ([`outbox_of`]) until `$2`, the first undelivered row of each
/// incident only, so one incident's requests reach routing in order.
pub(crate) const CLAIM_OUTBOX: &str = "UPDATE outbox SET attempts = attempts + 1, \
     next_attempt_at = $2 WHERE outbox_id IN \
     (SELECT outbox_id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
      AND NOT EXISTS (SELECT 1 FROM outbox earlier WHERE earlier.incident_id = outbox.incident_id \
      AND earlier.delivered_at IS NULL AND earlier.outbox_id < outbox.outbox_id) \
      ORDER BY next_attempt_at LIMIT $3) \
     AND delivered_at IS NULL AND next_attempt_at <= $1 \
     RETURNING outbox_id, incident_id, kind, payload, attempts, next_attempt_at";

/// Schedules the next attempt of an undelivered row.
pub(crate) const RESCHEDULE_OUTBOX: &str = "UPDATE outbox SET next_attempt_at = $2, \
     last_error = $3 WHERE outbox_id = $1 AND delivered_at IS NULL";

/// Undelivered rows: how many, and the earliest creation time.
pub(crate) const OUTBOX_BACKLOG: &str =
    "SELECT COUNT(*), MIN(create_time) FROM outbox WHERE delivered_at IS NULL";

/// The head of the insert of a change's events into the pending table (rows pushed by
/// `QueryBuilder`: cad_system, incident_id, event_time, [`pending_body`]).
pub(crate) const INSERT_PENDING: &str =
    "INSERT INTO pending_events (cad_system, incident_id, event_time, body) ";

/// Events committed and not sequenced: how many, and the earliest commit time.
pub(crate) const PENDING_EVENTS: &str = "SELECT COUNT(*), MIN(event_time) FROM pending_events";

/// The head of the insert of sequenced events (rows pushed by `QueryBuilder` from
/// [`Stamped`]).
pub(crate) const INSERT_EVENTS: &str =
    "INSERT INTO incident_events (cad_system, sequence, incident_id, event_time, body) ";

/// The event_time of event `$2` of CAD `$1`: the floor of the next ones.
pub(crate) const EVENT_TIME_AT: &str =
    "SELECT event_time FROM incident_events WHERE cad_system = $1 AND sequence = $2";

/// A CAD's stream after sequence `$2`, at most `$3` events ([`event_of`]).
pub(crate) const EVENTS_AFTER: &str = "SELECT sequence, event_time, body FROM incident_events \
     WHERE cad_system = $1 AND sequence > $2 ORDER BY sequence LIMIT $3";

/// The last sequence issued for a CAD.
pub(crate) const LAST_SEQUENCE: &str =
    "SELECT last_sequence FROM cad_sequences WHERE cad_system = $1";

/// The first sequence a CAD's stream retains.
pub(crate) const FIRST_SEQUENCE: &str =
    "SELECT MIN(sequence) FROM incident_events WHERE cad_system = $1";

/// The last upstream event consumed from a source for a region.
pub(crate) const STREAM_CURSOR: &str =
    "SELECT last_event_id FROM stream_cursors WHERE source = $1 AND region = $2";

/// Records an upstream event id ([`Consumed`] fields, then the time); nothing if consumed.
pub(crate) const INSERT_CONSUMED: &str = "INSERT INTO consumed_events (source, region, \
     event_id, create_time) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (source, region, event_id) DO NOTHING";

/// Moves a stream's cursor to the event just consumed.
pub(crate) const ADVANCE_CURSOR: &str = "INSERT INTO stream_cursors (source, region, \
     last_event_id) VALUES ($1, $2, $3) \
     ON CONFLICT (source, region) DO UPDATE SET last_event_id = excluded.last_event_id";

/// Erases the personal columns of incidents received before `$1`, once.
pub(crate) const PURGE_PERSONAL_DATA: &str = "UPDATE incidents SET narrative = '', \
     caller = NULL, notes = NULL, close_notes = '', purged_at = $2 \
     WHERE received_at < $1 AND purged_at IS NULL";

/// The bodies (no personal column) of the incidents received in `[$1, $2)` of region `$3`
/// (empty: every region). The period's range on incidents_received finds the rows; region
/// filters them.
pub(crate) const SCAN_RECEIVED: &str = "SELECT body FROM incidents WHERE received_at >= $1 \
     AND received_at < $2 AND ($3 = '' OR region = $3)";

/// The history deleted before `$1`, besides the request log (`REQUEST_LOG.purge_sql()`).
pub(crate) const PURGE_HISTORY: [&str; 4] = [
    "DELETE FROM incident_events WHERE event_time < $1",
    "DELETE FROM consumed_events WHERE create_time < $1",
    "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1",
    // A status kept for an assignment that was never recorded (the claim was undone):
    // nothing will apply it.
    "DELETE FROM team_observations WHERE record_time < $1",
];

/// Intake's request log (idempotency records of UpdateIncident, CancelIncident and
/// CloseIncident), written in the transaction of the change it answers.
pub(crate) static REQUEST_LOG: std::sync::LazyLock<RequestLog> =
    std::sync::LazyLock::new(|| RequestLog::new("request_log"));

/// The tables of intake's sequencer: pending events, streamed per CAD system.
pub(crate) const SEQUENCER_TABLES: Tables<'static> = Tables {
    pending: "pending_events",
    key: "cad_system",
    columns: "pending_id, cad_system, incident_id, event_time, body",
    counters: "cad_sequences",
    last: "last_sequence",
};
