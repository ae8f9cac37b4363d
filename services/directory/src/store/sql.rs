//! The two SQL backends. Both schemas use the same tables, columns and types (times are
//! BIGINT microseconds), so one body of code, instantiated by [`sql_store!`] for each
//! `sqlx` database, serves both; the few dialect differences (full-text search, collation)
//! branch on `PG`.

use std::collections::HashMap;

use prost::Message;
use relay_proto::common::GeoPoint;
use relay_proto::directory::{
    Address, Capacity, CreateReferralResponse, Organization, Phone, Referral, ReferralStatus,
    Schedule, Service, ServiceLocation, TaxonomyTerm, UpdateCapacityResponse,
    UpdateReferralResponse, UpsertServiceResponse,
};
use sqlx::{QueryBuilder, Row as _};

use super::{
    Applied, Candidate, CandidateFilter, DirectoryStore, Dump, Idem, LocationHours, RankKey,
    ReferralFilter, Row, StoreResult, StoredRequest, WriteSession, transition,
};
use crate::{error::DirectoryError, micros_to_timestamp, timestamp_to_micros};

/// The FTS5 expression for free text: every word, quoted, all required.
fn fts5_expression(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| format!("\"{word}\""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A schedule as the PostgreSQL backend aggregates it to JSON: `[freq, interval, byday,
/// bymonthday, opens_at, closes_at, valid_from, valid_to, dtstart, description]`.
type ScheduleJson = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// The SQL (PostgreSQL) of the JSON array of the schedules that apply to service `service`
/// at location `location` (two SQL expressions), ordered as stored; NULL when none.
fn schedules_json(service: &str, location: &str) -> String {
    format!(
        "(SELECT json_agg(json_build_array(sc.freq, sc.\"interval\", sc.byday, sc.bymonthday, sc.opens_at, \
         sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description) ORDER BY sc.position, sc.id) \
         FROM schedules sc WHERE (sc.service_id = {service} AND (sc.location_id = {location} OR sc.location_id IS NULL)) \
         OR (sc.service_id IS NULL AND sc.location_id = {location}))"
    )
}

/// [`schedules_json`] in SQLite's dialect (an SQL expression, NULL when none).
/// The two halves of the condition are separate SELECTs, each on its own index: SQLite
/// would scan every schedule for the OR of both, per search row.
fn sqlite_schedules_json(service: &str, location: &str) -> String {
    format!(
        "(SELECT json_group_array(json_array(sc.freq, sc.\"interval\", sc.byday, sc.bymonthday, sc.opens_at, \
         sc.closes_at, sc.valid_from, sc.valid_to, sc.dtstart, sc.description) ORDER BY sc.position, sc.id) \
         FROM (SELECT * FROM schedules WHERE service_id = {service} AND (location_id = {location} OR location_id IS NULL) \
         UNION ALL SELECT * FROM schedules WHERE service_id IS NULL AND location_id = {location}) sc HAVING COUNT(*) > 0)"
    )
}

/// The SQL (PostgreSQL) of a service's stored document, for service `service` (an SQL
/// expression): the JSON array `[terms, languages, phones, locations]`, each a JSON array in
/// the order GetService returns them, a location with the schedules that apply to it.
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

/// [`lists_json`] in SQLite's dialect (migration 0004 there): nested arrays go through
/// `json()` (a subquery's result is text to `json_array`), and coordinates are printed with
/// 17 significant digits so they parse back to the same f64.
fn sqlite_lists_json(service: &str) -> String {
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
        sqlite_schedules_json(service, "l.id")
    )
}

fn schedule_of(json: ScheduleJson) -> Schedule {
    let (
        freq,
        interval,
        byday,
        bymonthday,
        opens_at,
        closes_at,
        valid_from,
        valid_to,
        dtstart,
        description,
    ) = json;
    Schedule {
        freq: i32::try_from(freq).unwrap_or(0),
        interval: i32::try_from(interval).unwrap_or(0),
        byday,
        bymonthday,
        opens_at,
        closes_at,
        valid_from,
        valid_to,
        dtstart,
        description,
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(json: &str) -> StoreResult<T> {
    serde_json::from_str(json).map_err(|e| DirectoryError::Corrupt(format!("stored JSON: {e}")))
}

fn decode_schedule_json(json: &str) -> StoreResult<Vec<Schedule>> {
    Ok(decode_json::<Vec<ScheduleJson>>(json)?
        .into_iter()
        .map(schedule_of)
        .collect())
}

/// Ids per statement when a list is bound (well below both databases' limits).
const CHUNK: usize = 500;

macro_rules! sql_store {
    ($store:ident, $session:ident, $db:ty, $pool:ty, $conn:ty, $pg:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $store {
            pool: $pool,
        }

        /// A write transaction of this backend.
        #[derive(Debug)]
        pub struct $session {
            tx: sqlx::Transaction<'static, $db>,
        }

        impl $store {
            const PG: bool = $pg;

            /// A store on `pool` (migrated).
            #[must_use]
            pub fn new(pool: $pool) -> Self {
                Self { pool }
            }

            /// The pool.
            #[must_use]
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            fn push_in<'a>(qb: &mut QueryBuilder<'a, $db>, ids: &'a [String]) {
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(id.as_str());
                }
            }

            async fn record(conn: &mut $conn, idem: &Idem, response: &[u8]) -> StoreResult<()> {
                let result = sqlx::query(
                    "INSERT INTO requests (request_id, rpc, fingerprint, response, create_time) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&idem.request_id)
                .bind(idem.rpc)
                .bind(&idem.fingerprint)
                .bind(response)
                .bind(idem.now)
                .execute(&mut *conn)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(error) if DirectoryError::is_unique_violation(&error) => {
                        Err(DirectoryError::RequestRace(idem.request_id.clone()))
                    }
                    Err(error) => Err(error.into()),
                }
            }

            async fn apply_row(conn: &mut $conn, row: &Row) -> StoreResult<Applied> {
                let affected = match row {
                    Row::Organization { id, name, description, url, email } => sqlx::query(
                        "INSERT INTO organizations (id, name, description, url, email) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
                         url = excluded.url, email = excluded.email",
                    )
                    .bind(id).bind(name).bind(description).bind(url).bind(email)
                    .execute(&mut *conn).await?.rows_affected(),
                    Row::Service(service, update_time) => {
                        let organization_id = service.organization.as_ref().map(|o| o.id.clone()).unwrap_or_default();
                        let affected = sqlx::query(
                            "INSERT INTO services (id, organization_id, name, alternate_name, description, url, email, status, \
                             eligibility_description, fees_description, application_process, alert, create_time, update_time) \
                             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13 \
                             WHERE EXISTS (SELECT 1 FROM organizations WHERE id = $2) \
                             ON CONFLICT (id) DO UPDATE SET organization_id = excluded.organization_id, name = excluded.name, \
                             alternate_name = excluded.alternate_name, description = excluded.description, url = excluded.url, \
                             email = excluded.email, status = excluded.status, eligibility_description = excluded.eligibility_description, \
                             fees_description = excluded.fees_description, application_process = excluded.application_process, \
                             alert = excluded.alert, update_time = excluded.update_time",
                        )
                        .bind(&service.id).bind(&organization_id).bind(&service.name).bind(&service.alternate_name)
                        .bind(&service.description).bind(&service.url).bind(&service.email).bind(i64::from(service.status))
                        .bind(&service.eligibility_description).bind(&service.fees_description)
                        .bind(&service.application_process).bind(&service.alert).bind(*update_time)
                        .execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!("organization_id `{organization_id}` is not an organization of the package")));
                        }
                        affected
                    }
                    Row::TaxonomyTerm(term) => sqlx::query(
                        "INSERT INTO taxonomy_terms (id, code, name, taxonomy, parent_id) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (id) DO UPDATE SET code = excluded.code, name = excluded.name, \
                         taxonomy = excluded.taxonomy, parent_id = excluded.parent_id",
                    )
                    .bind(&term.id).bind(&term.code).bind(&term.name).bind(&term.taxonomy)
                    .bind((!term.parent_id.is_empty()).then_some(term.parent_id.as_str()))
                    .execute(&mut *conn).await?.rows_affected(),
                    Row::ServiceTaxonomy { service_id, term_id } => {
                        let affected = sqlx::query(
                            "INSERT INTO service_taxonomy (service_id, taxonomy_term_id) SELECT $1, $2 \
                             WHERE EXISTS (SELECT 1 FROM services WHERE id = $1) AND EXISTS (SELECT 1 FROM taxonomy_terms WHERE id = $2) \
                             ON CONFLICT (service_id, taxonomy_term_id) DO UPDATE SET service_id = excluded.service_id",
                        )
                        .bind(service_id).bind(term_id).execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!("service `{service_id}` or taxonomy term `{term_id}` does not exist")));
                        }
                        affected
                    }
                    Row::Language { service_id, code, position } => {
                        let affected = sqlx::query(
                            "INSERT INTO languages (service_id, code, position) SELECT $1, $2, $3 \
                             WHERE EXISTS (SELECT 1 FROM services WHERE id = $1) \
                             ON CONFLICT (service_id, code) DO UPDATE SET position = excluded.position",
                        )
                        .bind(service_id).bind(code).bind(*position).execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!("service `{service_id}` does not exist")));
                        }
                        affected
                    }
                    Row::Phone { id, service_id, phone } => {
                        let affected = sqlx::query(
                            "INSERT INTO phones (id, service_id, number, extension, type, description) SELECT $1, $2, $3, $4, $5, $6 \
                             WHERE EXISTS (SELECT 1 FROM services WHERE id = $2) \
                             ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, number = excluded.number, \
                             extension = excluded.extension, type = excluded.type, description = excluded.description",
                        )
                        .bind(id).bind(service_id).bind(&phone.number).bind(&phone.extension).bind(&phone.r#type)
                        .bind(&phone.description).execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!("service `{service_id}` does not exist")));
                        }
                        affected
                    }
                    Row::Location { id, name, point, time_zone } => sqlx::query(
                        "INSERT INTO locations (id, name, latitude, longitude, time_zone) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name, latitude = excluded.latitude, \
                         longitude = excluded.longitude, time_zone = excluded.time_zone",
                    )
                    .bind(id).bind(name).bind(point.map(|p| p.0)).bind(point.map(|p| p.1)).bind(time_zone)
                    .execute(&mut *conn).await?.rows_affected(),
                    Row::Address { location_id, address } => {
                        let affected = sqlx::query(
                            "UPDATE locations SET attention = $2, address_1 = $3, address_2 = $4, city = $5, region = $6, \
                             state_province = $7, postal_code = $8, country = $9, has_address = 1 WHERE id = $1",
                        )
                        .bind(location_id).bind(&address.attention).bind(&address.address_1).bind(&address.address_2)
                        .bind(&address.city).bind(&address.region).bind(&address.state_province)
                        .bind(&address.postal_code).bind(&address.country)
                        .execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!("location `{location_id}` does not exist")));
                        }
                        affected
                    }
                    Row::LocationTimeZone { location_id, time_zone } => sqlx::query(
                        "UPDATE locations SET time_zone = $2 WHERE id = $1",
                    )
                    .bind(location_id).bind(time_zone).execute(&mut *conn).await?.rows_affected().max(1),
                    Row::ServiceAtLocation { id, service_id, location_id, position } => {
                        sqlx::query("DELETE FROM service_at_location WHERE id = $1 AND NOT (service_id = $2 AND location_id = $3)")
                            .bind(id).bind(service_id).bind(location_id).execute(&mut *conn).await?;
                        let affected = sqlx::query(
                            "INSERT INTO service_at_location (service_id, location_id, id, position) SELECT $1, $2, $3, $4 \
                             WHERE EXISTS (SELECT 1 FROM services WHERE id = $1) AND EXISTS (SELECT 1 FROM locations WHERE id = $2) \
                             ON CONFLICT (service_id, location_id) DO UPDATE SET id = excluded.id, position = excluded.position",
                        )
                        .bind(service_id).bind(location_id).bind(id).bind(*position)
                        .execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!("service `{service_id}` or location `{location_id}` does not exist")));
                        }
                        affected
                    }
                    Row::Schedule { id, service_id, location_id, service_at_location_id, position, schedule } => {
                        let (mut service_id, mut location_id) = (service_id.clone(), location_id.clone());
                        if let Some(sal) = service_at_location_id {
                            let found = sqlx::query("SELECT service_id, location_id FROM service_at_location WHERE id = $1")
                                .bind(sal).fetch_optional(&mut *conn).await?;
                            match found {
                                Some(found) => {
                                    service_id = Some(found.try_get(0)?);
                                    location_id = Some(found.try_get(1)?);
                                }
                                None if service_id.is_none() && location_id.is_none() => {
                                    return Ok(Applied::Missing(format!("service_at_location `{sal}` does not exist")));
                                }
                                None => {}
                            }
                        }
                        if service_id.is_none() && location_id.is_none() {
                            return Ok(Applied::Missing("the schedule names no service, location or service_at_location".into()));
                        }
                        let affected = sqlx::query(
                            "INSERT INTO schedules (id, service_id, location_id, position, freq, \"interval\", byday, bymonthday, \
                             opens_at, closes_at, valid_from, valid_to, dtstart, description) \
                             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 \
                             WHERE ($2 IS NULL OR EXISTS (SELECT 1 FROM services WHERE id = $2)) \
                             AND ($3 IS NULL OR EXISTS (SELECT 1 FROM locations WHERE id = $3)) \
                             ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, location_id = excluded.location_id, \
                             position = excluded.position, freq = excluded.freq, \"interval\" = excluded.\"interval\", \
                             byday = excluded.byday, bymonthday = excluded.bymonthday, opens_at = excluded.opens_at, \
                             closes_at = excluded.closes_at, valid_from = excluded.valid_from, valid_to = excluded.valid_to, \
                             dtstart = excluded.dtstart, description = excluded.description",
                        )
                        .bind(id).bind(service_id.as_deref()).bind(location_id.as_deref()).bind(*position)
                        .bind(i64::from(schedule.freq)).bind(i64::from(schedule.interval)).bind(&schedule.byday)
                        .bind(&schedule.bymonthday).bind(&schedule.opens_at).bind(&schedule.closes_at)
                        .bind(&schedule.valid_from).bind(&schedule.valid_to).bind(&schedule.dtstart)
                        .bind(&schedule.description).execute(&mut *conn).await?.rows_affected();
                        if affected == 0 {
                            return Ok(Applied::Missing(format!(
                                "service `{}` or location `{}` does not exist",
                                service_id.unwrap_or_default(), location_id.unwrap_or_default()
                            )));
                        }
                        affected
                    }
                    Row::Capacity { service_id, location_id, capacity } => {
                        // The newer report wins, as UpdateCapacity's staleness rule says.
                        let found = sqlx::query("SELECT 1 FROM service_at_location WHERE service_id = $1 AND location_id = $2")
                            .bind(service_id).bind(location_id).fetch_optional(&mut *conn).await?;
                        if found.is_none() {
                            return Ok(Applied::Missing(format!("service `{service_id}` has no location `{location_id}`")));
                        }
                        sqlx::query(
                            "INSERT INTO capacity (service_id, location_id, available, total, as_of_time) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (service_id, location_id) DO UPDATE SET available = excluded.available, \
                             total = excluded.total, as_of_time = excluded.as_of_time WHERE excluded.as_of_time > capacity.as_of_time",
                        )
                        .bind(service_id).bind(location_id).bind(i64::from(capacity.available)).bind(i64::from(capacity.total))
                        .bind(capacity.as_of_time.as_ref().map_or(0, timestamp_to_micros))
                        .execute(&mut *conn).await?.rows_affected().max(1)
                    }
                };
                let _ = affected;
                Ok(Applied::Stored)
            }

            /// Writes `rows` as [`Self::apply_row`] would one by one, with one multi-row
            /// statement per run of rows of one kind (and distinct ids); the result of each row,
            /// in order. Rows of different kinds are written kind by kind, in the order each
            /// kind first appears, so they must not depend on each other (the importer batches
            /// rows of one file, whose kinds do not).
            async fn apply_rows(conn: &mut $conn, rows: &[Row]) -> StoreResult<Vec<Applied>> {
                let mut out = vec![Applied::Stored; rows.len()];
                let mut kinds: Vec<(std::mem::Discriminant<Row>, Vec<usize>)> = Vec::new();
                for (index, row) in rows.iter().enumerate() {
                    let kind = std::mem::discriminant(row);
                    match kinds.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, indexes)) => indexes.push(index),
                        None => kinds.push((kind, vec![index])),
                    }
                }
                for (_, indexes) in kinds {
                    // A run ends before a row whose id was already in it: a multi-row upsert
                    // may not touch a row twice, and the later row must win.
                    let mut run: Vec<&Row> = Vec::new();
                    let mut run_at: Vec<usize> = Vec::new();
                    let mut seen = std::collections::HashSet::new();
                    for index in indexes {
                        let keys = row_keys(&rows[index]);
                        if run.len() >= BATCH || keys.iter().any(|k| seen.contains(k)) {
                            Self::apply_run(conn, &run, &run_at, &mut out).await?;
                            run.clear();
                            run_at.clear();
                            seen.clear();
                        }
                        seen.extend(keys);
                        run.push(&rows[index]);
                        run_at.push(index);
                    }
                    Self::apply_run(conn, &run, &run_at, &mut out).await?;
                }
                Ok(out)
            }

            /// Runs `head`, the VALUES of `items` (bound by `bind`), then `tail`, and returns
            /// the rows it returns, each as its columns joined by U+0001.
            async fn values<'r, T>(
                conn: &mut $conn,
                head: &str,
                items: impl IntoIterator<Item = T>,
                bind: impl FnMut(sqlx::query_builder::Separated<'_, 'r, $db, &'static str>, T),
                tail: &str,
            ) -> StoreResult<std::collections::HashSet<String>> {
                let mut qb = QueryBuilder::<'r, $db>::new(head);
                qb.push(" FROM (");
                qb.push_values(items, bind);
                qb.push(") AS v ");
                qb.push(tail);
                let mut keys = std::collections::HashSet::new();
                for row in qb.build().fetch_all(&mut *conn).await? {
                    let mut key = Vec::new();
                    for column in 0..row.len() {
                        key.push(row.try_get::<String, _>(column)?);
                    }
                    keys.insert(key.join("\u{1}"));
                }
                Ok(keys)
            }

            /// Writes a run of rows of one kind with distinct ids; sets `out[at[i]]` for the
            /// rows that could not be stored.
            #[allow(clippy::too_many_lines)]
            async fn apply_run(conn: &mut $conn, run: &[&Row], at: &[usize], out: &mut [Applied]) -> StoreResult<()> {
                let Some(first) = run.first() else {
                    return Ok(());
                };
                let stored = match first {
                    Row::Organization { .. } => Self::values(
                        conn,
                        "INSERT INTO organizations (id, name, description, url, email) \
                         SELECT v.column1, v.column2, v.column3, v.column4, v.column5",
                        run.iter().copied(),
                        |mut b, row| if let Row::Organization { id, name, description, url, email } = row {
                            b.push_bind(id).push_bind(name).push_bind(description).push_bind(url).push_bind(email);
                        },
                        "WHERE TRUE ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
                         url = excluded.url, email = excluded.email RETURNING id",
                    ).await?,
                    Row::Service(..) => Self::values(
                        conn,
                        "INSERT INTO services (id, organization_id, name, alternate_name, description, url, email, status, \
                         eligibility_description, fees_description, application_process, alert, create_time, update_time) \
                         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, \
                         v.column9, v.column10, v.column11, v.column12, v.column13, v.column13",
                        run.iter().copied(),
                        |mut b, row| if let Row::Service(service, update_time) = row {
                            b.push_bind(&service.id)
                                .push_bind(service.organization.as_ref().map_or("", |o| o.id.as_str()))
                                .push_bind(&service.name).push_bind(&service.alternate_name)
                                .push_bind(&service.description).push_bind(&service.url).push_bind(&service.email)
                                .push_bind(i64::from(service.status)).push_bind(&service.eligibility_description)
                                .push_bind(&service.fees_description).push_bind(&service.application_process)
                                .push_bind(&service.alert).push_bind(*update_time);
                        },
                        "WHERE EXISTS (SELECT 1 FROM organizations WHERE id = v.column2) \
                         ON CONFLICT (id) DO UPDATE SET organization_id = excluded.organization_id, name = excluded.name, \
                         alternate_name = excluded.alternate_name, description = excluded.description, url = excluded.url, \
                         email = excluded.email, status = excluded.status, eligibility_description = excluded.eligibility_description, \
                         fees_description = excluded.fees_description, application_process = excluded.application_process, \
                         alert = excluded.alert, update_time = excluded.update_time RETURNING id",
                    ).await?,
                    Row::TaxonomyTerm(_) => Self::values(
                        conn,
                        "INSERT INTO taxonomy_terms (id, code, name, taxonomy, parent_id) \
                         SELECT v.column1, v.column2, v.column3, v.column4, v.column5",
                        run.iter().copied(),
                        |mut b, row| if let Row::TaxonomyTerm(term) = row {
                            b.push_bind(&term.id).push_bind(&term.code).push_bind(&term.name).push_bind(&term.taxonomy)
                                .push_bind((!term.parent_id.is_empty()).then_some(term.parent_id.as_str()));
                        },
                        "WHERE TRUE ON CONFLICT (id) DO UPDATE SET code = excluded.code, name = excluded.name, \
                         taxonomy = excluded.taxonomy, parent_id = excluded.parent_id RETURNING id",
                    ).await?,
                    Row::ServiceTaxonomy { .. } => Self::values(
                        conn,
                        "INSERT INTO service_taxonomy (service_id, taxonomy_term_id) SELECT v.column1, v.column2",
                        run.iter().copied(),
                        |mut b, row| if let Row::ServiceTaxonomy { service_id, term_id } = row {
                            b.push_bind(service_id).push_bind(term_id);
                        },
                        "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column1) \
                         AND EXISTS (SELECT 1 FROM taxonomy_terms WHERE id = v.column2) \
                         ON CONFLICT (service_id, taxonomy_term_id) DO UPDATE SET service_id = excluded.service_id \
                         RETURNING service_id, taxonomy_term_id",
                    ).await?,
                    Row::Language { .. } => Self::values(
                        conn,
                        "INSERT INTO languages (service_id, code, position) SELECT v.column1, v.column2, v.column3",
                        run.iter().copied(),
                        |mut b, row| if let Row::Language { service_id, code, position } = row {
                            b.push_bind(service_id).push_bind(code).push_bind(*position);
                        },
                        "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column1) \
                         ON CONFLICT (service_id, code) DO UPDATE SET position = excluded.position RETURNING service_id, code",
                    ).await?,
                    Row::Phone { .. } => Self::values(
                        conn,
                        "INSERT INTO phones (id, service_id, number, extension, type, description) \
                         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6",
                        run.iter().copied(),
                        |mut b, row| if let Row::Phone { id, service_id, phone } = row {
                            b.push_bind(id).push_bind(service_id).push_bind(&phone.number).push_bind(&phone.extension)
                                .push_bind(&phone.r#type).push_bind(&phone.description);
                        },
                        "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column2) \
                         ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, number = excluded.number, \
                         extension = excluded.extension, type = excluded.type, description = excluded.description RETURNING id",
                    ).await?,
                    Row::Location { .. } => Self::values(
                        conn,
                        "INSERT INTO locations (id, name, latitude, longitude, time_zone) \
                         SELECT v.column1, v.column2, v.column3, v.column4, v.column5",
                        run.iter().copied(),
                        |mut b, row| if let Row::Location { id, name, point, time_zone } = row {
                            b.push_bind(id).push_bind(name).push_bind(point.map(|p| p.0)).push_bind(point.map(|p| p.1))
                                .push_bind(time_zone);
                        },
                        "WHERE TRUE ON CONFLICT (id) DO UPDATE SET name = excluded.name, latitude = excluded.latitude, \
                         longitude = excluded.longitude, time_zone = excluded.time_zone RETURNING id",
                    ).await?,
                    Row::Address { .. } => Self::values(
                        conn,
                        "UPDATE locations SET attention = v.column2, address_1 = v.column3, address_2 = v.column4, \
                         city = v.column5, region = v.column6, state_province = v.column7, postal_code = v.column8, \
                         country = v.column9, has_address = 1",
                        run.iter().copied(),
                        |mut b, row| if let Row::Address { location_id, address } = row {
                            b.push_bind(location_id).push_bind(&address.attention).push_bind(&address.address_1)
                                .push_bind(&address.address_2).push_bind(&address.city).push_bind(&address.region)
                                .push_bind(&address.state_province).push_bind(&address.postal_code).push_bind(&address.country);
                        },
                        "WHERE locations.id = v.column1 RETURNING id",
                    ).await?,
                    Row::LocationTimeZone { .. } => {
                        Self::values(
                            conn,
                            "UPDATE locations SET time_zone = v.column2",
                            run.iter().copied(),
                            |mut b, row| if let Row::LocationTimeZone { location_id, time_zone } = row {
                                b.push_bind(location_id).push_bind(time_zone);
                            },
                            "WHERE locations.id = v.column1",
                        ).await?;
                        // Like apply_row: a time zone for an unknown location is not an error.
                        return Ok(());
                    }
                    Row::ServiceAtLocation { .. } => {
                        // An id moving to another (service, location) leaves its old pair.
                        Self::values(
                            conn,
                            // Driven by the batch, through the unique index on id: an EXISTS over
                            // the VALUES per stored row made SQLite's import quadratic.
                            "DELETE FROM service_at_location WHERE id IN (SELECT sal.id",
                            run.iter().copied(),
                            |mut b, row| if let Row::ServiceAtLocation { id, service_id, location_id, .. } = row {
                                b.push_bind(id).push_bind(service_id).push_bind(location_id);
                            },
                            "JOIN service_at_location sal ON sal.id = v.column1 \
                             WHERE NOT (v.column2 = sal.service_id AND v.column3 = sal.location_id))",
                        ).await?;
                        Self::values(
                            conn,
                            "INSERT INTO service_at_location (service_id, location_id, id, position) \
                             SELECT v.column1, v.column2, v.column3, v.column4",
                            run.iter().copied(),
                            |mut b, row| if let Row::ServiceAtLocation { id, service_id, location_id, position } = row {
                                b.push_bind(service_id).push_bind(location_id).push_bind(id).push_bind(*position);
                            },
                            "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column1) \
                             AND EXISTS (SELECT 1 FROM locations WHERE id = v.column2) \
                             ON CONFLICT (service_id, location_id) DO UPDATE SET id = excluded.id, position = excluded.position \
                             RETURNING id",
                        ).await?
                    }
                    Row::Schedule { .. } => return Self::apply_schedules(conn, run, at, out).await,
                    Row::Capacity { .. } => {
                        // Few rows (one per reporting location): one statement each.
                        for (row, &index) in run.iter().zip(at) {
                            out[index] = Self::apply_row(conn, row).await?;
                        }
                        return Ok(());
                    }
                };
                for (row, &index) in run.iter().zip(at) {
                    if let Some(reason) = missing_reason(row, &stored) {
                        out[index] = Applied::Missing(reason);
                    }
                }
                Ok(())
            }

            /// [`Self::apply_run`] for schedules: resolves their service_at_location ids in one
            /// query, then inserts them in one statement.
            async fn apply_schedules(conn: &mut $conn, run: &[&Row], at: &[usize], out: &mut [Applied]) -> StoreResult<()> {
                let sal_ids: Vec<String> = run
                    .iter()
                    .filter_map(|row| match row {
                        Row::Schedule { service_at_location_id: Some(sal), .. } => Some(sal.clone()),
                        _ => None,
                    })
                    .collect();
                let mut pairs = HashMap::new();
                if !sal_ids.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("SELECT id, service_id, location_id FROM service_at_location WHERE id IN (");
                    Self::push_in(&mut qb, &sal_ids);
                    qb.push(")");
                    for row in qb.build().fetch_all(&mut *conn).await? {
                        pairs.insert(row.try_get::<String, _>(0)?, (row.try_get::<String, _>(1)?, row.try_get::<String, _>(2)?));
                    }
                }
                // (index in out, id, service, location, position, schedule) of the rows to write.
                let mut resolved = Vec::new();
                for (row, &index) in run.iter().zip(at) {
                    let Row::Schedule { id, service_id, location_id, service_at_location_id, position, schedule } = row else {
                        continue;
                    };
                    let (mut service_id, mut location_id) = (service_id.clone(), location_id.clone());
                    if let Some(sal) = service_at_location_id {
                        match pairs.get(sal) {
                            Some((s, l)) => {
                                service_id = Some(s.clone());
                                location_id = Some(l.clone());
                            }
                            None if service_id.is_none() && location_id.is_none() => {
                                out[index] = Applied::Missing(format!("service_at_location `{sal}` does not exist"));
                                continue;
                            }
                            None => {}
                        }
                    }
                    if service_id.is_none() && location_id.is_none() {
                        out[index] = Applied::Missing("the schedule names no service, location or service_at_location".into());
                        continue;
                    }
                    resolved.push((index, id, service_id, location_id, *position, schedule));
                }
                if resolved.is_empty() {
                    return Ok(());
                }
                let stored = Self::values(
                    conn,
                    "INSERT INTO schedules (id, service_id, location_id, position, freq, \"interval\", byday, bymonthday, \
                     opens_at, closes_at, valid_from, valid_to, dtstart, description) \
                     SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, \
                     v.column9, v.column10, v.column11, v.column12, v.column13, v.column14",
                    resolved.iter(),
                    |mut b, (_, id, service_id, location_id, position, schedule)| {
                        b.push_bind(id.as_str()).push_bind(service_id.clone()).push_bind(location_id.clone()).push_bind(*position)
                            .push_bind(i64::from(schedule.freq)).push_bind(i64::from(schedule.interval))
                            .push_bind(schedule.byday.as_str()).push_bind(schedule.bymonthday.as_str())
                            .push_bind(schedule.opens_at.as_str()).push_bind(schedule.closes_at.as_str())
                            .push_bind(schedule.valid_from.as_str()).push_bind(schedule.valid_to.as_str())
                            .push_bind(schedule.dtstart.as_str()).push_bind(schedule.description.as_str());
                    },
                    "WHERE (v.column2 IS NULL OR EXISTS (SELECT 1 FROM services WHERE id = v.column2)) \
                     AND (v.column3 IS NULL OR EXISTS (SELECT 1 FROM locations WHERE id = v.column3)) \
                     ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, location_id = excluded.location_id, \
                     position = excluded.position, freq = excluded.freq, \"interval\" = excluded.\"interval\", \
                     byday = excluded.byday, bymonthday = excluded.bymonthday, opens_at = excluded.opens_at, \
                     closes_at = excluded.closes_at, valid_from = excluded.valid_from, valid_to = excluded.valid_to, \
                     dtstart = excluded.dtstart, description = excluded.description RETURNING id",
                )
                .await?;
                for (index, id, service_id, location_id, ..) in resolved {
                    if !stored.contains(id.as_str()) {
                        out[index] = Applied::Missing(format!(
                            "service `{}` or location `{}` does not exist",
                            service_id.unwrap_or_default(),
                            location_id.unwrap_or_default()
                        ));
                    }
                }
                Ok(())
            }

            /// Recomputes search text for the services matched by `condition` (a WHERE clause
            /// on `services` with `$1`, `$2` bound to `a`, `b`), and their full-text entries
            /// (SQLite) or search rows (PostgreSQL).
            async fn refresh_search(conn: &mut $conn, condition: &str, a: &str, b: &str) -> StoreResult<()> {
                let text = if Self::PG {
                    "concat_ws(' ', name, alternate_name, description, \
                     (SELECT o.name FROM organizations o WHERE o.id = services.organization_id), \
                     (SELECT string_agg(t.name, ' ') FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id \
                      WHERE st.service_id = services.id))"
                } else {
                    "name || ' ' || alternate_name || ' ' || description || ' ' || \
                     COALESCE((SELECT o.name FROM organizations o WHERE o.id = services.organization_id), '') || ' ' || \
                     COALESCE((SELECT group_concat(t.name, ' ') FROM service_taxonomy st JOIN taxonomy_terms t ON t.id = st.taxonomy_term_id \
                      WHERE st.service_id = services.id), '')"
                };
                let update = format!("UPDATE services SET search_text = {text} WHERE {condition}");
                sqlx::query(&update).bind(a).bind(b).execute(&mut *conn).await?;
                if Self::PG {
                    // Rows are written in cells of 0.02 degrees (about 2 km), so that the rows
                    // of a radius search lie in few pages after an import.
                    let delete = format!("DELETE FROM search_rows WHERE service_id IN (SELECT id FROM services WHERE {condition})");
                    sqlx::query(&delete).bind(a).bind(b).execute(&mut *conn).await?;
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
                    sqlx::query(&insert).bind(a).bind(b).execute(&mut *conn).await?;
                } else {
                    // The same search rows as PostgreSQL's, in SQLite's dialect: term ids and
                    // language codes as JSON arrays (filtered with json_each), no text vector
                    // (services_fts is the text index).
                    let delete = format!("DELETE FROM search_rows WHERE service_id IN (SELECT id FROM services WHERE {condition})");
                    sqlx::query(&delete).bind(a).bind(b).execute(&mut *conn).await?;
                    let insert = format!(
                        "INSERT INTO search_rows (service_id, location_id, name, latitude, longitude, time_zone, term_ids, languages, schedules) \
                         SELECT s.id, COALESCE(sal.location_id, ''), s.name, l.latitude, l.longitude, COALESCE(l.time_zone, ''), \
                         (SELECT json_group_array(st.taxonomy_term_id) FROM service_taxonomy st WHERE st.service_id = s.id), \
                         (SELECT json_group_array(lg.code) FROM languages lg WHERE lg.service_id = s.id), \
                         COALESCE({}, '[]') \
                         FROM services s LEFT JOIN service_at_location sal ON sal.service_id = s.id \
                         LEFT JOIN locations l ON l.id = sal.location_id \
                         WHERE s.status = 1 AND s.id IN (SELECT id FROM services WHERE {condition})",
                        sqlite_schedules_json("s.id", "sal.location_id")
                    );
                    sqlx::query(&insert).bind(a).bind(b).execute(&mut *conn).await?;
                    let delete = format!("DELETE FROM services_fts WHERE service_id IN (SELECT id FROM services WHERE {condition})");
                    sqlx::query(&delete).bind(a).bind(b).execute(&mut *conn).await?;
                    let insert = format!("INSERT INTO services_fts (service_id, body) SELECT id, search_text FROM services WHERE {condition}");
                    sqlx::query(&insert).bind(a).bind(b).execute(&mut *conn).await?;
                }
                let delete = format!("DELETE FROM service_documents WHERE service_id IN (SELECT id FROM services WHERE {condition})");
                sqlx::query(&delete).bind(a).bind(b).execute(&mut *conn).await?;
                let lists = if Self::PG { lists_json("s.id") } else { sqlite_lists_json("s.id") };
                let insert = format!(
                    "INSERT INTO service_documents (service_id, lists) SELECT s.id, {lists} FROM services s \
                     WHERE s.id IN (SELECT id FROM services WHERE {condition})"
                );
                sqlx::query(&insert).bind(a).bind(b).execute(&mut *conn).await?;
                Ok(())
            }

            async fn load_services(conn: &mut $conn, ids: &[String]) -> StoreResult<Vec<Service>> {
                let mut by_id: HashMap<String, Service> = HashMap::new();
                for chunk in ids.chunks(CHUNK) {
                    Self::load_chunk_json(conn, chunk, &mut by_id).await?;
                }
                Ok(ids.iter().filter_map(|id| by_id.get(id).cloned()).collect())
            }

            /// Loads services in one statement: each row carries its stored document (terms,
            /// languages, phones, locations with schedules; see [`lists_json`] and
            /// [`sqlite_lists_json`]) and its live capacity as JSON.
            async fn load_chunk_json(conn: &mut $conn, ids: &[String], out: &mut HashMap<String, Service>) -> StoreResult<()> {
                let capacity = if Self::PG {
                    "(SELECT json_agg(json_build_array(c.location_id, c.available, c.total, c.as_of_time)) \
                     FROM capacity c WHERE c.service_id = s.id)::text"
                } else {
                    "(SELECT json_group_array(json_array(c.location_id, c.available, c.total, c.as_of_time)) \
                     FROM capacity c WHERE c.service_id = s.id)"
                };
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT s.id, s.organization_id, COALESCE(o.name, ''), COALESCE(o.description, ''), COALESCE(o.url, ''), \
                     COALESCE(o.email, ''), s.name, s.alternate_name, s.description, s.url, s.email, s.status, \
                     s.eligibility_description, s.fees_description, s.application_process, s.alert, s.create_time, s.update_time, \
                     COALESCE(d.lists, '[[], [], [], []]'), COALESCE({capacity}, '[]') \
                     FROM services s LEFT JOIN organizations o ON o.id = s.organization_id \
                     LEFT JOIN service_documents d ON d.service_id = s.id WHERE s.id IN ("
                ));
                Self::push_in(&mut qb, ids);
                qb.push(")");
                type LocationJson = (
                    String, String, Option<f64>, Option<f64>, String, String, String, String, String, String, String,
                    String, String, i64, Vec<ScheduleJson>,
                );
                type Lists = (Vec<(String, String, String, String, String)>, Vec<String>, Vec<(String, String, String, String)>, Vec<LocationJson>);
                for row in qb.build().fetch_all(&mut *conn).await? {
                    let mut service = Self::decode_service(&row)?;
                    let (terms, languages, phones, locations): Lists = decode_json(&row.try_get::<String, _>(18)?)?;
                    let capacity: Vec<(String, i64, i64, i64)> = decode_json(&row.try_get::<String, _>(19)?)?;
                    service.taxonomy_terms = terms
                        .into_iter()
                        .map(|(id, code, name, taxonomy, parent_id)| TaxonomyTerm { id, code, name, taxonomy, parent_id })
                        .collect();
                    service.languages = languages;
                    service.phones = phones
                        .into_iter()
                        .map(|(number, extension, r#type, description)| Phone { number, extension, r#type, description })
                        .collect();
                    service.locations = locations
                        .into_iter()
                        .map(|l| {
                            let location_id = l.0;
                            ServiceLocation {
                                location_id: location_id.clone(),
                                name: l.1,
                                point: l.2.zip(l.3).map(|(latitude, longitude)| GeoPoint { latitude, longitude }),
                                time_zone: l.4,
                                address: (l.13 != 0).then(|| Address {
                                    attention: l.5,
                                    address_1: l.6,
                                    address_2: l.7,
                                    city: l.8,
                                    region: l.9,
                                    state_province: l.10,
                                    postal_code: l.11,
                                    country: l.12,
                                }),
                                capacity: capacity.iter().find(|c| c.0 == location_id).map(|&(_, available, total, as_of)| Capacity {
                                    available: i32::try_from(available).unwrap_or(i32::MAX),
                                    total: i32::try_from(total).unwrap_or(i32::MAX),
                                    as_of_time: Some(micros_to_timestamp(as_of)),
                                }),
                                schedules: l.14.into_iter().map(schedule_of).collect(),
                            }
                        })
                        .collect();
                    out.insert(service.id.clone(), service);
                }
                Ok(())
            }

            /// The service columns (0 to 17) of a load query, without its lists.
            fn decode_service(row: &<$db as sqlx::Database>::Row) -> StoreResult<Service> {
                let status: i64 = row.try_get(11)?;
                Ok(Service {
                    id: row.try_get(0)?,
                    organization: Some(Organization {
                        id: row.try_get(1)?,
                        name: row.try_get(2)?,
                        description: row.try_get(3)?,
                        url: row.try_get(4)?,
                        email: row.try_get(5)?,
                    }),
                    name: row.try_get(6)?,
                    alternate_name: row.try_get(7)?,
                    description: row.try_get(8)?,
                    url: row.try_get(9)?,
                    email: row.try_get(10)?,
                    status: i32::try_from(status).unwrap_or(0),
                    eligibility_description: row.try_get(12)?,
                    fees_description: row.try_get(13)?,
                    application_process: row.try_get(14)?,
                    alert: row.try_get(15)?,
                    create_time: Some(micros_to_timestamp(row.try_get(16)?)),
                    update_time: Some(micros_to_timestamp(row.try_get(17)?)),
                    ..Service::default()
                })
            }

            /// A query that starts with `terms(id)`, the ids of the terms with the filter's
            /// taxonomy codes and of their descendants, when it has codes.
            fn with_terms(filter: &CandidateFilter) -> QueryBuilder<'_, $db> {
                let mut qb = QueryBuilder::<$db>::new("");
                if !filter.taxonomy_codes.is_empty() {
                    qb.push("WITH RECURSIVE terms(id) AS (SELECT id FROM taxonomy_terms WHERE code IN (");
                    Self::push_in(&mut qb, &filter.taxonomy_codes);
                    qb.push(") UNION SELECT c.id FROM taxonomy_terms c JOIN terms ON c.parent_id = terms.id) ");
                }
                qb
            }

            /// The candidates of `filter` from `search_rows` (SQLite, `relay dev`), best first,
            /// at most `filter.limit`, with their opening hours (read from the same rows by
            /// primary key).
            ///
            /// SQLite has no trigonometry, so exact distances are computed here, for the rows
            /// a bounding box lets through. A search ordered by distance (a point and a radius,
            /// no text) reads growing boxes around its point: the box of radius `r` holds
            /// every row within `r`, so once at least `limit` rows within `r` follow the page's
            /// last key, no row outside can rank before them. A 5 km search in a dense metro
            /// then ranks a few hundred rows instead of thousands.
            async fn scanned_candidates(&self, filter: &CandidateFilter) -> StoreResult<Vec<Candidate>> {
                let limit = usize::try_from(filter.limit).unwrap_or(0);
                let mut candidates = match filter.point {
                    Some(point) if filter.text.is_none() && filter.radius > 0.0 => {
                        // A quarter of the radius first (a sixteenth of the area), and not less
                        // than twice the distance a next page starts from.
                        let after = filter.after.as_ref().map_or(0.0, |after| after.d);
                        let mut within = (filter.radius / 4.0).max(after * 2.0);
                        loop {
                            if within >= filter.radius {
                                break self.scan_box(filter, filter.bounding_box).await?;
                            }
                            let mut found = self.scan_box(filter, Some(crate::handler::bounding_box(point, within))).await?;
                            found.retain(|c| c.key.d <= within);
                            if found.len() >= limit {
                                break found;
                            }
                            within *= 2.0;
                        }
                    }
                    _ => self.scan_box(filter, filter.bounding_box).await?,
                };
                candidates.truncate(limit);
                // The hours of the kept candidates, from their search rows.
                let mut hours = HashMap::new();
                // By service id, the primary key's prefix (a row-value IN over VALUES made
                // SQLite scan the table); rows of other locations are dropped below.
                let mut services: Vec<String> = candidates.iter().map(|c| c.key.s.clone()).collect();
                services.sort();
                services.dedup();
                for chunk in services.chunks(CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "SELECT service_id, location_id, time_zone, schedules FROM search_rows WHERE service_id IN (",
                    );
                    Self::push_in(&mut qb, chunk);
                    qb.push(")");
                    for row in qb.build().fetch_all(&self.pool).await? {
                        let schedules: String = row.try_get(3)?;
                        hours.insert(
                            (row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?),
                            LocationHours { time_zone: row.try_get(2)?, schedules: decode_schedule_json(&schedules)? },
                        );
                    }
                }
                for candidate in &mut candidates {
                    candidate.hours = hours.remove(&(candidate.key.s.clone(), candidate.key.l.clone()));
                }
                Ok(candidates)
            }

            /// The rows of `filter` in `bounding_box` (index on latitude, longitude; text
            /// through FTS5), filtered in SQL, ranked here with [`RankKey::of`], within the
            /// radius and after the page's last key, best first (not limited, except in name
            /// order, which pages in SQL).
            async fn scan_box(
                &self,
                filter: &CandidateFilter,
                bounding_box: Option<(f64, f64, f64, f64)>,
            ) -> StoreResult<Vec<Candidate>> {
                // The candidates come back as one string (fields split by U+0001, rows by
                // U+0002; coordinates printed with 17 digits, so they parse back to the same
                // f64): the driver's cost per row, not SQLite, dominated a search with
                // thousands of rows in its bounding box.
                let mut qb = Self::with_terms(filter);
                if let Some(text) = &filter.text {
                    // Materialized: bm25() works only in the query that reads the FTS table,
                    // which SQLite would otherwise flatten into the aggregate below.
                    qb.push(if filter.taxonomy_codes.is_empty() { "WITH " } else { ", " });
                    qb.push("f AS MATERIALIZED (SELECT service_id, -bm25(services_fts) AS score FROM services_fts WHERE services_fts MATCH ");
                    qb.push_bind(fts5_expression(text));
                    qb.push(") ");
                }
                qb.push(
                    "SELECT group_concat(c.service_id || char(1) || c.location_id || char(1) || c.name || char(1) || \
                     CASE WHEN c.latitude IS NULL THEN '' ELSE printf('%.17g', c.latitude) END || char(1) || \
                     CASE WHEN c.longitude IS NULL THEN '' ELSE printf('%.17g', c.longitude) END || char(1) || \
                     printf('%.17g', c.score), char(2)) FROM (",
                );
                qb.push("SELECT r.service_id, r.location_id, r.name, r.latitude, r.longitude, ");
                if filter.text.is_some() {
                    qb.push("f.score AS score FROM f JOIN search_rows r ON r.service_id = f.service_id WHERE TRUE ");
                } else {
                    qb.push("0.0 AS score FROM search_rows r WHERE TRUE ");
                }
                if let Some((min_lat, max_lat, min_lon, max_lon)) = bounding_box {
                    qb.push("AND r.latitude BETWEEN ");
                    qb.push_bind(min_lat);
                    qb.push(" AND ");
                    qb.push_bind(max_lat);
                    qb.push(" AND r.longitude BETWEEN ");
                    qb.push_bind(min_lon);
                    qb.push(" AND ");
                    qb.push_bind(max_lon);
                    qb.push(" ");
                }
                // Terms and languages: a primary-key probe per row into service_taxonomy and
                // languages is cheaper in SQLite than parsing the rows' JSON arrays.
                if !filter.taxonomy_codes.is_empty() {
                    qb.push("AND EXISTS (SELECT 1 FROM service_taxonomy st WHERE st.service_id = r.service_id \
                             AND st.taxonomy_term_id IN (SELECT id FROM terms)) ");
                }
                if !filter.languages.is_empty() {
                    qb.push("AND EXISTS (SELECT 1 FROM languages lg WHERE lg.service_id = r.service_id AND (");
                    for (index, language) in filter.languages.iter().enumerate() {
                        if index > 0 {
                            qb.push(" OR ");
                        }
                        qb.push("lg.code = ");
                        qb.push_bind(language.as_str());
                        qb.push(" OR lg.code LIKE ");
                        qb.push_bind(format!("{language}-%"));
                    }
                    qb.push(")) ");
                }
                if filter.accepting_only {
                    // The contract: exclude only locations whose report says full; those
                    // that never report capacity are kept.
                    qb.push("AND NOT EXISTS (SELECT 1 FROM capacity c WHERE c.service_id = r.service_id AND c.location_id = r.location_id AND c.available <= 0) ");
                }
                if filter.text.is_none() && filter.point.is_none() {
                    // Name order: page in SQL, on the index search_rows_name.
                    if let Some(RankKey { n: name, s: sid, l: lid, .. }) = &filter.after {
                        qb.push("AND (r.name, r.service_id, r.location_id) > (");
                        qb.push_bind(name.as_str());
                        qb.push(", ");
                        qb.push_bind(sid.as_str());
                        qb.push(", ");
                        qb.push_bind(lid.as_str());
                        qb.push(") ");
                    }
                    qb.push("ORDER BY r.name, r.service_id, r.location_id LIMIT ");
                    qb.push_bind(filter.limit);
                }
                qb.push(") c");
                let joined: Option<String> = qb.build().fetch_one(&self.pool).await?.try_get(0)?;
                let joined = joined.unwrap_or_default();
                let mut candidates = Vec::new();
                for row in joined.split('\u{2}').filter(|row| !row.is_empty()) {
                    let fields: Vec<&str> = row.split('\u{1}').collect();
                    let [sid, lid, name, latitude, longitude, score] = fields[..] else {
                        return Err(DirectoryError::Corrupt(format!("search row `{row}`")));
                    };
                    let number = |text: &str| text.parse::<f64>().ok();
                    let point = number(latitude).zip(number(longitude));
                    let score = number(score).unwrap_or(0.0);
                    let key = RankKey::of(filter, score, point, name.to_owned(), sid.to_owned(), lid.to_owned());
                    if filter.radius > 0.0 && (point.is_none() || key.d > filter.radius) {
                        continue;
                    }
                    if filter.after.as_ref().is_some_and(|after| key.rank_cmp(after).is_le()) {
                        continue;
                    }
                    candidates.push(Candidate { key, hours: None });
                }
                candidates.sort_by(|a, b| a.key.rank_cmp(&b.key));
                Ok(candidates)
            }

            /// The candidates of `filter` from `search_rows` (PostgreSQL), filtered, ranked,
            /// paged and limited in one statement; the key's relevance and distance are
            /// computed in SQL with the same arithmetic as [`RankKey::of`].
            #[allow(clippy::too_many_lines)]
            async fn ranked_candidates(&self, filter: &CandidateFilter) -> StoreResult<Vec<Candidate>> {
                let mut qb = Self::with_terms(filter);
                qb.push("SELECT service_id, location_id, name, time_zone, schedules, rk, d FROM (SELECT r.service_id, r.location_id, r.name, r.time_zone, r.schedules, ");
                if filter.text.is_some() {
                    // -(score / (score + 1)) with score = max(ts_rank_cd, 0), as RankKey::of.
                    qb.push("-(GREATEST(ts_rank_cd(r.search_vector, q, 32)::float8, 0.0::float8) / (GREATEST(ts_rank_cd(r.search_vector, q, 32)::float8, 0.0::float8) + 1.0::float8)) AS rk, ");
                } else {
                    qb.push("-1.0::float8 AS rk, ");
                }
                if let Some((latitude, longitude)) = filter.point {
                    // Haversine, operation for operation as crate::handler::distance_meters.
                    let k = std::f64::consts::PI / 180.0;
                    let lat1 = latitude.to_radians();
                    let lon1 = longitude.to_radians();
                    qb.push("COALESCE(");
                    qb.push_bind(2.0 * crate::handler::EARTH_RADIUS_METERS);
                    qb.push(" * asin(LEAST(sqrt(h.a * h.a + ");
                    qb.push_bind(lat1.cos());
                    qb.push(" * h.c * (h.b * h.b)), 1.0::float8)), 0.0::float8) AS d ");
                    qb.push("FROM search_rows r CROSS JOIN LATERAL (SELECT sin((r.latitude * ");
                    qb.push_bind(k);
                    qb.push(" - ");
                    qb.push_bind(lat1);
                    qb.push(") / 2.0::float8) AS a, sin((r.longitude * ");
                    qb.push_bind(k);
                    qb.push(" - ");
                    qb.push_bind(lon1);
                    qb.push(") / 2.0::float8) AS b, cos(r.latitude * ");
                    qb.push_bind(k);
                    qb.push(") AS c) AS h ");
                } else {
                    qb.push("0.0::float8 AS d FROM search_rows r ");
                }
                if let Some(text) = &filter.text {
                    qb.push("CROSS JOIN websearch_to_tsquery('english', ");
                    qb.push_bind(text.as_str());
                    qb.push(") AS q WHERE r.search_vector @@ q ");
                } else {
                    qb.push("WHERE TRUE ");
                }
                if let Some((min_lat, max_lat, min_lon, max_lon)) = filter.bounding_box {
                    // Matches the GiST expression index search_rows_point.
                    qb.push("AND point(r.longitude, r.latitude) <@ box(point(");
                    qb.push_bind(min_lon);
                    qb.push(", ");
                    qb.push_bind(min_lat);
                    qb.push("), point(");
                    qb.push_bind(max_lon);
                    qb.push(", ");
                    qb.push_bind(max_lat);
                    qb.push(")) ");
                }
                if !filter.taxonomy_codes.is_empty() {
                    qb.push("AND r.term_ids && ARRAY(SELECT id FROM terms) ");
                }
                if !filter.languages.is_empty() {
                    qb.push("AND r.languages && ARRAY[");
                    Self::push_in(&mut qb, &filter.languages);
                    qb.push("]::text[] ");
                }
                if filter.accepting_only {
                    // As above: only a report of no places excludes a location.
                    qb.push("AND NOT EXISTS (SELECT 1 FROM capacity c WHERE c.service_id = r.service_id AND c.location_id = r.location_id AND c.available <= 0) ");
                }
                qb.push(") AS c WHERE TRUE ");
                if filter.radius > 0.0 {
                    qb.push("AND d <= ");
                    qb.push_bind(filter.radius);
                    qb.push(" ");
                }
                // Name order (no text, no point) is the key order of the name index.
                let ranked = filter.text.is_some() || filter.point.is_some();
                let name = if filter.text.is_none() { "name COLLATE \"C\", " } else { "" };
                let order = format!("{}{name}service_id COLLATE \"C\", location_id COLLATE \"C\"", if ranked { "rk, d, " } else { "" });
                if let Some(after) = &filter.after {
                    qb.push(format!("AND ({order}) > ("));
                    let mut key = qb.separated(", ");
                    if ranked {
                        key.push_bind(after.r);
                        key.push_bind(after.d);
                    }
                    if filter.text.is_none() {
                        key.push_bind(after.n.as_str());
                    }
                    key.push_bind(after.s.as_str());
                    key.push_bind(after.l.as_str());
                    qb.push(") ");
                }
                qb.push(format!("ORDER BY {order} LIMIT "));
                qb.push_bind(filter.limit);
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        let name: String = row.try_get(2)?;
                        let schedules: String = row.try_get(4)?;
                        Ok(Candidate {
                            key: RankKey {
                                r: row.try_get(5)?,
                                d: row.try_get(6)?,
                                n: if filter.text.is_none() { name } else { String::new() },
                                s: row.try_get(0)?,
                                l: row.try_get(1)?,
                            },
                            hours: Some(LocationHours {
                                time_zone: row.try_get(3)?,
                                schedules: decode_schedule_json(&schedules)?,
                            }),
                        })
                    })
                    .collect()
            }

            const SCHEDULE_COLUMNS: &'static str =
                "SELECT service_id, location_id, freq, \"interval\", byday, bymonthday, opens_at, closes_at, valid_from, \
                 valid_to, dtstart, description FROM schedules";

            #[allow(clippy::type_complexity)]
            fn decode_schedules(
                rows: Vec<<$db as sqlx::Database>::Row>,
            ) -> StoreResult<Vec<(Option<String>, Option<String>, Schedule)>> {
                rows.iter()
                    .map(|row| {
                        let freq: i64 = row.try_get(2)?;
                        let interval: i64 = row.try_get(3)?;
                        Ok((
                            row.try_get(0)?,
                            row.try_get(1)?,
                            Schedule {
                                freq: i32::try_from(freq).unwrap_or(0),
                                interval: i32::try_from(interval).unwrap_or(0),
                                byday: row.try_get(4)?,
                                bymonthday: row.try_get(5)?,
                                opens_at: row.try_get(6)?,
                                closes_at: row.try_get(7)?,
                                valid_from: row.try_get(8)?,
                                valid_to: row.try_get(9)?,
                                dtstart: row.try_get(10)?,
                                description: row.try_get(11)?,
                            },
                        ))
                    })
                    .collect()
            }

            fn decode_capacity(row: &<$db as sqlx::Database>::Row, first: usize) -> StoreResult<Capacity> {
                let available: i64 = row.try_get(first)?;
                let total: i64 = row.try_get(first + 1)?;
                Ok(Capacity {
                    available: i32::try_from(available).unwrap_or(i32::MAX),
                    total: i32::try_from(total).unwrap_or(i32::MAX),
                    as_of_time: Some(micros_to_timestamp(row.try_get(first + 2)?)),
                })
            }

            fn decode_referral(row: &<$db as sqlx::Database>::Row) -> StoreResult<Referral> {
                let status: i64 = row.try_get(4)?;
                Ok(Referral {
                    referral_id: row.try_get(0)?,
                    incident_id: row.try_get(1)?,
                    service_id: row.try_get(2)?,
                    location_id: row.try_get(3)?,
                    status: i32::try_from(status).unwrap_or(0),
                    notes: row.try_get(5)?,
                    create_time: Some(micros_to_timestamp(row.try_get(6)?)),
                    update_time: Some(micros_to_timestamp(row.try_get(7)?)),
                    incident_checked: row.try_get::<i64, _>(8)? != 0,
                })
            }

            const REFERRAL_COLUMNS: &'static str =
                "SELECT referral_id, incident_id, service_id, location_id, status, notes, create_time, update_time, \
                 incident_checked FROM referrals";

            async fn service_status(conn: &mut $conn, service_id: &str) -> StoreResult<i64> {
                sqlx::query("SELECT status FROM services WHERE id = $1")
                    .bind(service_id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(|row| row.try_get::<i64, _>(0))
                    .transpose()?
                    .ok_or_else(|| DirectoryError::ServiceNotFound(service_id.to_owned()))
            }

            async fn check_location(conn: &mut $conn, service_id: &str, location_id: &str) -> StoreResult<()> {
                let found = sqlx::query("SELECT 1 FROM service_at_location WHERE service_id = $1 AND location_id = $2")
                    .bind(service_id)
                    .bind(location_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                if found.is_none() {
                    return Err(DirectoryError::LocationNotFound {
                        service_id: service_id.to_owned(),
                        location_id: location_id.to_owned(),
                    });
                }
                Ok(())
            }
        }

        impl WriteSession for $session {
            async fn apply(&mut self, row: &Row) -> StoreResult<Applied> {
                $store::apply_row(&mut self.tx, row).await
            }

            async fn apply_all(&mut self, rows: &[Row]) -> StoreResult<Vec<Applied>> {
                $store::apply_rows(&mut self.tx, rows).await
            }

            async fn forget_schedules(&mut self, services: &[String], locations: &[String]) -> StoreResult<()> {
                for (ids, condition) in [(services, "service_id IN ("), (locations, "service_id IS NULL AND location_id IN (")] {
                    for chunk in ids.chunks(CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM schedules WHERE ");
                        qb.push(condition);
                        $store::push_in(&mut qb, chunk);
                        qb.push(")");
                        qb.build().execute(&mut *self.tx).await?;
                    }
                }
                Ok(())
            }

            async fn refresh_all_search(&mut self) -> StoreResult<()> {
                $store::refresh_search(&mut self.tx, "($1 = $2)", "", "").await
            }

            async fn commit(self) -> StoreResult<()> {
                self.tx.commit().await?;
                Ok(())
            }
        }

        impl DirectoryStore for $store {
            type Session = $session;

            async fn begin(&self) -> StoreResult<$session> {
                Ok($session { tx: self.pool.begin().await? })
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn lookup_request(&self, request_id: &str) -> StoreResult<Option<StoredRequest>> {
                let row = sqlx::query("SELECT rpc, fingerprint, response FROM requests WHERE request_id = $1")
                    .bind(request_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok(StoredRequest {
                        rpc: row.try_get(0)?,
                        fingerprint: row.try_get(1)?,
                        response: row.try_get(2)?,
                    })
                })
                .transpose()
            }

            async fn upsert_service(&self, service: &Service, idem: &Idem) -> StoreResult<UpsertServiceResponse> {
                let mut tx = self.pool.begin().await?;
                let created = sqlx::query("SELECT 1 FROM services WHERE id = $1")
                    .bind(&service.id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_none();
                // Whether a term it names differs from the stored one: only then are the other
                // services with that term (a seventh of a generated directory) refreshed.
                let mut terms_changed = false;
                for term in &service.taxonomy_terms {
                    let stored = sqlx::query("SELECT code, name, taxonomy, COALESCE(parent_id, '') FROM taxonomy_terms WHERE id = $1")
                        .bind(&term.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(row) = stored {
                        let (code, name, taxonomy, parent): (String, String, String, String) =
                            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                        terms_changed |= (code, name, taxonomy, parent)
                            != (term.code.clone(), term.name.clone(), term.taxonomy.clone(), term.parent_id.clone());
                    }
                }
                for table in ["service_taxonomy", "languages", "phones", "schedules", "service_at_location"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE service_id = $1"))
                        .bind(&service.id)
                        .execute(&mut *tx)
                        .await?;
                }
                for row in crate::rows_of_service(service, idem.now) {
                    if let Applied::Missing(reason) = Self::apply_row(&mut tx, &row).await? {
                        return Err(DirectoryError::Corrupt(reason));
                    }
                }
                sqlx::query(
                    "DELETE FROM capacity WHERE service_id = $1 AND NOT EXISTS (SELECT 1 FROM service_at_location sal \
                     WHERE sal.service_id = capacity.service_id AND sal.location_id = capacity.location_id)",
                )
                .bind(&service.id)
                .execute(&mut *tx)
                .await?;
                let organization_id = service.organization.as_ref().map(|o| o.id.clone()).unwrap_or_default();
                // Its organization, its locations (coordinates, time zone) and its terms (when
                // changed) are part of other services' search data and documents too.
                let sharing_terms = if terms_changed {
                    " OR id IN (SELECT b.service_id FROM service_taxonomy a \
                     JOIN service_taxonomy b ON b.taxonomy_term_id = a.taxonomy_term_id WHERE a.service_id = $1)"
                } else {
                    ""
                };
                let condition = format!(
                    "id = $1 OR organization_id = $2 OR id IN (SELECT b.service_id FROM service_at_location a \
                     JOIN service_at_location b ON b.location_id = a.location_id WHERE a.service_id = $1){sharing_terms}"
                );
                Self::refresh_search(&mut tx, &condition, &service.id, &organization_id).await?;
                let stored = Self::load_services(&mut tx, std::slice::from_ref(&service.id))
                    .await?
                    .pop()
                    .ok_or_else(|| DirectoryError::Corrupt("upserted service vanished".into()))?;
                let response = UpsertServiceResponse { service: Some(stored), created };
                Self::record(&mut tx, idem, &response.encode_to_vec()).await?;
                tx.commit().await?;
                Ok(response)
            }

            async fn get_services(&self, ids: &[String]) -> StoreResult<Vec<Service>> {
                let mut conn = self.pool.acquire().await?;
                Self::load_services(&mut conn, ids).await
            }

            async fn search_candidates(&self, filter: &CandidateFilter) -> StoreResult<Vec<Candidate>> {
                if Self::PG {
                    self.ranked_candidates(filter).await
                } else {
                    self.scanned_candidates(filter).await
                }
            }

            async fn hours(&self, pairs: &[(String, String)]) -> StoreResult<HashMap<(String, String), LocationHours>> {
                let mut out = HashMap::new();
                let mut conn = self.pool.acquire().await?;
                for chunk in pairs.chunks(CHUNK) {
                    let mut locations: Vec<String> = chunk.iter().map(|p| p.1.clone()).filter(|l| !l.is_empty()).collect();
                    locations.sort();
                    locations.dedup();
                    let mut services: Vec<String> = chunk.iter().map(|p| p.0.clone()).collect();
                    services.sort();
                    services.dedup();
                    if locations.is_empty() {
                        continue;
                    }
                    let mut qb = QueryBuilder::<$db>::new("SELECT id, time_zone FROM locations WHERE id IN (");
                    Self::push_in(&mut qb, &locations);
                    qb.push(")");
                    let mut zones = HashMap::new();
                    for row in qb.build().fetch_all(&mut *conn).await? {
                        let id: String = row.try_get(0)?;
                        let zone: String = row.try_get(1)?;
                        zones.insert(id, zone);
                    }
                    let mut qb = QueryBuilder::<$db>::new(Self::SCHEDULE_COLUMNS);
                    qb.push(" WHERE location_id IN (");
                    Self::push_in(&mut qb, &locations);
                    qb.push(") OR (location_id IS NULL AND service_id IN (");
                    Self::push_in(&mut qb, &services);
                    qb.push(")) ORDER BY position, id");
                    let schedules = Self::decode_schedules(qb.build().fetch_all(&mut *conn).await?)?;
                    for (sid, lid) in chunk {
                        let hours = LocationHours {
                            time_zone: zones.get(lid).cloned().unwrap_or_default(),
                            schedules: schedules
                                .iter()
                                .filter(|(s, l, _)| applies(s.as_deref(), l.as_deref(), sid, lid))
                                .map(|(_, _, schedule)| schedule.clone())
                                .collect(),
                        };
                        out.insert((sid.clone(), lid.clone()), hours);
                    }
                }
                Ok(out)
            }

            async fn update_capacity(
                &self,
                service_id: &str,
                location_id: &str,
                capacity: &Capacity,
                idem: &Idem,
            ) -> StoreResult<UpdateCapacityResponse> {
                let mut tx = self.pool.begin().await?;
                Self::service_status(&mut tx, service_id).await?;
                Self::check_location(&mut tx, service_id, location_id).await?;
                let as_of = capacity.as_of_time.as_ref().map_or(0, timestamp_to_micros);
                let current = sqlx::query(
                    "SELECT available, total, as_of_time FROM capacity WHERE service_id = $1 AND location_id = $2",
                )
                .bind(service_id)
                .bind(location_id)
                .fetch_optional(&mut *tx)
                .await?;
                let current = current.map(|row| Self::decode_capacity(&row, 0)).transpose()?;
                let response = match current {
                    Some(current) if current.as_of_time.as_ref().map_or(0, timestamp_to_micros) >= as_of => {
                        UpdateCapacityResponse { capacity: Some(current), stale: true }
                    }
                    _ => {
                        sqlx::query(
                            "INSERT INTO capacity (service_id, location_id, available, total, as_of_time) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (service_id, location_id) DO UPDATE SET available = excluded.available, \
                             total = excluded.total, as_of_time = excluded.as_of_time",
                        )
                        .bind(service_id)
                        .bind(location_id)
                        .bind(i64::from(capacity.available))
                        .bind(i64::from(capacity.total))
                        .bind(as_of)
                        .execute(&mut *tx)
                        .await?;
                        UpdateCapacityResponse { capacity: Some(capacity.clone()), stale: false }
                    }
                };
                Self::record(&mut tx, idem, &response.encode_to_vec()).await?;
                tx.commit().await?;
                Ok(response)
            }

            async fn create_referral(&self, referral: &Referral, idem: &Idem) -> StoreResult<CreateReferralResponse> {
                let mut tx = self.pool.begin().await?;
                let status = Self::service_status(&mut tx, &referral.service_id).await?;
                if !referral.location_id.is_empty() {
                    Self::check_location(&mut tx, &referral.service_id, &referral.location_id).await?;
                }
                if status != i64::from(relay_proto::directory::ServiceStatus::Active as i32) {
                    return Err(DirectoryError::ServiceNotActive(referral.service_id.clone()));
                }
                let open = sqlx::query(
                    "SELECT referral_id FROM referrals WHERE incident_id = $1 AND service_id = $2 AND location_id = $3 \
                     AND status IN (1, 4, 5)",
                )
                .bind(&referral.incident_id)
                .bind(&referral.service_id)
                .bind(&referral.location_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = open {
                    return Err(DirectoryError::ReferralExists(row.try_get(0)?));
                }
                let now = idem.now;
                let inserted = sqlx::query(
                    "INSERT INTO referrals (referral_id, incident_id, service_id, location_id, status, notes, create_time, update_time, \
                     incident_checked) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                )
                .bind(&referral.referral_id)
                .bind(&referral.incident_id)
                .bind(&referral.service_id)
                .bind(&referral.location_id)
                .bind(i64::from(ReferralStatus::Pending as i32))
                .bind(&referral.notes)
                .bind(now)
                .bind(i64::from(referral.incident_checked))
                .execute(&mut *tx)
                .await;
                if let Err(error) = inserted {
                    if DirectoryError::is_unique_violation(&error) {
                        return Err(DirectoryError::ReferralExists(String::new()));
                    }
                    return Err(error.into());
                }
                let mut stored = referral.clone();
                stored.status = ReferralStatus::Pending as i32;
                stored.create_time = Some(micros_to_timestamp(now));
                stored.update_time = Some(micros_to_timestamp(now));
                let response = CreateReferralResponse { referral: Some(stored) };
                Self::record(&mut tx, idem, &response.encode_to_vec()).await?;
                tx.commit().await?;
                Ok(response)
            }

            async fn update_referral(
                &self,
                referral_id: &str,
                status: ReferralStatus,
                notes: Option<&str>,
                idem: &Idem,
            ) -> StoreResult<UpdateReferralResponse> {
                let mut tx = self.pool.begin().await?;
                let lock = if Self::PG { " WHERE referral_id = $1 FOR UPDATE" } else { " WHERE referral_id = $1" };
                let row = sqlx::query(&format!("{}{lock}", Self::REFERRAL_COLUMNS))
                    .bind(referral_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| DirectoryError::ReferralNotFound(referral_id.to_owned()))?;
                let current = Self::decode_referral(&row)?;
                let next = transition(&current, status, notes, idem.now)?;
                if next != current {
                    let update = sqlx::query("UPDATE referrals SET status = $2, notes = $3, update_time = $4 WHERE referral_id = $1")
                        .bind(referral_id)
                        .bind(i64::from(next.status))
                        .bind(&next.notes)
                        .bind(next.update_time.as_ref().map_or(idem.now, timestamp_to_micros))
                        .execute(&mut *tx)
                        .await;
                    if let Err(error) = update {
                        if DirectoryError::is_unique_violation(&error) {
                            return Err(DirectoryError::ReferralExists(String::new()));
                        }
                        return Err(error.into());
                    }
                }
                let response = UpdateReferralResponse { referral: Some(next) };
                Self::record(&mut tx, idem, &response.encode_to_vec()).await?;
                tx.commit().await?;
                Ok(response)
            }

            #[allow(clippy::too_many_lines)]
            async fn dump(&self, table: Dump) -> StoreResult<Vec<Row>> {
                let mut conn = self.pool.acquire().await?;
                let collate = if Self::PG { " COLLATE \"C\"" } else { "" };
                let text = |row: &<$db as sqlx::Database>::Row, i: usize| row.try_get::<String, _>(i);
                let mut out = Vec::new();
                match table {
                    Dump::Organizations => {
                        let sql = format!("SELECT id, name, description, url, email FROM organizations ORDER BY id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::Organization {
                                id: text(&row, 0)?, name: text(&row, 1)?, description: text(&row, 2)?,
                                url: text(&row, 3)?, email: text(&row, 4)?,
                            });
                        }
                    }
                    Dump::TaxonomyTerms => {
                        let sql = format!("SELECT id, code, name, taxonomy, COALESCE(parent_id, '') FROM taxonomy_terms ORDER BY id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::TaxonomyTerm(TaxonomyTerm {
                                id: text(&row, 0)?, code: text(&row, 1)?, name: text(&row, 2)?,
                                taxonomy: text(&row, 3)?, parent_id: text(&row, 4)?,
                            }));
                        }
                    }
                    Dump::Services => {
                        // The columns of decode_service, without the organization's own fields.
                        let sql = format!(
                            "SELECT s.id, s.organization_id, '', '', '', '', s.name, s.alternate_name, s.description, s.url, \
                             s.email, s.status, s.eligibility_description, s.fees_description, s.application_process, s.alert, \
                             s.create_time, s.update_time FROM services s ORDER BY s.id{collate}"
                        );
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            let mut service = Self::decode_service(&row)?;
                            let update_time: i64 = row.try_get(17)?;
                            if let Some(organization) = &mut service.organization {
                                *organization = Organization { id: organization.id.clone(), ..Organization::default() };
                            }
                            service.create_time = None;
                            service.update_time = None;
                            out.push(Row::Service(Box::new(service), update_time));
                        }
                    }
                    Dump::ServiceTaxonomy => {
                        let sql = format!("SELECT service_id, taxonomy_term_id FROM service_taxonomy ORDER BY service_id{collate}, taxonomy_term_id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::ServiceTaxonomy { service_id: text(&row, 0)?, term_id: text(&row, 1)? });
                        }
                    }
                    Dump::Languages => {
                        let sql = format!("SELECT service_id, code, position FROM languages ORDER BY position, code{collate}, service_id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::Language { service_id: text(&row, 0)?, code: text(&row, 1)?, position: row.try_get(2)? });
                        }
                    }
                    Dump::Phones => {
                        let sql = format!("SELECT id, service_id, number, extension, type, description FROM phones ORDER BY id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::Phone {
                                id: text(&row, 0)?,
                                service_id: text(&row, 1)?,
                                phone: Phone { number: text(&row, 2)?, extension: text(&row, 3)?, r#type: text(&row, 4)?, description: text(&row, 5)? },
                            });
                        }
                    }
                    Dump::Locations => {
                        let sql = format!(
                            "SELECT id, name, latitude, longitude, time_zone, attention, address_1, address_2, city, region, \
                             state_province, postal_code, country, has_address FROM locations ORDER BY id{collate}"
                        );
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            let latitude: Option<f64> = row.try_get(2)?;
                            let longitude: Option<f64> = row.try_get(3)?;
                            let id = text(&row, 0)?;
                            out.push(Row::Location { id: id.clone(), name: text(&row, 1)?, point: latitude.zip(longitude), time_zone: text(&row, 4)? });
                            if row.try_get::<i64, _>(13)? != 0 {
                                out.push(Row::Address {
                                    location_id: id,
                                    address: Address {
                                        attention: text(&row, 5)?, address_1: text(&row, 6)?, address_2: text(&row, 7)?,
                                        city: text(&row, 8)?, region: text(&row, 9)?, state_province: text(&row, 10)?,
                                        postal_code: text(&row, 11)?, country: text(&row, 12)?,
                                    },
                                });
                            }
                        }
                    }
                    Dump::ServiceAtLocation => {
                        let sql = format!("SELECT id, service_id, location_id, position FROM service_at_location ORDER BY position, location_id{collate}, service_id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::ServiceAtLocation {
                                id: text(&row, 0)?, service_id: text(&row, 1)?, location_id: text(&row, 2)?, position: row.try_get(3)?,
                            });
                        }
                    }
                    Dump::Schedules => {
                        let sql = format!(
                            "SELECT service_id, location_id, freq, \"interval\", byday, bymonthday, opens_at, closes_at, valid_from, \
                             valid_to, dtstart, description, id, position FROM schedules ORDER BY position, id{collate}"
                        );
                        let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
                        let ids: Vec<(String, i64)> = rows.iter().map(|row| Ok((text(row, 12)?, row.try_get(13)?))).collect::<StoreResult<_>>()?;
                        for ((service_id, location_id, schedule), (id, position)) in Self::decode_schedules(rows)?.into_iter().zip(ids) {
                            out.push(Row::Schedule { id, service_id, location_id, service_at_location_id: None, position, schedule });
                        }
                    }
                    Dump::Capacity => {
                        let sql = format!("SELECT service_id, location_id, available, total, as_of_time FROM capacity ORDER BY service_id{collate}, location_id{collate}");
                        for row in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                            out.push(Row::Capacity { service_id: text(&row, 0)?, location_id: text(&row, 1)?, capacity: Self::decode_capacity(&row, 2)? });
                        }
                    }
                }
                Ok(out)
            }

            async fn erase_referral_notes(&self, created_before: i64, requests_before: i64) -> StoreResult<(u64, u64)> {
                // Look before writing: on SQLite even an UPDATE of no rows takes the write lock,
                // and a concurrent mutation whose transaction already read would then fail with
                // SQLITE_BUSY instead of waiting.
                let due: i64 = sqlx::query(
                    "SELECT CASE WHEN EXISTS (SELECT 1 FROM referrals WHERE create_time < $1 AND notes <> '') \
                     OR EXISTS (SELECT 1 FROM requests WHERE rpc IN ('CreateReferral', 'UpdateReferral') AND create_time < $2) \
                     THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END",
                )
                .bind(created_before)
                .bind(requests_before)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
                if due == 0 {
                    return Ok((0, 0));
                }
                let mut tx = self.pool.begin().await?;
                let referrals = sqlx::query("UPDATE referrals SET notes = '' WHERE create_time < $1 AND notes <> ''")
                    .bind(created_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let requests = sqlx::query("DELETE FROM requests WHERE rpc IN ('CreateReferral', 'UpdateReferral') AND create_time < $1")
                    .bind(requests_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok((referrals, requests))
            }

            async fn list_referrals(&self, filter: &ReferralFilter) -> StoreResult<Vec<Referral>> {
                let mut qb = QueryBuilder::<$db>::new(Self::REFERRAL_COLUMNS);
                qb.push(" WHERE 1 = 1");
                if !filter.incident_id.is_empty() {
                    qb.push(" AND incident_id = ");
                    qb.push_bind(filter.incident_id.as_str());
                }
                if !filter.service_id.is_empty() {
                    qb.push(" AND service_id = ");
                    qb.push_bind(filter.service_id.as_str());
                }
                if filter.status != 0 {
                    qb.push(" AND status = ");
                    qb.push_bind(i64::from(filter.status));
                }
                if let Some((time, id)) = &filter.after {
                    qb.push(" AND (create_time > ");
                    qb.push_bind(*time);
                    qb.push(" OR (create_time = ");
                    qb.push_bind(*time);
                    qb.push(" AND referral_id > ");
                    qb.push_bind(id.as_str());
                    qb.push("))");
                }
                let collate = if Self::PG { " COLLATE \"C\"" } else { "" };
                qb.push(format!(" ORDER BY create_time, referral_id{collate} LIMIT "));
                qb.push_bind(filter.limit);
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(Self::decode_referral).collect()
            }
        }
    };
}

