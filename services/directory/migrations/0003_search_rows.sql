-- One row per ACTIVE (service, location) pair with everything a search filters and ranks on,
-- so that a search reads one table through one index instead of joining services,
-- service_at_location, locations, service_taxonomy, languages and schedules for thousands of
-- candidates. The store rebuilds a service's rows after every write that can change them
-- (import, UpsertService); live capacity stays in `capacity` (one primary-key probe per
-- candidate when accepting_only is set), so UpdateCapacity does not touch this table.
CREATE TABLE search_rows (
    service_id    TEXT NOT NULL,
    -- '' for a service without locations.
    location_id   TEXT NOT NULL,
    name          TEXT NOT NULL,
    latitude      DOUBLE PRECISION,
    longitude     DOUBLE PRECISION,
    time_zone     TEXT NOT NULL DEFAULT '',
    search_vector TSVECTOR NOT NULL,
    -- The ids of the service's own taxonomy terms; a search expands the codes it is given to
    -- term ids with their descendants, so renaming or re-parenting a term needs no rebuild.
    term_ids      TEXT[] NOT NULL,
    -- Each language tag with every prefix ending before a '-' ("es-mx" gives "es" and
    -- "es-mx"), so `languages && ARRAY['es']` matches "es" and "es-*" as the filter requires.
    languages     TEXT[] NOT NULL,
    -- The schedules that apply to the service at this location, as a JSON array of
    -- [freq, interval, byday, bymonthday, opens_at, closes_at, valid_from, valid_to, dtstart,
    -- description], ordered by position and id.
    schedules     TEXT NOT NULL,
    PRIMARY KEY (service_id, location_id)
);
CREATE INDEX search_rows_point ON search_rows USING gist (point(longitude, latitude));
CREATE INDEX search_rows_text ON search_rows USING gin (search_vector);
CREATE INDEX search_rows_terms ON search_rows USING gin (term_ids);
CREATE INDEX search_rows_name ON search_rows ((name COLLATE "C"), (service_id COLLATE "C"), (location_id COLLATE "C"));

-- Each service's lists as GetService and a search page return them, as one JSON array
-- [terms, languages, phones, locations (each with the schedules that apply)], rebuilt with
-- search_rows, so a page of 50 services is read with 50 primary-key probes instead of seven
-- queries (or one with some 300 correlated subqueries). Capacity is read live.
CREATE TABLE service_documents (
    service_id TEXT PRIMARY KEY,
    lists      TEXT NOT NULL
);

INSERT INTO service_documents (service_id, lists)
SELECT s.id, json_build_array(
    COALESCE((SELECT json_agg(json_build_array(t.id, t.code, t.name, t.taxonomy, COALESCE(t.parent_id, ''))
              ORDER BY t.code, t.id) FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id
              WHERE st.service_id = s.id), '[]'::json),
    COALESCE((SELECT json_agg(lg.code ORDER BY lg.position, lg.code) FROM languages lg
              WHERE lg.service_id = s.id), '[]'::json),
    COALESCE((SELECT json_agg(json_build_array(p.number, p.extension, p.type, p.description) ORDER BY p.id)
              FROM phones p WHERE p.service_id = s.id), '[]'::json),
    COALESCE((SELECT json_agg(json_build_array(l.id, l.name, l.latitude, l.longitude, l.time_zone, l.attention,
              l.address_1, l.address_2, l.city, l.region, l.state_province, l.postal_code, l.country, l.has_address,
              COALESCE((SELECT json_agg(json_build_array(sc.freq, sc."interval", sc.byday, sc.bymonthday, sc.opens_at,
                        sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description) ORDER BY sc.position, sc.id)
                        FROM schedules sc
                        WHERE (sc.service_id = s.id AND (sc.location_id = l.id OR sc.location_id IS NULL))
                           OR (sc.service_id IS NULL AND sc.location_id = l.id)), '[]'::json))
              ORDER BY sal.position, l.id)
              FROM service_at_location sal JOIN locations l ON l.id = sal.location_id WHERE sal.service_id = s.id), '[]'::json))::text
FROM services s;

-- Filled for data imported before this migration; later writes keep it current.
INSERT INTO search_rows (service_id, location_id, name, latitude, longitude, time_zone, search_vector,
                         term_ids, languages, schedules)
SELECT s.id, COALESCE(sal.location_id, ''), s.name, l.latitude, l.longitude, COALESCE(l.time_zone, ''),
       s.search_vector,
       ARRAY(SELECT st.taxonomy_term_id FROM service_taxonomy st WHERE st.service_id = s.id),
       ARRAY(SELECT DISTINCT array_to_string((string_to_array(lg.code, '-'))[1:n], '-')
             FROM languages lg, generate_series(1, cardinality(string_to_array(lg.code, '-'))) AS n
             WHERE lg.service_id = s.id),
       COALESCE((SELECT json_agg(json_build_array(sc.freq, sc."interval", sc.byday, sc.bymonthday, sc.opens_at,
                         sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description)
                         ORDER BY sc.position, sc.id)
                 FROM schedules sc
                 WHERE (sc.service_id = s.id AND (sc.location_id = sal.location_id OR sc.location_id IS NULL))
                    OR (sc.service_id IS NULL AND sc.location_id = sal.location_id))::text, '[]')
FROM services s
LEFT JOIN service_at_location sal ON sal.service_id = s.id
LEFT JOIN locations l ON l.id = sal.location_id
WHERE s.status = 1;
