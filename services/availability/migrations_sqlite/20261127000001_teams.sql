-- The durable roster for embedded mode (relay dev): the same table as the PostgreSQL schema.
CREATE TABLE IF NOT EXISTS teams (
    team_id          TEXT PRIMARY KEY,
    display_name     TEXT NOT NULL,
    region           TEXT NOT NULL,
    capabilities     TEXT NOT NULL,
    shift_ends_at_us INTEGER,
    revision         INTEGER NOT NULL,
    updated_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS teams_region ON teams (region, team_id);
