//! Writing normalized HSDS rows ([`Row`]) on either backend, many per statement: the importer
//! writes runs of rows of one kind, and UpsertService a run of one. Each statement is an upsert
//! from a `VALUES` list that returns the keys it stored, so a row that refers to a missing
//! one is reported, not written.

use std::collections::{HashMap, HashSet};

use relay_proto::directory::Schedule;

use super::{
    Applied, Row, StoreResult, WriteSession,
    query::{Columns, Dialect, Query, Value},
    rows::{BATCH, CHUNK, missing_reason, no_pair, row_keys},
};
use crate::timestamp_to_micros;

/// A write transaction of either backend.
#[derive(Debug)]
pub struct SqlSession<D: Dialect> {
    pub(super) tx: sqlx::Transaction<'static, D>,
}

impl<D: Dialect> WriteSession for SqlSession<D> {
    async fn apply(&mut self, row: &Row) -> StoreResult<Applied> {
        apply_row::<D>(&mut self.tx, row).await
    }

    async fn apply_all(&mut self, rows: &[Row]) -> StoreResult<Vec<Applied>> {
        apply_rows::<D>(&mut self.tx, rows).await
    }

    async fn forget_schedules(
        &mut self,
        services: &[String],
        locations: &[String],
    ) -> StoreResult<()> {
        for (ids, condition) in [
            (services, "service_id IN ("),
            (locations, "service_id IS NULL AND location_id IN ("),
        ] {
            for chunk in ids.chunks(CHUNK) {
                let mut query = Query::new("DELETE FROM schedules WHERE ");
                query.push(condition).push_in(chunk).push(")");
                query.execute::<D>(&mut self.tx).await?;
            }
        }
        Ok(())
    }

    async fn refresh_all_search(&mut self) -> StoreResult<()> {
        super::documents::refresh_search::<D>(&mut self.tx, "($1 = $2)", "", "").await
    }

    async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Writes one row (insert or update by its id).
///
/// # Errors
/// When the database fails.
pub async fn apply_row<D: Dialect>(conn: &mut D::Connection, row: &Row) -> StoreResult<Applied> {
    let mut out = vec![Applied::Stored];
    apply_run::<D>(conn, &[row], &[0], &mut out).await?;
    Ok(out.pop().unwrap_or(Applied::Stored))
}

/// Writes `rows` as [`apply_row`] would one by one, with one multi-row statement per run of
/// rows of one kind (and distinct ids); the result of each row, in order. Rows of different
/// kinds are written kind by kind, in the order each kind first appears, so they must not
/// depend on each other (the importer batches rows of one file, whose kinds do not).
///
/// # Errors
/// When the database fails.
pub async fn apply_rows<D: Dialect>(
    conn: &mut D::Connection,
    rows: &[Row],
) -> StoreResult<Vec<Applied>> {
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
        // A run ends before a row whose id was already in it: a multi-row upsert may not
        // touch a row twice, and the later row must win.
        let mut run: Vec<&Row> = Vec::new();
        let mut run_at: Vec<usize> = Vec::new();
        let mut seen = HashSet::new();
        for index in indexes {
            let keys = row_keys(&rows[index]);
            if run.len() >= BATCH || keys.iter().any(|k| seen.contains(k)) {
                apply_run::<D>(conn, &run, &run_at, &mut out).await?;
                run.clear();
                run_at.clear();
                seen.clear();
            }
            seen.extend(keys);
            run.push(&rows[index]);
            run_at.push(index);
        }
        apply_run::<D>(conn, &run, &run_at, &mut out).await?;
    }
    Ok(out)
}

