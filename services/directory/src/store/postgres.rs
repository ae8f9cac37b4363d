//! The PostgreSQL backend (schema `directory`): full text with `tsvector`, search rows ranked,
//! paged and limited in one statement, JSON built with `json_agg`.

use std::future::Future;

use sqlx::{PgConnection, Postgres, postgres::PgRow};

use super::{
    Candidate, CandidateFilter, LocationHours, RankKey, StoreResult,
    query::{Columns, Dialect, Query},
    rows::decode_schedule_json,
    sql::{SqlStore, with_terms},
};

/// The PostgreSQL backend (schema `directory`; full text with `tsvector`).
pub type PostgresStore = SqlStore<Postgres>;

/// The SQL of the JSON array of the schedules that apply to service `service` at location
/// `location` (two SQL expressions), ordered as stored; NULL when none.
fn schedules_json(service: &str, location: &str) -> String {
    format!(
        "(SELECT json_agg(json_build_array(sc.freq, sc.\"interval\", sc.byday, sc.bymonthday, sc.opens_at, \
         sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description) ORDER BY sc.position, sc.id) \
         FROM schedules sc WHERE (sc.service_id = {service} AND (sc.location_id = {location} OR sc.location_id IS NULL)) \
         OR (sc.service_id IS NULL AND sc.location_id = {location}))"
    )
}

impl Dialect for Postgres {
    const COLLATE: &'static str = " COLLATE \"C\"";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const CAPACITY_JSON: &'static str = "(SELECT json_agg(json_build_array(c.location_id, c.available, c.total, c.as_of_time)) \
         FROM capacity c WHERE c.service_id = s.id)::text";
    const SEARCH_TEXT: &'static str = "concat_ws(' ', name, alternate_name, description, \
         (SELECT o.name FROM organizations o WHERE o.id = services.organization_id), \
         (SELECT string_agg(t.name, ' ') FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id \
          WHERE st.service_id = services.id))";

    async fn execute(conn: &mut PgConnection, query: &Query<'_>) -> Result<u64, sqlx::Error> {
        Ok(query.to_sqlx().execute(conn).await?.rows_affected())
    }

    fn fetch_all<'c>(
        conn: &'c mut PgConnection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<Vec<PgRow>, sqlx::Error>> + Send + 'c {
        query.to_sqlx().fetch_all(conn)
    }

    fn fetch_optional<'c>(
        conn: &'c mut PgConnection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<Option<PgRow>, sqlx::Error>> + Send + 'c {
        query.to_sqlx().fetch_optional(conn)
    }

    /// The JSON array `[terms, languages, phones, locations]`, each a JSON array in the order
    /// GetService returns them, a location with the schedules that apply to it.
    fn lists_json(service: &str) -> String {
        format!(
            "json_build_array(\
             COALESCE((SELECT json_agg(json_build_array(t.id, t.code, t.name, t.taxonomy, COALESCE(t.parent_id, '')) \
             ORDER BY t.code, t.id) FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id \
             WHERE st.service_id = {service}), '[]'::json), \
             COALESCE((SELECT json_agg(lg.code ORDER BY lg.position, lg.code) FROM languages lg \
             WHERE lg.service_id = {service}), '[]'::json), \
             COALESCE((SELECT json_agg(json_build_array(p.number, p.extension, p.type, p.description) ORDER BY p.id) \
             FROM phones p WHERE p.service_id = {service}), '[]'::json), \
             COALESCE((SELECT json_agg(json_build_array(l.id, l.name, l.latitude, l.longitude, l.time_zone, l.attention, \
             l.address_1, l.address_2, l.city, l.region, l.state_province, l.postal_code, l.country, l.has_address, \
             COALESCE({}, '[]'::json)) ORDER BY sal.position, l.id) \
             FROM service_at_location sal JOIN locations l ON l.id = sal.location_id WHERE sal.service_id = {service}), '[]'::json))::text",
            schedules_json(service, "l.id")
        )
    }

