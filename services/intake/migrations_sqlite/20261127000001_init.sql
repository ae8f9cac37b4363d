-- Intake's record: incidents, their per-CAD event timeline, the routing outbox, the
-- idempotency log of mutations, and what intake consumed from routing and availability.
-- Times are microseconds since the Unix epoch (UTC), the same on PostgreSQL and SQLite.

CREATE TABLE incidents (
    incident_id      TEXT PRIMARY KEY,
    cad_system       TEXT NOT NULL,
    cad_incident_id  TEXT NOT NULL,
    region           TEXT NOT NULL,
    state            INTEGER NOT NULL,
    disposition      INTEGER NOT NULL,
    received_at      INTEGER NOT NULL,
    revision         INTEGER NOT NULL,
    -- The relay.intake.v1.Incident message without its personal fields (prost encoding).
    body             BLOB NOT NULL,
    -- Internal state: the dispatcher override in force and the assigned team's last status.
    override_disposition INTEGER NOT NULL DEFAULT 0,
    team_status      INTEGER NOT NULL DEFAULT 0,
    -- The team routing assigned (empty when none), to find an incident from a team's status.
    team_id          TEXT NOT NULL DEFAULT '',
    -- Personal data, purged by the retention job.
    narrative        TEXT NOT NULL DEFAULT '',
    caller           BLOB,
    notes            BLOB,
    close_notes      TEXT NOT NULL DEFAULT '',
    purged_at        INTEGER,
    CONSTRAINT incidents_cad_key UNIQUE (cad_system, cad_incident_id)
);
CREATE INDEX incidents_received ON incidents (received_at DESC, incident_id DESC);
CREATE INDEX incidents_team ON incidents (team_id) WHERE state = 1;
CREATE INDEX incidents_purge ON incidents (received_at) WHERE purged_at IS NULL;

CREATE TABLE cad_sequences (
    cad_system     TEXT PRIMARY KEY,
    last_sequence  INTEGER NOT NULL
);

CREATE TABLE incident_events (
    cad_system   TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    incident_id  TEXT NOT NULL,
    event_time   INTEGER NOT NULL,
    -- The relay.intake.v1.IncidentEvent message (prost encoding); never personal data.
    body         BLOB NOT NULL,
    PRIMARY KEY (cad_system, sequence)
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, sequence);

CREATE TABLE outbox (
    outbox_id        TEXT PRIMARY KEY,
    incident_id      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    create_time      INTEGER NOT NULL,
    delivered_at     INTEGER,
    last_error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE request_log (
    request_id   TEXT PRIMARY KEY,
    rpc          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    response     BLOB NOT NULL,
    create_time  INTEGER NOT NULL
);

CREATE TABLE consumed_events (
    source      TEXT NOT NULL,
    region      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (source, region, event_id)
);

CREATE TABLE stream_cursors (
    source         TEXT NOT NULL,
    region         TEXT NOT NULL,
    last_event_id  TEXT NOT NULL,
    PRIMARY KEY (source, region)
);
