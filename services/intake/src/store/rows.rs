//! The row mapping both backends share: an incident split into its columns and joined back,
//! event bodies, the rows the reads decode, and the parameters of an incident's write.

use super::*;

/// The columns of an incident row, in the order of the SQL below.
pub(crate) struct IncidentColumns {
    pub body: Vec<u8>,
    pub narrative: String,
    pub caller: Option<Vec<u8>>,
    pub notes: Option<Vec<u8>>,
    pub close_notes: String,
}

/// Splits an incident into its non-personal body and its personal columns.
pub(crate) fn split_incident(incident: &Incident) -> IncidentColumns {
    let mut body = incident.clone();
    let narrative = std::mem::take(&mut body.narrative);
    let caller = body.caller.take().map(|c| c.encode_to_vec());
    let notes = if body.notes.is_empty() {
        None
    } else {
        let list = NoteList {
            notes: std::mem::take(&mut body.notes),
        };
        Some(list.encode_to_vec())
    };
    let close_notes = std::mem::take(&mut body.close_notes);
    IncidentColumns {
        body: body.encode_to_vec(),
        narrative,
        caller,
        notes,
        close_notes,
    }
}

/// Rebuilds an incident from its columns.
pub(crate) fn join_incident(columns: IncidentColumns) -> Result<Incident, StoreError> {
    let mut incident = Incident::decode(columns.body.as_slice())?;
    incident.narrative = columns.narrative;
    incident.caller = columns
        .caller
        .map(|bytes| relay_proto::intake::CallerContact::decode(bytes.as_slice()))
        .transpose()?;
    incident.notes = columns
        .notes
        .map(|bytes| NoteList::decode(bytes.as_slice()))
        .transpose()?
        .map(|list| list.notes)
        .unwrap_or_default();
    incident.close_notes = columns.close_notes;
    Ok(incident)
}

/// The notes column: a repeated `IncidentNote` (field 1), so it decodes with prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NoteList {
    #[prost(message, repeated, tag = "1")]
    pub notes: Vec<relay_proto::intake::IncidentNote>,
}

/// The stored body of a pending event: its sequence is not known yet (the sequencer stores it
/// in its own column, and `events_after` puts it back).
pub(crate) fn pending_body(event: &IncidentEvent) -> Vec<u8> {
    let mut event = event.clone();
    event.sequence = 0;
    event.encode_to_vec()
}

pub(crate) fn decode_event(body: &[u8]) -> Result<IncidentEvent, StoreError> {
    Ok(IncidentEvent::decode(body)?)
}

// ---- Row and parameter mapping shared by both backends --------------------------------------

#[derive(sqlx::FromRow)]
pub(crate) struct IncidentRow {
    body: Vec<u8>,
    narrative: String,
    caller: Option<Vec<u8>>,
    notes: Option<Vec<u8>>,
    close_notes: String,
    override_disposition: i32,
    team_status: i32,
}

impl IncidentRow {
    pub(crate) fn into_stored(self) -> Result<StoredIncident, StoreError> {
        let incident = join_incident(IncidentColumns {
            body: self.body,
            narrative: self.narrative,
            caller: self.caller,
            notes: self.notes,
            close_notes: self.close_notes,
        })?;
        Ok(StoredIncident {
            incident,
            override_disposition: self.override_disposition,
            team_status: self.team_status,
        })
    }
}

/// A pending event as the sequencer takes it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PendingEvent {
    pub pending_id: i64,
    pub cad_system: String,
    pub incident_id: String,
    pub event_time: i64,
    pub body: Vec<u8>,
}

impl PendingRow for PendingEvent {
    fn pending_id(&self) -> i64 {
        self.pending_id
    }

    fn stream_key(&self) -> &str {
        &self.cad_system
    }
}

/// A sequenced event as `incident_events` stores it.
#[derive(Debug)]
pub(crate) struct Stamped {
    pub cad_system: String,
    pub sequence: i64,
    pub incident_id: String,
    pub event_time: i64,
    pub body: Vec<u8>,
}

/// Stamps a batch for `incident_events`. `floors` holds, per CAD of the batch, the event_time
/// of its last event before the batch (`i64::MIN` when none): event_time must not decrease
/// along a CAD's sequence, or the retention job (which deletes by event_time) could delete an
/// event and keep an earlier one: a hole in the stream. A change that waited to be sequenced
/// (or a replica with a slower clock) is therefore stamped no earlier than the event before
/// it.
pub(crate) fn stamp(
    batch: Vec<Numbered<PendingEvent>>,
    mut floors: std::collections::HashMap<String, i64>,
) -> Result<Vec<Stamped>, StoreError> {
    batch
        .into_iter()
        .map(|Numbered { sequence, row }| {
            let floor = floors
                .get_mut(&row.cad_system)
                .ok_or_else(|| StoreError::Corrupt("sequencer lost a CAD".into()))?;
            *floor = (*floor).max(row.event_time);
            Ok(Stamped {
                cad_system: row.cad_system,
                sequence,
                incident_id: row.incident_id,
                event_time: *floor,
                body: row.body,
            })
        })
        .collect()
}

