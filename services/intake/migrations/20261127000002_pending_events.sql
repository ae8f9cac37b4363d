-- Events wait here, unsequenced, from the commit of the change that produced them until the
-- sequencer moves them into incident_events with their per-CAD sequence. A request takes no
-- lock on a shared row to append (pending_id comes from a sequence object, which never blocks),
-- so the commits of one CAD's changes no longer serialize on its cad_sequences row; only the
-- sequencer, one at a time across replicas, touches cad_sequences.
--
-- pending_id only orders the events of one incident (its changes are causally ordered by the
-- revision check on the incident row, so a later change always draws a higher id). Ids of
-- concurrent changes of different incidents may commit out of order; that is harmless, since
-- sequences are allocated when the sequencer moves a row, not when the row is written.
CREATE TABLE pending_events (
    pending_id   BIGSERIAL PRIMARY KEY,
    cad_system   TEXT NOT NULL,
    incident_id  TEXT NOT NULL,
    event_time   BIGINT NOT NULL,
    -- The relay.intake.v1.IncidentEvent message (prost encoding) with sequence 0.
    body         BYTEA NOT NULL
);