/// Runs `head`, ` FROM (VALUES ...) AS v ` with the values `row` gives for each item, then
/// `tail`, and returns the rows it returns, each as its columns joined by U+0001.
async fn values<'a, D: Dialect, T>(
    conn: &mut D::Connection,
    head: &str,
    items: impl IntoIterator<Item = T>,
    row: impl FnMut(T) -> Vec<Value<'a>>,
    tail: &str,
) -> StoreResult<HashSet<String>> {
    let mut query = Query::new(head);
    query
        .push(" FROM (")
        .push_values(items, row)
        .push(") AS v ")
        .push(tail);
    let mut keys = HashSet::new();
    for row in query.fetch_all::<D>(conn).await? {
        let mut key = Vec::new();
        for column in 0..row.width() {
            key.push(row.text(column)?);
        }
        keys.insert(key.join("\u{1}"));
    }
    Ok(keys)
}

/// Writes a run of rows of one kind with distinct ids; sets `out[at[i]]` for the rows that
/// could not be stored.
async fn apply_run<D: Dialect>(
    conn: &mut D::Connection,
    run: &[&Row],
    at: &[usize],
    out: &mut [Applied],
) -> StoreResult<()> {
    let Some(first) = run.first() else {
        return Ok(());
    };
    match first {
        Row::Schedule { .. } => return apply_schedules::<D>(conn, run, at, out).await,
        Row::Capacity { .. } => {
            // Few rows (one per reporting location): one statement each.
            for (row, &index) in run.iter().zip(at) {
                out[index] = apply_capacity::<D>(conn, row).await?;
            }
            return Ok(());
        }
        Row::ServiceAtLocation { .. } => {
            // An id moving to another (service, location) leaves its old pair.
            values::<D, _>(
                conn,
                // Driven by the batch, through the unique index on id: an EXISTS over the
                // VALUES per stored row made SQLite's import quadratic.
                "DELETE FROM service_at_location WHERE id IN (SELECT sal.id",
                run.iter().copied(),
                |row| match row {
                    Row::ServiceAtLocation {
                        id,
                        service_id,
                        location_id,
                        ..
                    } => vec![id.into(), service_id.into(), location_id.into()],
                    _ => Vec::new(),
                },
                "JOIN service_at_location sal ON sal.id = v.column1 \
                 WHERE NOT (v.column2 = sal.service_id AND v.column3 = sal.location_id))",
            )
            .await?;
        }
        _ => {}
    }
    let (head, tail) = upsert_sql(first);
    let stored = values::<D, _>(conn, head, run.iter().copied(), values_of, tail).await?;
    if let Row::LocationTimeZone { .. } = first {
        // A time zone for an unknown location is not an error.
        return Ok(());
    }
    for (row, &index) in run.iter().zip(at) {
        if let Some(reason) = missing_reason(row, &stored) {
            out[index] = Applied::Missing(reason);
        }
    }
    Ok(())
}

