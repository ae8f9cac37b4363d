-- The referral directory, shaped by Open Referral HSDS 3.0, plus Relay's live capacity,
-- referrals and idempotency records. Times are microseconds since the Unix epoch (BIGINT),
-- the same in the SQLite schema, so both backends share their statements.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    url         TEXT NOT NULL DEFAULT '',
    email       TEXT NOT NULL DEFAULT ''
);

CREATE TABLE services (
    id                      TEXT PRIMARY KEY,
    organization_id         TEXT NOT NULL,
    name                    TEXT NOT NULL,
    alternate_name          TEXT NOT NULL DEFAULT '',
    description             TEXT NOT NULL DEFAULT '',
    url                     TEXT NOT NULL DEFAULT '',
    email                   TEXT NOT NULL DEFAULT '',
    status                  BIGINT NOT NULL,
    eligibility_description TEXT NOT NULL DEFAULT '',
    fees_description        TEXT NOT NULL DEFAULT '',
    application_process     TEXT NOT NULL DEFAULT '',
    alert                   TEXT NOT NULL DEFAULT '',
    create_time             BIGINT NOT NULL,
    update_time             BIGINT NOT NULL,
    -- Name, alternate name, description, organization name and taxonomy term names, kept by
    -- the store after every write; the full-text index is built on it.
    search_text             TEXT NOT NULL DEFAULT ''
);
CREATE INDEX services_organization ON services (organization_id);
CREATE INDEX services_name ON services (name, id);

CREATE TABLE taxonomy_terms (
    id        TEXT PRIMARY KEY,
    code      TEXT NOT NULL,
    name      TEXT NOT NULL DEFAULT '',
    taxonomy  TEXT NOT NULL DEFAULT '',
    parent_id TEXT
);
CREATE INDEX taxonomy_terms_code ON taxonomy_terms (code);
CREATE INDEX taxonomy_terms_parent ON taxonomy_terms (parent_id);

CREATE TABLE service_taxonomy (
    service_id       TEXT NOT NULL,
    taxonomy_term_id TEXT NOT NULL,
    PRIMARY KEY (service_id, taxonomy_term_id)
);
CREATE INDEX service_taxonomy_term ON service_taxonomy (taxonomy_term_id, service_id);

CREATE TABLE languages (
    service_id TEXT NOT NULL,
    code       TEXT NOT NULL,
    position   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (service_id, code)
);
CREATE INDEX languages_code ON languages (code, service_id);

CREATE TABLE phones (
    id          TEXT PRIMARY KEY,
    service_id  TEXT NOT NULL,
    number      TEXT NOT NULL,
    extension   TEXT NOT NULL DEFAULT '',
    type        TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX phones_service ON phones (service_id);

-- HSDS location joined with its (physical) address.
CREATE TABLE locations (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL DEFAULT '',
    latitude       REAL,
    longitude      REAL,
    time_zone      TEXT NOT NULL DEFAULT '',
    attention      TEXT NOT NULL DEFAULT '',
    address_1      TEXT NOT NULL DEFAULT '',
    address_2      TEXT NOT NULL DEFAULT '',
    city           TEXT NOT NULL DEFAULT '',
    region         TEXT NOT NULL DEFAULT '',
    state_province TEXT NOT NULL DEFAULT '',
    postal_code    TEXT NOT NULL DEFAULT '',
    country        TEXT NOT NULL DEFAULT '',
    has_address    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX locations_point ON locations (latitude, longitude);

CREATE TABLE service_at_location (
    service_id  TEXT NOT NULL,
    location_id TEXT NOT NULL,
    id          TEXT NOT NULL UNIQUE,
    position    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (service_id, location_id)
);
CREATE INDEX service_at_location_location ON service_at_location (location_id, service_id);

-- A schedule applies to a service at a location, to every service at a location (no
-- service_id), or to a service at all its locations (no location_id).
CREATE TABLE schedules (
    id          TEXT PRIMARY KEY,
    service_id  TEXT,
    location_id TEXT,
    position    BIGINT NOT NULL DEFAULT 0,
    freq        BIGINT NOT NULL DEFAULT 0,
    "interval"  BIGINT NOT NULL DEFAULT 0,
    byday       TEXT NOT NULL DEFAULT '',
    bymonthday  TEXT NOT NULL DEFAULT '',
    opens_at    TEXT NOT NULL,
    closes_at   TEXT NOT NULL,
    valid_from  TEXT NOT NULL DEFAULT '',
    valid_to    TEXT NOT NULL DEFAULT '',
    dtstart     TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX schedules_location ON schedules (location_id);
CREATE INDEX schedules_service ON schedules (service_id);

CREATE TABLE capacity (
    service_id  TEXT NOT NULL,
    location_id TEXT NOT NULL,
    available   BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    as_of_time  BIGINT NOT NULL,
    PRIMARY KEY (service_id, location_id)
);
CREATE INDEX capacity_accepting ON capacity (service_id, location_id) WHERE available > 0;

CREATE TABLE referrals (
    referral_id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    service_id  TEXT NOT NULL,
    location_id TEXT NOT NULL DEFAULT '',
    status      BIGINT NOT NULL,
    notes       TEXT NOT NULL DEFAULT '',
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX referrals_order ON referrals (create_time, referral_id);
CREATE INDEX referrals_incident ON referrals (incident_id);
CREATE INDEX referrals_service ON referrals (service_id);
-- At most one open referral (PENDING 1, UNREACHABLE 4, NO_CAPACITY 5) per incident, service
-- and location.
CREATE UNIQUE INDEX referrals_one_open ON referrals (incident_id, service_id, location_id)
    WHERE status IN (1, 4, 5);

-- Idempotency: the response of each successful mutation, by request_id.
CREATE TABLE requests (
    request_id  TEXT PRIMARY KEY,
    rpc         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    response    BLOB NOT NULL,
    create_time BIGINT NOT NULL
);

-- Full-text index of services.search_text (FTS5, Porter stemming), kept by the store.
CREATE VIRTUAL TABLE services_fts USING fts5(service_id UNINDEXED, body, tokenize = 'porter unicode61');
