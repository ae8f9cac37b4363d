-- One row per ACTIVE (service, location) pair with what a search filters and ranks on, as on
-- PostgreSQL (migration 0003 there), so that `relay dev` searches one table through one
-- index instead of joining services, service_at_location, locations, service_taxonomy,
-- languages and schedules for every candidate. The store rebuilds a service's rows after
-- every write that can change them (import, UpsertService); capacity stays in `capacity`.
CREATE TABLE search_rows (
    service_id  TEXT NOT NULL,
    -- '' for a service without locations.
    location_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    latitude    REAL,
    longitude   REAL,
    time_zone   TEXT NOT NULL DEFAULT '',
    -- JSON array of the service's own taxonomy term ids (a search expands codes to ids).
    term_ids    TEXT NOT NULL,
    -- JSON array of the service's language tags, as stored ("es", "es-mx").
    languages   TEXT NOT NULL,
    -- The schedules that apply to the service at this location, as a JSON array of
    -- [freq, interval, byday, bymonthday, opens_at, closes_at, valid_from, valid_to, dtstart,
    -- description], ordered by position and id.
    schedules   TEXT NOT NULL,
    PRIMARY KEY (service_id, location_id)
) WITHOUT ROWID;
CREATE INDEX search_rows_point ON search_rows (latitude, longitude);
CREATE INDEX search_rows_name ON search_rows (name, service_id, location_id);

-- Filled for data imported before this migration; later writes keep it current.
INSERT INTO search_rows (service_id, location_id, name, latitude, longitude, time_zone, term_ids, languages, schedules)
SELECT s.id, COALESCE(sal.location_id, ''), s.name, l.latitude, l.longitude, COALESCE(l.time_zone, ''),
       (SELECT json_group_array(st.taxonomy_term_id) FROM service_taxonomy st WHERE st.service_id = s.id),
       (SELECT json_group_array(lg.code) FROM languages lg WHERE lg.service_id = s.id),
       COALESCE((SELECT json_group_array(json_array(sc.freq, sc."interval", sc.byday, sc.bymonthday, sc.opens_at,
                        sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description) ORDER BY sc.position, sc.id)
                 FROM (SELECT * FROM schedules WHERE service_id = s.id AND (location_id = sal.location_id OR location_id IS NULL)
                       UNION ALL
                       SELECT * FROM schedules WHERE service_id IS NULL AND location_id = sal.location_id) sc
                 HAVING COUNT(*) > 0), '[]')
FROM services s
LEFT JOIN service_at_location sal ON sal.service_id = s.id
LEFT JOIN locations l ON l.id = sal.location_id
WHERE s.status = 1;