/// The statement that writes rows of `row`'s kind from the `VALUES` list `v` of their
/// [`values_of`], before and after the list; it returns the keys of [`row_keys`] it stored.
fn upsert_sql(row: &Row) -> (&'static str, &'static str) {
    match row {
        Row::Organization { .. } => (
            "INSERT INTO organizations (id, name, description, url, email) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5",
            "WHERE TRUE ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
             url = excluded.url, email = excluded.email RETURNING id",
        ),
        Row::Service(..) => (
            "INSERT INTO services (id, organization_id, name, alternate_name, description, url, email, status, \
             eligibility_description, fees_description, application_process, alert, create_time, update_time) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, \
             v.column9, v.column10, v.column11, v.column12, v.column13, v.column13",
            "WHERE EXISTS (SELECT 1 FROM organizations WHERE id = v.column2) \
             ON CONFLICT (id) DO UPDATE SET organization_id = excluded.organization_id, name = excluded.name, \
             alternate_name = excluded.alternate_name, description = excluded.description, url = excluded.url, \
             email = excluded.email, status = excluded.status, eligibility_description = excluded.eligibility_description, \
             fees_description = excluded.fees_description, application_process = excluded.application_process, \
             alert = excluded.alert, update_time = excluded.update_time RETURNING id",
        ),
        Row::TaxonomyTerm(_) => (
            "INSERT INTO taxonomy_terms (id, code, name, taxonomy, parent_id) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5",
            "WHERE TRUE ON CONFLICT (id) DO UPDATE SET code = excluded.code, name = excluded.name, \
             taxonomy = excluded.taxonomy, parent_id = excluded.parent_id RETURNING id",
        ),
        Row::ServiceTaxonomy { .. } => (
            "INSERT INTO service_taxonomy (service_id, taxonomy_term_id) SELECT v.column1, v.column2",
            "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column1) \
             AND EXISTS (SELECT 1 FROM taxonomy_terms WHERE id = v.column2) \
             ON CONFLICT (service_id, taxonomy_term_id) DO UPDATE SET service_id = excluded.service_id \
             RETURNING service_id, taxonomy_term_id",
        ),
        Row::Language { .. } => (
            "INSERT INTO languages (service_id, code, position) SELECT v.column1, v.column2, v.column3",
            "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column1) \
             ON CONFLICT (service_id, code) DO UPDATE SET position = excluded.position RETURNING service_id, code",
        ),
        Row::Phone { .. } => (
            "INSERT INTO phones (id, service_id, number, extension, type, description) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6",
            "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column2) \
             ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, number = excluded.number, \
             extension = excluded.extension, type = excluded.type, description = excluded.description RETURNING id",
        ),
        Row::Location { .. } => (
            "INSERT INTO locations (id, name, latitude, longitude, time_zone) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5",
            "WHERE TRUE ON CONFLICT (id) DO UPDATE SET name = excluded.name, latitude = excluded.latitude, \
             longitude = excluded.longitude, time_zone = excluded.time_zone RETURNING id",
        ),
        Row::Address { .. } => (
            "UPDATE locations SET attention = v.column2, address_1 = v.column3, address_2 = v.column4, \
             city = v.column5, region = v.column6, state_province = v.column7, postal_code = v.column8, \
             country = v.column9, has_address = 1",
            "WHERE locations.id = v.column1 RETURNING id",
        ),
        Row::LocationTimeZone { .. } => (
            "UPDATE locations SET time_zone = v.column2",
            "WHERE locations.id = v.column1",
        ),
        Row::ServiceAtLocation { .. } => (
            "INSERT INTO service_at_location (service_id, location_id, id, position) \
             SELECT v.column1, v.column2, v.column3, v.column4",
            "WHERE EXISTS (SELECT 1 FROM services WHERE id = v.column1) \
             AND EXISTS (SELECT 1 FROM locations WHERE id = v.column2) \
             ON CONFLICT (service_id, location_id) DO UPDATE SET id = excluded.id, position = excluded.position \
             RETURNING id",
        ),
        Row::Schedule { .. } => (
            "INSERT INTO schedules (id, service_id, location_id, position, freq, \"interval\", byday, bymonthday, \
             opens_at, closes_at, valid_from, valid_to, dtstart, description) \
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, \
             v.column9, v.column10, v.column11, v.column12, v.column13, v.column14",
            "WHERE (v.column2 IS NULL OR EXISTS (SELECT 1 FROM services WHERE id = v.column2)) \
             AND (v.column3 IS NULL OR EXISTS (SELECT 1 FROM locations WHERE id = v.column3)) \
             ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, location_id = excluded.location_id, \
             position = excluded.position, freq = excluded.freq, \"interval\" = excluded.\"interval\", \
             byday = excluded.byday, bymonthday = excluded.bymonthday, opens_at = excluded.opens_at, \
             closes_at = excluded.closes_at, valid_from = excluded.valid_from, valid_to = excluded.valid_to, \
             dtstart = excluded.dtstart, description = excluded.description RETURNING id",
        ),
        // Written one by one (apply_capacity).
        Row::Capacity { .. } => ("", ""),
    }
}