    fn refresh_rows<'c>(
        conn: &'c mut PgConnection,
        condition: &'c str,
        a: &'c str,
        b: &'c str,
    ) -> impl Future<Output = StoreResult<()>> + Send + 'c {
        // Rows are written in cells of 0.02 degrees (about 2 km), so that the rows of a radius
        // search lie in few pages after an import.
        let delete = format!(
            "DELETE FROM search_rows WHERE service_id IN (SELECT id FROM services WHERE {condition})"
        );
        let insert = format!(
            "INSERT INTO search_rows (service_id, location_id, name, latitude, longitude, time_zone, search_vector, \
             term_ids, languages, schedules) \
             SELECT s.id, COALESCE(sal.location_id, ''), s.name, l.latitude, l.longitude, COALESCE(l.time_zone, ''), \
             s.search_vector, ARRAY(SELECT st.taxonomy_term_id FROM service_taxonomy st WHERE st.service_id = s.id), \
             ARRAY(SELECT DISTINCT array_to_string((string_to_array(lg.code, '-'))[1:n], '-') \
             FROM languages lg, generate_series(1, cardinality(string_to_array(lg.code, '-'))) AS n \
             WHERE lg.service_id = s.id), COALESCE({}::text, '[]') \
             FROM services s LEFT JOIN service_at_location sal ON sal.service_id = s.id \
             LEFT JOIN locations l ON l.id = sal.location_id \
             WHERE s.status = 1 AND s.id IN (SELECT id FROM services WHERE {condition}) \
             ORDER BY floor(l.latitude * 50), floor(l.longitude * 50)",
            schedules_json("s.id", "sal.location_id")
        );
        async move {
            for sql in [delete, insert] {
                Query::new(sql)
                    .bind(a)
                    .bind(b)
                    .execute::<Postgres>(conn)
                    .await?;
            }
            Ok(())
        }
    }

    async fn search_candidates(
        pool: &sqlx::PgPool,
        filter: &CandidateFilter,
    ) -> StoreResult<Vec<Candidate>> {
        let mut conn = pool.acquire().await?;
        let rows = ranked(filter).fetch_all::<Postgres>(&mut conn).await?;
        rows.iter()
            .map(|row| {
                let name = row.text(2)?;
                Ok(Candidate {
                    key: RankKey {
                        r: row.float(5)?,
                        d: row.float(6)?,
                        n: if filter.text.is_none() {
                            name
                        } else {
                            String::new()
                        },
                        s: row.text(0)?,
                        l: row.text(1)?,
                    },
                    hours: Some(LocationHours {
                        time_zone: row.text(3)?,
                        schedules: decode_schedule_json(&row.text(4)?)?,
                    }),
                })
            })
            .collect()
    }

    async fn append_audit(
        conn: &mut Self::Connection,
        record: &relay_runtime::audit::AuditRecord,
    ) -> Result<(), sqlx::Error> {
        relay_runtime::audit::AuditLog::append::<Postgres>(conn, record)
            .await
            .map(drop)
    }
}

/// The statement of the candidates of `filter` from `search_rows`: filtered, ranked, paged
/// and limited in one statement; the key's relevance and distance are computed in SQL with
/// the same arithmetic as [`RankKey::of`].
fn ranked(filter: &CandidateFilter) -> Query<'_> {
    let mut query = with_terms(filter);
    query.push(
        "SELECT service_id, location_id, name, time_zone, schedules, rk, d FROM (SELECT r.service_id, \
         r.location_id, r.name, r.time_zone, r.schedules, ",
    );
    if filter.text.is_some() {
        // -(score / (score + 1)) with score = max(ts_rank_cd, 0), as RankKey::of.
        query.push(
            "-(GREATEST(ts_rank_cd(r.search_vector, q, 32)::float8, 0.0::float8) / \
             (GREATEST(ts_rank_cd(r.search_vector, q, 32)::float8, 0.0::float8) + 1.0::float8)) AS rk, ",
        );
    } else {
        query.push("-1.0::float8 AS rk, ");
    }
    push_distance(&mut query, filter);
    if let Some(text) = &filter.text {
        query.push("CROSS JOIN websearch_to_tsquery('english', ");
        query
            .push_bind(text.as_str())
            .push(") AS q WHERE r.search_vector @@ q ");
    } else {
        query.push("WHERE TRUE ");
    }
    push_filters(&mut query, filter);
    query.push(") AS c WHERE TRUE ");
    if filter.radius > 0.0 {
        query.push("AND d <= ").push_bind(filter.radius).push(" ");
    }
    push_order(&mut query, filter);
    query
}

