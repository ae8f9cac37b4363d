-- What a program reports from, and what intake needs to converge to routing's record.
--
-- routing_state and unserved_reason mirror the incident body (routing.state and
-- timeline.first_unserved_reason) so that ListIncidents can filter on them.
ALTER TABLE incidents ADD COLUMN routing_state INTEGER NOT NULL DEFAULT 0;
ALTER TABLE incidents ADD COLUMN unserved_reason INTEGER NOT NULL DEFAULT 0;
CREATE INDEX incidents_routing_state ON incidents (routing_state, received_at DESC);
CREATE INDEX incidents_unserved_reason ON incidents (unserved_reason, received_at DESC)
    WHERE unserved_reason <> 0;

-- A team status that availability reported for an incident before intake recorded the team's
-- assignment to it (the two streams are independent, so either may arrive first). When the
-- assignment is recorded, these are applied in the order they were observed and deleted.
CREATE TABLE team_observations (
    incident_id  TEXT NOT NULL,
    team_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    status       INTEGER NOT NULL,
    -- The team's own time of the status (availability's event time), micros.
    source_time  INTEGER NOT NULL,
    -- When intake observed it, micros.
    record_time  INTEGER NOT NULL,
    PRIMARY KEY (incident_id, team_id, event_id)
);
CREATE INDEX team_observations_age ON team_observations (record_time);