/// What a sequencer pass reports, from the batch it stamped and the CADs whose streams grew.
pub(crate) fn sequenced(
    stamped: &[Stamped],
    oldest_event_time: Option<i64>,
    cad_systems: Vec<String>,
) -> Result<Sequenced, StoreError> {
    Ok(Sequenced {
        events: stamped.len(),
        cad_systems,
        oldest_event_time,
        moved: stamped
            .iter()
            .map(|s| decode_event(&s.body))
            .collect::<Result<_, _>>()?,
    })
}

/// A kept team status from its [`OBSERVATIONS`](sql::OBSERVATIONS) row.
pub(crate) fn observation_of(
    (incident_id, team_id, event_id, status, source_time, record_time): (
        String,
        String,
        String,
        i32,
        i64,
        i64,
    ),
) -> Observation {
    Observation {
        incident_id,
        team_id,
        event_id,
        status,
        source_time,
        record_time,
    }
}

/// An outbox row from its [`CLAIM_OUTBOX`](sql::CLAIM_OUTBOX) row.
pub(crate) fn outbox_of(
    (outbox_id, incident_id, kind, payload, attempts, next_attempt_at): (
        String,
        String,
        String,
        Vec<u8>,
        i32,
        i64,
    ),
) -> Result<OutboxItem, StoreError> {
    Ok(OutboxItem {
        outbox_id,
        incident_id,
        kind: OutboxKind::parse(&kind)?,
        payload,
        attempts,
        next_attempt_at,
    })
}

/// A sequenced event from its [`EVENTS_AFTER`](sql::EVENTS_AFTER) row. The body was encoded before its sequence
/// existed; the column has it, and the event_time the sequencer kept from decreasing along
/// the stream.
pub(crate) fn event_of(
    (sequence, event_time, body): &(i64, i64, Vec<u8>),
) -> Result<IncidentEvent, StoreError> {
    let mut event = decode_event(body)?;
    event.sequence = *sequence;
    event.event_time = Some(timestamp_of(*event_time));
    Ok(event)
}

/// Which statement [`incident_arguments`] binds for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Write {
    /// [`INSERT_INCIDENT`](sql::INSERT_INCIDENT): the incident's ids first.
    Insert,
    /// [`UPDATE_INCIDENT`](sql::UPDATE_INCIDENT) of the incident read at this revision.
    Update(i64),
}

/// The parameters of `write` for `stored`: its id, then the CAD's ids (insert) or the
/// revision read (update), then every column from `region` to `unserved_reason`.
pub(crate) fn incident_arguments<DB>(
    stored: &StoredIncident,
    write: Write,
) -> Result<DB::Arguments<'static>, sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    use sqlx::Arguments;
    let incident = &stored.incident;
    let columns = split_incident(incident);
    let mut args = DB::Arguments::default();
    let add = || -> Result<(), sqlx::error::BoxDynError> {
        args.add(incident.incident_id.clone())?;
        match write {
            Write::Insert => {
                args.add(incident.cad_system.clone())?;
                args.add(incident.cad_incident_id.clone())?;
            }
            Write::Update(expected_revision) => args.add(expected_revision)?,
        }
        args.add(incident.region.clone())?;
        args.add(incident.state)?;
        args.add(incident.triage.as_ref().map_or(0, |t| t.disposition))?;
        args.add(micros_of(incident.received_at.as_ref()))?;
        args.add(incident.revision)?;
        args.add(columns.body)?;
        args.add(stored.override_disposition)?;
        args.add(stored.team_status)?;
        args.add(columns.narrative)?;
        args.add(columns.caller)?;
        args.add(columns.notes)?;
        args.add(columns.close_notes)?;
        args.add(team_of(incident).to_owned())?;
        args.add(routing_state_of(incident))?;
        args.add(unserved_reason_of(incident))
    };
    add().map_err(sqlx::Error::Encode)?;
    Ok(args)
}

/// The team routing assigned to an incident, empty when none.
pub(super) fn team_of(incident: &Incident) -> &str {
    incident.routing.as_ref().map_or("", |r| r.team_id.as_str())
}

pub(super) fn routing_state_of(incident: &Incident) -> i32 {
    incident.routing.as_ref().map_or(0, |r| r.state)
}

pub(super) fn unserved_reason_of(incident: &Incident) -> i32 {
    incident
        .timeline
        .as_ref()
        .map_or(0, |t| t.first_unserved_reason)
}

/// Micros since the epoch of an optional timestamp (0 when unset).
#[must_use]
pub fn micros_of(time: Option<&prost_types::Timestamp>) -> i64 {
    time.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos / 1000))
    })
}

/// The timestamp of micros since the epoch.
#[must_use]
pub fn timestamp_of(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}