/// The `VALUES` row of a row, in the column order of its [`upsert_sql`] (schedules are
/// resolved first, see [`schedule_values`]; capacity is written by [`apply_capacity`]).
fn values_of(row: &Row) -> Vec<Value<'_>> {
    match row {
        Row::Organization {
            id,
            name,
            description,
            url,
            email,
        } => vec![
            id.into(),
            name.into(),
            description.into(),
            url.into(),
            email.into(),
        ],
        Row::Service(service, update_time) => vec![
            (&service.id).into(),
            service
                .organization
                .as_ref()
                .map_or("", |o| o.id.as_str())
                .into(),
            (&service.name).into(),
            (&service.alternate_name).into(),
            (&service.description).into(),
            (&service.url).into(),
            (&service.email).into(),
            i64::from(service.status).into(),
            (&service.eligibility_description).into(),
            (&service.fees_description).into(),
            (&service.application_process).into(),
            (&service.alert).into(),
            (*update_time).into(),
        ],
        Row::TaxonomyTerm(term) => vec![
            (&term.id).into(),
            (&term.code).into(),
            (&term.name).into(),
            (&term.taxonomy).into(),
            (!term.parent_id.is_empty())
                .then_some(term.parent_id.as_str())
                .into(),
        ],
        Row::ServiceTaxonomy {
            service_id,
            term_id,
        } => vec![service_id.into(), term_id.into()],
        Row::Language {
            service_id,
            code,
            position,
        } => vec![service_id.into(), code.into(), (*position).into()],
        Row::Phone {
            id,
            service_id,
            phone,
        } => vec![
            id.into(),
            service_id.into(),
            (&phone.number).into(),
            (&phone.extension).into(),
            (&phone.r#type).into(),
            (&phone.description).into(),
        ],
        Row::Location {
            id,
            name,
            point,
            time_zone,
        } => vec![
            id.into(),
            name.into(),
            point.map(|p| p.0).into(),
            point.map(|p| p.1).into(),
            time_zone.into(),
        ],
        Row::Address {
            location_id,
            address,
        } => vec![
            location_id.into(),
            (&address.attention).into(),
            (&address.address_1).into(),
            (&address.address_2).into(),
            (&address.city).into(),
            (&address.region).into(),
            (&address.state_province).into(),
            (&address.postal_code).into(),
            (&address.country).into(),
        ],
        Row::LocationTimeZone {
            location_id,
            time_zone,
        } => vec![location_id.into(), time_zone.into()],
        Row::ServiceAtLocation {
            id,
            service_id,
            location_id,
            position,
        } => vec![
            service_id.into(),
            location_id.into(),
            id.into(),
            (*position).into(),
        ],
        Row::Schedule { .. } | Row::Capacity { .. } => Vec::new(),
    }
}

/// Writes a capacity report unless the stored one is newer, as UpdateCapacity's staleness
/// rule says.
async fn apply_capacity<D: Dialect>(conn: &mut D::Connection, row: &Row) -> StoreResult<Applied> {
    let Row::Capacity {
        service_id,
        location_id,
        capacity,
    } = row
    else {
        return Ok(Applied::Stored);
    };
    if !offered_at::<D>(conn, service_id, location_id).await? {
        return Ok(Applied::Missing(format!(
            "service `{service_id}` has no location `{location_id}`"
        )));
    }
    Query::new(
        "INSERT INTO capacity (service_id, location_id, available, total, as_of_time) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (service_id, location_id) DO UPDATE SET available = excluded.available, \
         total = excluded.total, as_of_time = excluded.as_of_time WHERE excluded.as_of_time > capacity.as_of_time",
    )
    .bind(service_id)
    .bind(location_id)
    .bind(i64::from(capacity.available))
    .bind(i64::from(capacity.total))
    .bind(capacity.as_of_time.as_ref().map_or(0, timestamp_to_micros))
    .execute::<D>(conn)
    .await?;
    Ok(Applied::Stored)
}

/// Whether the service is offered at the location.
pub(super) async fn offered_at<D: Dialect>(
    conn: &mut D::Connection,
    service_id: &str,
    location_id: &str,
) -> StoreResult<bool> {
    let found =
        Query::new("SELECT 1 FROM service_at_location WHERE service_id = $1 AND location_id = $2")
            .bind(service_id)
            .bind(location_id)
            .fetch_optional::<D>(conn)
            .await?;
    Ok(found.is_some())
}

