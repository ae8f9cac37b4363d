-- Events wait here, unsequenced, from the commit of the change that produced them until the
-- sequencer moves them into incident_events with their per-CAD sequence (see the PostgreSQL
-- migration of the same name; SQLite has one writer at a time, so the design is the same and
-- only cheaper). AUTOINCREMENT: an id is never reused, even after the rows are moved.
CREATE TABLE pending_events (
    pending_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    cad_system   TEXT NOT NULL,
    incident_id  TEXT NOT NULL,
    event_time   INTEGER NOT NULL,
    -- The relay.intake.v1.IncidentEvent message (prost encoding) with sequence 0.
    body         BLOB NOT NULL
);
