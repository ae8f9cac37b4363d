-- Each service's lists as GetService and a search page return them, as one JSON array
-- [terms, languages, phones, locations (each with the schedules that apply)], as on
-- PostgreSQL (migration 0003 there): a page of services is read in one statement instead of
-- seven. Rebuilt with search_rows after every write that can change it; capacity is read live.
-- Coordinates are printed with 17 significant digits so they parse back to the same double.
CREATE TABLE service_documents (
    service_id TEXT PRIMARY KEY,
    lists      TEXT NOT NULL
) WITHOUT ROWID;

-- Filled for data imported before this migration; later writes keep it current.
INSERT INTO service_documents (service_id, lists)
SELECT s.id, json_array(
    json((SELECT json_group_array(json_array(t.id, t.code, t.name, t.taxonomy, COALESCE(t.parent_id, ''))
                                  ORDER BY t.code, t.id)
          FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id WHERE st.service_id = s.id)),
    json((SELECT json_group_array(lg.code ORDER BY lg.position, lg.code) FROM languages lg WHERE lg.service_id = s.id)),
    json((SELECT json_group_array(json_array(p.number, p.extension, p.type, p.description) ORDER BY p.id)
          FROM phones p WHERE p.service_id = s.id)),
    json((SELECT json_group_array(json_array(l.id, l.name,
                 CASE WHEN l.latitude IS NULL THEN NULL ELSE json(printf('%.17g', l.latitude)) END,
                 CASE WHEN l.longitude IS NULL THEN NULL ELSE json(printf('%.17g', l.longitude)) END,
                 l.time_zone, l.attention, l.address_1, l.address_2, l.city, l.region, l.state_province,
                 l.postal_code, l.country, l.has_address,
                 json(COALESCE((SELECT json_group_array(json_array(sc.freq, sc."interval", sc.byday, sc.bymonthday,
                                       sc.opens_at, sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description)
                                       ORDER BY sc.position, sc.id)
                                FROM (SELECT * FROM schedules WHERE service_id = s.id AND (location_id = l.id OR location_id IS NULL)
                                      UNION ALL
                                      SELECT * FROM schedules WHERE service_id IS NULL AND location_id = l.id) sc
                                HAVING COUNT(*) > 0), '[]')))
                 ORDER BY sal.position, l.id)
          FROM service_at_location sal JOIN locations l ON l.id = sal.location_id WHERE sal.service_id = s.id)))
FROM services s;
