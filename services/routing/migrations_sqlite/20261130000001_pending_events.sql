-- Assignment events wait here, unnumbered, from the commit of the change that produced them
-- until the sequencer (relay_runtime::sequencer, as on PostgreSQL) numbers them into
-- `events`. SQLite numbered them inside the change's transaction before; one sequencer for
-- both backends keeps one numbering path to test. SQLite has one writer at a time, so the
-- sequencer needs no lock here.
CREATE TABLE pending_events (
    pending_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    region      TEXT NOT NULL,
    -- The relay.routing.v1.AssignmentEvent message (prost encoding), event_id empty.
    payload     BLOB NOT NULL
);
