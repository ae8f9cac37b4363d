//! The SQLite backend for `relay dev`: full text with FTS5, search rows filtered in SQL and
//! ranked here (SQLite has no trigonometry), JSON built with `json_group_array`.

use std::{collections::HashMap, future::Future};

use relay_runtime::geo::{BoundingBox, Point};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, sqlite::SqliteRow};

use super::{
    Candidate, CandidateFilter, LocationHours, RankKey, StoreResult,
    query::{Columns, Dialect, Query},
    rows::{CHUNK, decode_schedule_json},
    sql::{SqlStore, with_terms},
};
use crate::{error::DirectoryError, search};

/// The SQLite backend for `relay dev` (full text with FTS5).
pub type SqliteStore = SqlStore<Sqlite>;

/// The FTS5 expression for free text: every word, quoted, all required.
fn fts5_expression(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| format!("\"{word}\""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The SQL expression of the JSON array of the schedules that apply to service `service` at
/// location `location`, ordered as stored; NULL when none. The two halves of the condition
/// are separate SELECTs, each on its own index: SQLite would scan every schedule for the OR
/// of both, per search row.
fn schedules_json(service: &str, location: &str) -> String {
    format!(
        "(SELECT json_group_array(json_array(sc.freq, sc.\"interval\", sc.byday, sc.bymonthday, sc.opens_at, \
         sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description) ORDER BY sc.position, sc.id) \
         FROM (SELECT * FROM schedules WHERE service_id = {service} AND (location_id = {location} OR location_id IS NULL) \
         UNION ALL SELECT * FROM schedules WHERE service_id IS NULL AND location_id = {location}) sc HAVING COUNT(*) > 0)"
    )
}

impl Dialect for Sqlite {
    const COLLATE: &'static str = "";
    const FOR_UPDATE: &'static str = "";
    const CAPACITY_JSON: &'static str = "(SELECT json_group_array(json_array(c.location_id, c.available, c.total, c.as_of_time)) \
         FROM capacity c WHERE c.service_id = s.id)";
    const SEARCH_TEXT: &'static str = "name || ' ' || alternate_name || ' ' || description || ' ' || \
         COALESCE((SELECT o.name FROM organizations o WHERE o.id = services.organization_id), '') || ' ' || \
         COALESCE((SELECT group_concat(t.name, ' ') FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id \
          WHERE st.service_id = services.id), '')";

    async fn execute(conn: &mut SqliteConnection, query: &Query<'_>) -> Result<u64, sqlx::Error> {
        Ok(query.to_sqlx().execute(conn).await?.rows_affected())
    }

    fn fetch_all<'c>(
        conn: &'c mut SqliteConnection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<Vec<SqliteRow>, sqlx::Error>> + Send + 'c {
        query.to_sqlx().fetch_all(conn)
    }

    fn fetch_optional<'c>(
        conn: &'c mut SqliteConnection,
        query: &'c Query<'_>,
    ) -> impl Future<Output = Result<Option<SqliteRow>, sqlx::Error>> + Send + 'c {
        query.to_sqlx().fetch_optional(conn)
    }

    /// The stored document as PostgreSQL's (migration 0004 here): nested arrays go through
    /// `json()` (a subquery's result is text to `json_array`), and coordinates are printed
    /// with 17 significant digits so they parse back to the same f64.
    fn lists_json(service: &str) -> String {
        format!(
            "json_array(\
             json((SELECT json_group_array(json_array(t.id, t.code, t.name, t.taxonomy, COALESCE(t.parent_id, '')) \
             ORDER BY t.code, t.id) FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id \
             WHERE st.service_id = {service})), \
             json((SELECT json_group_array(lg.code ORDER BY lg.position, lg.code) FROM languages lg WHERE lg.service_id = {service})), \
             json((SELECT json_group_array(json_array(p.number, p.extension, p.type, p.description) ORDER BY p.id) \
             FROM phones p WHERE p.service_id = {service})), \
             json((SELECT json_group_array(json_array(l.id, l.name, \
             CASE WHEN l.latitude IS NULL THEN NULL ELSE json(printf('%.17g', l.latitude)) END, \
             CASE WHEN l.longitude IS NULL THEN NULL ELSE json(printf('%.17g', l.longitude)) END, \
             l.time_zone, l.attention, l.address_1, l.address_2, l.city, l.region, l.state_province, l.postal_code, \
             l.country, l.has_address, json(COALESCE({}, '[]'))) ORDER BY sal.position, l.id) \
             FROM service_at_location sal JOIN locations l ON l.id = sal.location_id WHERE sal.service_id = {service})))",
            schedules_json(service, "l.id")
        )
    }

    /// The same search rows as PostgreSQL's, in SQLite's dialect: term ids and language codes
    /// as JSON arrays (filtered with json_each), no text vector (services_fts is the text
    /// index).
    fn refresh_rows<'c>(
        conn: &'c mut SqliteConnection,
        condition: &'c str,
        a: &'c str,
        b: &'c str,
    ) -> impl Future<Output = StoreResult<()>> + Send + 'c {
        let matched = format!("(SELECT id FROM services WHERE {condition})");
        let statements = [
            format!("DELETE FROM search_rows WHERE service_id IN {matched}"),
            format!(
                "INSERT INTO search_rows (service_id, location_id, name, latitude, longitude, time_zone, term_ids, languages, schedules) \
                 SELECT s.id, COALESCE(sal.location_id, ''), s.name, l.latitude, l.longitude, COALESCE(l.time_zone, ''), \
                 (SELECT json_group_array(st.taxonomy_term_id) FROM service_taxonomy st WHERE st.service_id = s.id), \
                 (SELECT json_group_array(lg.code) FROM languages lg WHERE lg.service_id = s.id), \
                 COALESCE({}, '[]') \
                 FROM services s LEFT JOIN service_at_location sal ON sal.service_id = s.id \
                 LEFT JOIN locations l ON l.id = sal.location_id \
                 WHERE s.status = 1 AND s.id IN {matched}",
                schedules_json("s.id", "sal.location_id")
            ),
            format!("DELETE FROM services_fts WHERE service_id IN {matched}"),
            format!(
                "INSERT INTO services_fts (service_id, body) SELECT id, search_text FROM services WHERE {condition}"
            ),
        ];
        async move {
            for sql in statements {
                Query::new(sql)
                    .bind(a)
                    .bind(b)
                    .execute::<Sqlite>(conn)
                    .await?;
            }
            Ok(())
        }
    }

    /// The candidates of `filter` from `search_rows`, best first, at most `filter.limit`,
    /// with their opening hours (read from the same rows by primary key). A search ordered
    /// by distance reads growing boxes around its point ([`search::grow_near`]).
    async fn search_candidates(
        pool: &SqlitePool,
        filter: &CandidateFilter,
    ) -> StoreResult<Vec<Candidate>> {
        let limit = usize::try_from(filter.limit).unwrap_or(0);
        let mut candidates =
            search::grow_near(filter, limit, |bounds| scan_box(pool, filter, bounds)).await?;
        candidates.truncate(limit);
        with_hours(pool, &mut candidates).await?;
        Ok(candidates)
    }

    async fn append_audit(
        conn: &mut Self::Connection,
        record: &relay_runtime::audit::AuditRecord,
    ) -> Result<(), sqlx::Error> {
        relay_runtime::audit::AuditLog::append::<Sqlite>(conn, record)
            .await
            .map(drop)
    }
}