/// The distance column `d` and the `FROM` of the ranking statement.
fn push_distance(query: &mut Query<'_>, filter: &CandidateFilter) {
    let Some(point) = filter.point else {
        query.push("0.0::float8 AS d FROM search_rows r ");
        return;
    };
    // Haversine, operation for operation as relay_runtime::geo::distance_meters.
    let k = std::f64::consts::PI / 180.0;
    let lat1 = point.latitude.to_radians();
    let lon1 = point.longitude.to_radians();
    query.push("COALESCE(");
    query.push_bind(2.0 * relay_runtime::geo::EARTH_RADIUS_METERS);
    query.push(" * asin(LEAST(sqrt(h.a * h.a + ");
    query.push_bind(lat1.cos());
    query.push(" * h.c * (h.b * h.b)), 1.0::float8)), 0.0::float8) AS d ");
    query.push("FROM search_rows r CROSS JOIN LATERAL (SELECT sin((r.latitude * ");
    query.push_bind(k).push(" - ").push_bind(lat1);
    query.push(") / 2.0::float8) AS a, sin((r.longitude * ");
    query.push_bind(k).push(" - ").push_bind(lon1);
    query.push(") / 2.0::float8) AS b, cos(r.latitude * ");
    query.push_bind(k).push(") AS c) AS h ");
}

/// The box, taxonomy, language and capacity conditions of the ranking statement.
fn push_filters<'a>(query: &mut Query<'a>, filter: &'a CandidateFilter) {
    if let Some(bounds) = filter.bounding_box {
        // Matches the GiST expression index search_rows_point.
        query.push("AND point(r.longitude, r.latitude) <@ box(point(");
        query
            .push_bind(bounds.min_longitude)
            .push(", ")
            .push_bind(bounds.min_latitude);
        query.push("), point(");
        query
            .push_bind(bounds.max_longitude)
            .push(", ")
            .push_bind(bounds.max_latitude);
        query.push(")) ");
    }
    if !filter.taxonomy_codes.is_empty() {
        query.push("AND r.term_ids && ARRAY(SELECT id FROM terms) ");
    }
    if !filter.languages.is_empty() {
        query.push("AND r.languages && ARRAY[");
        query.push_in(&filter.languages).push("]::text[] ");
    }
    if filter.accepting_only {
        // The contract: exclude only locations whose report says full; those that never
        // report capacity are kept.
        query.push(
            "AND NOT EXISTS (SELECT 1 FROM capacity c WHERE c.service_id = r.service_id \
             AND c.location_id = r.location_id AND c.available <= 0) ",
        );
    }
}

/// The page's start (after the cursor), order and limit of the ranking statement.
fn push_order<'a>(query: &mut Query<'a>, filter: &'a CandidateFilter) {
    // Name order (no text, no point) is the key order of the name index.
    let ranked = filter.text.is_some() || filter.point.is_some();
    let name = if filter.text.is_none() {
        "name COLLATE \"C\", "
    } else {
        ""
    };
    let order = format!(
        "{}{name}service_id COLLATE \"C\", location_id COLLATE \"C\"",
        if ranked { "rk, d, " } else { "" }
    );
    if let Some(after) = &filter.after {
        query.push(format!("AND ({order}) > ("));
        if ranked {
            query
                .push_bind(after.r)
                .push(", ")
                .push_bind(after.d)
                .push(", ");
        }
        if filter.text.is_none() {
            query.push_bind(after.n.as_str()).push(", ");
        }
        query
            .push_bind(after.s.as_str())
            .push(", ")
            .push_bind(after.l.as_str());
        query.push(") ");
    }
    query.push(format!("ORDER BY {order} LIMIT "));
    query.push_bind(filter.limit);
}