/// A schedule ready to write: its index in `out`, id, service, location, position and rule.
type Resolved<'a> = (
    usize,
    &'a str,
    Option<String>,
    Option<String>,
    i64,
    &'a Schedule,
);

/// The values of a resolved schedule, in its [`upsert_sql`] order.
fn schedule_values<'a>(resolved: &Resolved<'a>) -> Vec<Value<'a>> {
    let (_, id, service_id, location_id, position, schedule) = resolved;
    vec![
        (*id).into(),
        service_id.clone().into(),
        location_id.clone().into(),
        (*position).into(),
        i64::from(schedule.freq).into(),
        i64::from(schedule.interval).into(),
        schedule.byday.as_str().into(),
        schedule.bymonthday.as_str().into(),
        schedule.opens_at.as_str().into(),
        schedule.closes_at.as_str().into(),
        schedule.valid_from.as_str().into(),
        schedule.valid_to.as_str().into(),
        schedule.dtstart.as_str().into(),
        schedule.description.as_str().into(),
    ]
}

/// [`apply_run`] for schedules: resolves their service_at_location ids in one query, then
/// inserts them in one statement.
async fn apply_schedules<D: Dialect>(
    conn: &mut D::Connection,
    run: &[&Row],
    at: &[usize],
    out: &mut [Applied],
) -> StoreResult<()> {
    let sal_ids: Vec<String> = run
        .iter()
        .filter_map(|row| match row {
            Row::Schedule {
                service_at_location_id: Some(sal),
                ..
            } => Some(sal.clone()),
            _ => None,
        })
        .collect();
    let mut pairs = HashMap::new();
    if !sal_ids.is_empty() {
        let mut query =
            Query::new("SELECT id, service_id, location_id FROM service_at_location WHERE id IN (");
        query.push_in(&sal_ids).push(")");
        for row in query.fetch_all::<D>(conn).await? {
            pairs.insert(row.text(0)?, (row.text(1)?, row.text(2)?));
        }
    }
    let mut resolved: Vec<Resolved<'_>> = Vec::new();
    for (row, &index) in run.iter().zip(at) {
        match resolve(row, &pairs) {
            Ok(Some((id, service_id, location_id, position, schedule))) => {
                resolved.push((index, id, service_id, location_id, position, schedule));
            }
            Ok(None) => {}
            Err(reason) => out[index] = Applied::Missing(reason),
        }
    }
    if resolved.is_empty() {
        return Ok(());
    }
    let (head, tail) = upsert_sql(run[0]);
    let stored = values::<D, _>(conn, head, resolved.iter(), schedule_values, tail).await?;
    for (index, id, service_id, location_id, ..) in resolved {
        if !stored.contains(id) {
            out[index] = Applied::Missing(no_pair(
                &service_id.unwrap_or_default(),
                &location_id.unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// A schedule with what it applies to (its service_at_location, when it names one, resolved
/// through `pairs` to both ids), or why it cannot be stored.
#[allow(clippy::type_complexity)]
fn resolve<'a>(
    row: &'a Row,
    pairs: &HashMap<String, (String, String)>,
) -> Result<Option<(&'a str, Option<String>, Option<String>, i64, &'a Schedule)>, String> {
    let Row::Schedule {
        id,
        service_id,
        location_id,
        service_at_location_id,
        position,
        schedule,
    } = row
    else {
        return Ok(None);
    };
    let (mut service_id, mut location_id) = (service_id.clone(), location_id.clone());
    if let Some(sal) = service_at_location_id {
        match pairs.get(sal) {
            Some((s, l)) => {
                service_id = Some(s.clone());
                location_id = Some(l.clone());
            }
            None if service_id.is_none() && location_id.is_none() => {
                return Err(format!("service_at_location `{sal}` does not exist"));
            }
            None => {}
        }
    }
    if service_id.is_none() && location_id.is_none() {
        return Err("the schedule names no service, location or service_at_location".into());
    }
    Ok(Some((id, service_id, location_id, *position, schedule)))
}