/// Rows per multi-row statement when importing (at most 14 bound values each, well below
/// both databases' limits).
const BATCH: usize = 1000;

/// The ids a row writes by (a multi-row statement may write each only once).
fn row_keys(row: &Row) -> Vec<String> {
    match row {
        Row::Organization { id, .. }
        | Row::Phone { id, .. }
        | Row::Location { id, .. }
        | Row::Schedule { id, .. } => {
            vec![id.clone()]
        }
        Row::Service(service, _) => vec![service.id.clone()],
        Row::TaxonomyTerm(term) => vec![term.id.clone()],
        Row::ServiceTaxonomy {
            service_id,
            term_id,
        } => vec![format!("{service_id}\u{1}{term_id}")],
        Row::Language {
            service_id, code, ..
        } => vec![format!("{service_id}\u{1}{code}")],
        Row::Capacity {
            service_id,
            location_id,
            ..
        } => vec![format!("{service_id}\u{1}{location_id}")],
        Row::Address { location_id, .. } | Row::LocationTimeZone { location_id, .. } => {
            vec![location_id.clone()]
        }
        Row::ServiceAtLocation {
            id,
            service_id,
            location_id,
            ..
        } => {
            vec![id.clone(), format!("{service_id}\u{1}{location_id}")]
        }
    }
}

