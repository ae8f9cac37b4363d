-- The durable roster: who exists, not where they are. Redis (or the in-process store) is
-- rebuilt from this table when the service starts.
CREATE TABLE IF NOT EXISTS teams (
    team_id          TEXT PRIMARY KEY,
    display_name     TEXT NOT NULL,
    region           TEXT NOT NULL,
    -- Capability tags, sorted, joined with ',' (tags never contain a comma).
    capabilities     TEXT NOT NULL,
    -- Microseconds since the Unix epoch; NULL when no shift end is known.
    shift_ends_at_us BIGINT,
    -- The revision of the last roster change (a floor for the live state's revision).
    revision         BIGINT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS teams_region ON teams (region, team_id);
