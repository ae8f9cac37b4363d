-- Assignment events wait here, unnumbered, from the commit of the change that produced them
-- until a sequencer numbers them into `events`. Appending takes no lock on a shared row
-- (pending_id comes from a sequence object, which never blocks), so the commits of one
-- region's assignments no longer serialize on its region_counters row through their WAL
-- flush; only the sequencer, one at a time across replicas (an advisory lock), touches
-- region_counters.
--
-- pending_id orders the events of one incident and one team: their changes are causally
-- ordered (the version check on the incident row, the one-ACTIVE-assignment indexes), so a
-- later change always draws a higher id. Ids of concurrent changes may commit out of order;
-- that is harmless, since numbers are given when the sequencer moves a row.
CREATE TABLE pending_events (
    pending_id  BIGSERIAL PRIMARY KEY,
    region      TEXT NOT NULL,
    -- The relay.routing.v1.AssignmentEvent message (prost encoding), event_id empty.
    payload     BYTEA NOT NULL
);
