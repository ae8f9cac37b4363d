-- Issue 12: the record says why each assignment ended, and carries the CAD's own incident
-- number.
--
-- end_cause is a relay.routing.v1.AssignmentEndCause number (1 TEAM_CLEARED, 2 RELEASED,
-- 3 CANCELLED), 0 while ACTIVE. Rows ended before this migration (or by a replica still
-- running the previous release during a rolling upgrade) keep 0: the reader derives their
-- cause from state and end_reason, so no backfill is needed and none could be more exact.
-- A constant default makes each ADD COLUMN a catalog change only (no table rewrite).
ALTER TABLE assignments ADD COLUMN end_cause INTEGER NOT NULL DEFAULT 0;

-- The CAD's incident number, as the first AssignTeam of the incident gave it ('' when none).
-- Kept on the incident (later calls keep it) and copied onto each of its assignments.
ALTER TABLE incidents ADD COLUMN cad_incident_id TEXT NOT NULL DEFAULT '';
ALTER TABLE assignments ADD COLUMN cad_incident_id TEXT NOT NULL DEFAULT '';