/// Sets the hours of the candidates, from their search rows.
async fn with_hours(pool: &SqlitePool, candidates: &mut [Candidate]) -> StoreResult<()> {
    let mut hours = HashMap::new();
    // By service id, the primary key's prefix (a row-value IN over VALUES made SQLite scan
    // the table); rows of other locations are dropped below.
    let mut services: Vec<String> = candidates.iter().map(|c| c.key.s.clone()).collect();
    services.sort();
    services.dedup();
    let mut conn = pool.acquire().await?;
    for chunk in services.chunks(CHUNK) {
        let mut query = Query::new(
            "SELECT service_id, location_id, time_zone, schedules FROM search_rows WHERE service_id IN (",
        );
        query.push_in(chunk).push(")");
        for row in query.fetch_all::<Sqlite>(&mut conn).await? {
            hours.insert(
                (row.text(0)?, row.text(1)?),
                LocationHours {
                    time_zone: row.text(2)?,
                    schedules: decode_schedule_json(&row.text(3)?)?,
                },
            );
        }
    }
    for candidate in candidates {
        candidate.hours = hours.remove(&(candidate.key.s.clone(), candidate.key.l.clone()));
    }
    Ok(())
}

/// The rows of `filter` in `bounds` (index on latitude, longitude; text through FTS5),
/// filtered in SQL, ranked here with [`RankKey::of`], within the radius and after the page's
/// last key, best first (not limited, except in name order, which pages in SQL).
async fn scan_box(
    pool: &SqlitePool,
    filter: &CandidateFilter,
    bounds: Option<BoundingBox>,
) -> StoreResult<Vec<Candidate>> {
    let query = scan_query(filter, bounds);
    let mut conn = pool.acquire().await?;
    let joined = match query.fetch_optional::<Sqlite>(&mut conn).await? {
        Some(row) => row.opt_text(0)?.unwrap_or_default(),
        None => String::new(),
    };
    let mut candidates = Vec::new();
    for row in joined.split('\u{2}').filter(|row| !row.is_empty()) {
        let fields: Vec<&str> = row.split('\u{1}').collect();
        let [sid, lid, name, latitude, longitude, score] = fields[..] else {
            return Err(DirectoryError::Corrupt(format!("search row `{row}`")));
        };
        let number = |text: &str| text.parse::<f64>().ok();
        let point = number(latitude)
            .zip(number(longitude))
            .map(|(lat, lon)| Point::new(lat, lon));
        let score = number(score).unwrap_or(0.0);
        let key = RankKey::of(
            filter,
            score,
            point,
            name.to_owned(),
            sid.to_owned(),
            lid.to_owned(),
        );
        if filter.radius > 0.0 && (point.is_none() || key.d > filter.radius) {
            continue;
        }
        if filter
            .after
            .as_ref()
            .is_some_and(|after| key.rank_cmp(after).is_le())
        {
            continue;
        }
        candidates.push(Candidate { key, hours: None });
    }
    candidates.sort_by(|a, b| a.key.rank_cmp(&b.key));
    Ok(candidates)
}

