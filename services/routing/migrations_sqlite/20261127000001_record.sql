-- Routing's record: incidents as routing knows them, assignments, fencing tokens,
-- remembered responses, and the per-region event log.

CREATE TABLE incidents (
    incident_id               TEXT PRIMARY KEY,
    region                    TEXT NOT NULL,
    cad_system                TEXT NOT NULL,
    priority                  INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 5),
    latitude                  REAL NOT NULL,
    longitude                 REAL NOT NULL,
    required_capabilities     TEXT NOT NULL,
    preferred_capabilities    TEXT NOT NULL,
    expected_duration_seconds INTEGER,
    state                     TEXT NOT NULL,
    queued_time               TEXT,
    escalate_time             TEXT,
    unserved_reason           INTEGER NOT NULL DEFAULT 0,
    version                   INTEGER NOT NULL,
    update_time               TEXT NOT NULL
);

-- The queue in serving order, and the escalation scan.
CREATE INDEX incidents_queue ON incidents (region, priority, queued_time, incident_id)
    WHERE state = 'QUEUED';
CREATE INDEX incidents_escalation ON incidents (escalate_time) WHERE state = 'QUEUED';

CREATE TABLE assignments (
    assignment_id   TEXT PRIMARY KEY,
    incident_id     TEXT NOT NULL REFERENCES incidents (incident_id),
    team_id         TEXT NOT NULL,
    region          TEXT NOT NULL,
    distance_meters REAL NOT NULL,
    eta_seconds     INTEGER NOT NULL,
    assigned_at     TEXT NOT NULL,
    fencing_token   INTEGER NOT NULL,
    state           TEXT NOT NULL,
    source          INTEGER NOT NULL,
    cad_system      TEXT NOT NULL,
    end_time        TEXT,
    end_reason      TEXT NOT NULL DEFAULT ''
);

-- The guarantee: at most one ACTIVE assignment per team and one per incident.
CREATE UNIQUE INDEX assignments_one_active_per_team ON assignments (team_id)
    WHERE state = 'ACTIVE';
CREATE UNIQUE INDEX assignments_one_active_per_incident ON assignments (incident_id)
    WHERE state = 'ACTIVE';
CREATE INDEX assignments_active_by_region ON assignments (region) WHERE state = 'ACTIVE';

-- The last fencing token recorded per team: a claim whose token is not larger is refused.
CREATE TABLE team_tokens (
    team_id    TEXT PRIMARY KEY,
    last_token INTEGER NOT NULL
);

-- Remembered responses of mutations, by request_id.
CREATE TABLE requests (
    request_id  TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    response    BLOB NOT NULL,
    create_time TEXT NOT NULL
);

-- Per-region event numbering: bumped inside the transaction that records the change, so
-- numbers are gapless and follow commit order.
CREATE TABLE region_counters (
    region   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);

CREATE TABLE events (
    region     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    payload    BLOB NOT NULL,
    event_time TEXT NOT NULL,
    PRIMARY KEY (region, seq)
);
CREATE INDEX events_by_time ON events (event_time);