/// Why `row` was not stored, when its key is not among the keys a statement returned.
fn missing_reason(row: &Row, stored: &std::collections::HashSet<String>) -> Option<String> {
    let (key, reason) = match row {
        Row::Service(service, _) => (
            service.id.clone(),
            format!(
                "organization_id `{}` is not an organization of the package",
                service.organization.as_ref().map_or("", |o| o.id.as_str())
            ),
        ),
        Row::ServiceTaxonomy {
            service_id,
            term_id,
        } => (
            format!("{service_id}\u{1}{term_id}"),
            format!("service `{service_id}` or taxonomy term `{term_id}` does not exist"),
        ),
        Row::Language {
            service_id, code, ..
        } => (
            format!("{service_id}\u{1}{code}"),
            format!("service `{service_id}` does not exist"),
        ),
        Row::Phone { id, service_id, .. } => {
            (id.clone(), format!("service `{service_id}` does not exist"))
        }
        Row::Address { location_id, .. } => (
            location_id.clone(),
            format!("location `{location_id}` does not exist"),
        ),
        Row::ServiceAtLocation {
            id,
            service_id,
            location_id,
            ..
        } => (
            id.clone(),
            format!("service `{service_id}` or location `{location_id}` does not exist"),
        ),
        Row::Organization { .. }
        | Row::TaxonomyTerm(_)
        | Row::Location { .. }
        | Row::LocationTimeZone { .. }
        | Row::Schedule { .. }
        | Row::Capacity { .. } => return None,
    };
    (!stored.contains(&key)).then_some(reason)
}

/// Whether a schedule stored for (`sid`, `lid`) applies to `service` at `location`.
fn applies(sid: Option<&str>, lid: Option<&str>, service: &str, location: &str) -> bool {
    match (sid, lid) {
        (Some(s), Some(l)) => s == service && l == location,
        (Some(s), None) => s == service,
        (None, Some(l)) => l == location,
        (None, None) => false,
    }
}

sql_store!(
    PgStore,
    PgSession,
    sqlx::Postgres,
    sqlx::PgPool,
    sqlx::PgConnection,
    true,
    "The PostgreSQL backend (schema `directory`; full text with `tsvector`)."
);
sql_store!(
    SqliteStore,
    SqliteSession,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    sqlx::SqliteConnection,
    false,
    "The SQLite backend for `relay dev` (full text with FTS5)."
);