/// The statement of [`scan_box`]. The candidates come back as one string (fields split by
/// U+0001, rows by U+0002; coordinates printed with 17 digits, so they parse back to the same
/// f64): the driver's cost per row, not SQLite, dominated a search with thousands of rows in
/// its bounding box.
fn scan_query(filter: &CandidateFilter, bounds: Option<BoundingBox>) -> Query<'_> {
    let mut query = with_terms(filter);
    if let Some(text) = &filter.text {
        // Materialized: bm25() works only in the query that reads the FTS table, which SQLite
        // would otherwise flatten into the aggregate below.
        query.push(if filter.taxonomy_codes.is_empty() {
            "WITH "
        } else {
            ", "
        });
        query.push(
            "f AS MATERIALIZED (SELECT service_id, -bm25(services_fts) AS score FROM services_fts \
             WHERE services_fts MATCH ",
        );
        query.push_bind(fts5_expression(text)).push(") ");
    }
    query.push(
        "SELECT group_concat(c.service_id || char(1) || c.location_id || char(1) || c.name || char(1) || \
         CASE WHEN c.latitude IS NULL THEN '' ELSE printf('%.17g', c.latitude) END || char(1) || \
         CASE WHEN c.longitude IS NULL THEN '' ELSE printf('%.17g', c.longitude) END || char(1) || \
         printf('%.17g', c.score), char(2)) FROM (",
    );
    query.push("SELECT r.service_id, r.location_id, r.name, r.latitude, r.longitude, ");
    if filter.text.is_some() {
        query.push(
            "f.score AS score FROM f JOIN search_rows r ON r.service_id = f.service_id WHERE TRUE ",
        );
    } else {
        query.push("0.0 AS score FROM search_rows r WHERE TRUE ");
    }
    if let Some(bounds) = bounds {
        query
            .push("AND r.latitude BETWEEN ")
            .push_bind(bounds.min_latitude);
        query.push(" AND ").push_bind(bounds.max_latitude);
        query
            .push(" AND r.longitude BETWEEN ")
            .push_bind(bounds.min_longitude);
        query
            .push(" AND ")
            .push_bind(bounds.max_longitude)
            .push(" ");
    }
    push_filters(&mut query, filter);
    if filter.text.is_none() && filter.point.is_none() {
        // Name order: page in SQL, on the index search_rows_name.
        if let Some(RankKey {
            n: name,
            s: sid,
            l: lid,
            ..
        }) = &filter.after
        {
            query.push("AND (r.name, r.service_id, r.location_id) > (");
            query.push_bind(name.as_str()).push(", ");
            query.push_bind(sid.as_str()).push(", ");
            query.push_bind(lid.as_str()).push(") ");
        }
        query.push("ORDER BY r.name, r.service_id, r.location_id LIMIT ");
        query.push_bind(filter.limit);
    }
    query.push(") c");
    query
}

/// The taxonomy, language and capacity conditions of [`scan_query`].
fn push_filters<'a>(query: &mut Query<'a>, filter: &'a CandidateFilter) {
    // Terms and languages: a primary-key probe per row into service_taxonomy and languages is
    // cheaper in SQLite than parsing the rows' JSON arrays.
    if !filter.taxonomy_codes.is_empty() {
        query.push(
            "AND EXISTS (SELECT 1 FROM service_taxonomy st WHERE st.service_id = r.service_id \
             AND st.taxonomy_term_id IN (SELECT id FROM terms)) ",
        );
    }
    if !filter.languages.is_empty() {
        query.push(
            "AND EXISTS (SELECT 1 FROM languages lg WHERE lg.service_id = r.service_id AND (",
        );
        for (index, language) in filter.languages.iter().enumerate() {
            if index > 0 {
                query.push(" OR ");
            }
            query.push("lg.code = ").push_bind(language.as_str());
            query
                .push(" OR lg.code LIKE ")
                .push_bind(format!("{language}-%"));
        }
        query.push(")) ");
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
