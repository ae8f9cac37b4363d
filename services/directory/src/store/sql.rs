//! [`SqlStore`], the directory's storage on either SQL backend: both schemas have the same
//! tables, columns and types (times are BIGINT microseconds), so the statements here serve
//! both, and what differs is the backend's [`Dialect`] (see `postgres.rs` and `sqlite.rs`).

use std::collections::HashMap;

use prost::Message;
use relay_proto::directory::{
    Capacity, CreateReferralResponse, Referral, ReferralStatus, Service, UpdateCapacityResponse,
    UpdateReferralResponse, UpsertServiceResponse,
};

use super::{
    Candidate, CandidateFilter, DirectoryStore, Dump, Idem, LocationHours, ReferralFilter, Row,
    StoreResult, StoredRequest,
    documents::{load_services, refresh_search, replace_service, terms_changed},
    query::{Columns, Dialect, Query},
    rows::{
        CHUNK, REFERRAL_COLUMNS, SCHEDULE_COLUMNS, applies, decode_capacity, decode_referral,
        decode_schedules,
    },
    write::{SqlSession, offered_at},
};
use crate::{
    error::DirectoryError,
    referral::{self, CreateFacts},
    timestamp_to_micros,
};

/// The directory's storage in a SQL database `D` (PostgreSQL or SQLite).
#[derive(Debug)]
pub struct SqlStore<D: Dialect> {
    pool: sqlx::Pool<D>,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A store on `pool` (migrated).
    #[must_use]
    pub fn new(pool: sqlx::Pool<D>) -> Self {
        Self { pool }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &sqlx::Pool<D> {
        &self.pool
    }
}

/// Records the response of a mutation under its request_id, and its audit record, in the
/// mutation's transaction.
async fn record<D: Dialect>(
    conn: &mut D::Connection,
    idem: &Idem,
    response: &[u8],
) -> StoreResult<()> {
    let result = Query::new(
        "INSERT INTO requests (request_id, rpc, fingerprint, response, create_time) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&idem.request_id)
    .bind(idem.rpc)
    .bind(idem.fingerprint.as_bytes())
    .bind(response)
    .bind(idem.now)
    .execute::<D>(conn)
    .await;
    match result {
        Ok(_) => {}
        Err(error) if DirectoryError::is_unique_violation(&error) => {
            return Err(DirectoryError::RequestRace(idem.request_id.clone()));
        }
        Err(error) => return Err(error.into()),
    }
    // The last statement before the commit: the trail's head is locked for the commit alone.
    if let Some(audit) = &idem.audit {
        D::append_audit(conn, audit).await?;
    }
    Ok(())
}

/// The status of a service, or [`DirectoryError::ServiceNotFound`].
async fn service_status<D: Dialect>(
    conn: &mut D::Connection,
    service_id: &str,
) -> StoreResult<Option<i64>> {
    Query::new("SELECT status FROM services WHERE id = $1")
        .bind(service_id)
        .fetch_optional::<D>(conn)
        .await?
        .map(|row| row.int(0))
        .transpose()
        .map_err(Into::into)
}

/// The referrals of one incident to one service at one location: (id, status).
async fn referrals_of<D: Dialect>(
    conn: &mut D::Connection,
    referral: &Referral,
) -> StoreResult<Vec<(String, i64)>> {
    let rows = Query::new(
        "SELECT referral_id, status FROM referrals WHERE incident_id = $1 AND service_id = $2 \
         AND location_id = $3",
    )
    .bind(&referral.incident_id)
    .bind(&referral.service_id)
    .bind(&referral.location_id)
    .fetch_all::<D>(conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.text(0)?, row.int(1)?)))
        .collect()
}

impl<D: Dialect> DirectoryStore for SqlStore<D> {
    type Session = SqlSession<D>;

    async fn begin(&self) -> StoreResult<SqlSession<D>> {
        Ok(SqlSession {
            tx: relay_runtime::storage::begin_write(&self.pool).await?,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        Query::new("SELECT 1").execute::<D>(&mut conn).await?;
        Ok(())
    }

    async fn lookup_request(&self, request_id: &str) -> StoreResult<Option<StoredRequest>> {
        let mut conn = self.pool.acquire().await?;
        let row =
            Query::new("SELECT rpc, fingerprint, response FROM requests WHERE request_id = $1")
                .bind(request_id)
                .fetch_optional::<D>(&mut conn)
                .await?;
        row.map(|row| {
            Ok(StoredRequest {
                rpc: row.text(0)?,
                fingerprint: row.bytes(1)?,
                response: row.bytes(2)?,
            })
        })
        .transpose()
    }

    async fn upsert_service(
        &self,
        service: &Service,
        idem: &Idem,
    ) -> StoreResult<UpsertServiceResponse> {
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let created = Query::new("SELECT 1 FROM services WHERE id = $1")
            .bind(&service.id)
            .fetch_optional::<D>(&mut tx)
            .await?
            .is_none();
        // Whether a term it names differs from the stored one: only then are the other
        // services with that term (a seventh of a generated directory) refreshed.
        let terms_changed = terms_changed::<D>(&mut tx, service).await?;
        replace_service::<D>(&mut tx, service, idem.now).await?;
        let organization_id = service
            .organization
            .as_ref()
            .map(|o| o.id.clone())
            .unwrap_or_default();
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
        refresh_search::<D>(&mut tx, &condition, &service.id, &organization_id).await?;
        let stored = load_services::<D>(&mut tx, std::slice::from_ref(&service.id))
            .await?
            .pop()
            .ok_or_else(|| DirectoryError::Corrupt("upserted service vanished".into()))?;
        let response = UpsertServiceResponse {
            service: Some(stored),
            created,
        };
        record::<D>(&mut tx, idem, &response.encode_to_vec()).await?;
        tx.commit().await?;
        Ok(response)
    }

    async fn get_services(&self, ids: &[String]) -> StoreResult<Vec<Service>> {
        let mut conn = self.pool.acquire().await?;
        load_services::<D>(&mut conn, ids).await
    }

    async fn search_candidates(&self, filter: &CandidateFilter) -> StoreResult<Vec<Candidate>> {
        D::search_candidates(&self.pool, filter).await
    }

    async fn hours(
        &self,
        pairs: &[(String, String)],
    ) -> StoreResult<HashMap<(String, String), LocationHours>> {
        let mut out = HashMap::new();
        let mut conn = self.pool.acquire().await?;
        for chunk in pairs.chunks(CHUNK) {
            let mut locations: Vec<String> = chunk
                .iter()
                .map(|p| p.1.clone())
                .filter(|l| !l.is_empty())
                .collect();
            locations.sort();
            locations.dedup();
            let mut services: Vec<String> = chunk.iter().map(|p| p.0.clone()).collect();
            services.sort();
            services.dedup();
            if locations.is_empty() {
                continue;
            }
            let mut query = Query::new("SELECT id, time_zone FROM locations WHERE id IN (");
            query.push_in(&locations).push(")");
            let mut zones = HashMap::new();
            for row in query.fetch_all::<D>(&mut conn).await? {
                zones.insert(row.text(0)?, row.text(1)?);
            }
            let mut query = Query::new(SCHEDULE_COLUMNS);
            query.push(" WHERE location_id IN (").push_in(&locations);
            query
                .push(") OR (location_id IS NULL AND service_id IN (")
                .push_in(&services);
            query.push(")) ORDER BY position, id");
            let schedules = decode_schedules(&query.fetch_all::<D>(&mut conn).await?)?;
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
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        if service_status::<D>(&mut tx, service_id).await?.is_none() {
            return Err(DirectoryError::ServiceNotFound(service_id.to_owned()));
        }
        if !offered_at::<D>(&mut tx, service_id, location_id).await? {
            return Err(DirectoryError::LocationNotFound {
                service_id: service_id.to_owned(),
                location_id: location_id.to_owned(),
            });
        }
        let current = Query::new(
            "SELECT available, total, as_of_time FROM capacity WHERE service_id = $1 AND location_id = $2",
        )
        .bind(service_id)
        .bind(location_id)
        .fetch_optional::<D>(&mut tx)
        .await?;
        let current = current.map(|row| decode_capacity(&row, 0)).transpose()?;
        let as_of = capacity.as_of_time.as_ref().map_or(0, timestamp_to_micros);
        let response = match current {
            // The newer report wins: an older or equal one is answered with the stored one.
            Some(current)
                if current.as_of_time.as_ref().map_or(0, timestamp_to_micros) >= as_of =>
            {
                UpdateCapacityResponse {
                    capacity: Some(current),
                    stale: true,
                }
            }
            _ => {
                Query::new(
                    "INSERT INTO capacity (service_id, location_id, available, total, as_of_time) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (service_id, location_id) DO UPDATE SET available = excluded.available, \
                     total = excluded.total, as_of_time = excluded.as_of_time",
                )
                .bind(service_id)
                .bind(location_id)
                .bind(i64::from(capacity.available))
                .bind(i64::from(capacity.total))
                .bind(as_of)
                .execute::<D>(&mut tx)
                .await?;
                UpdateCapacityResponse {
                    capacity: Some(*capacity),
                    stale: false,
                }
            }
        };
        record::<D>(&mut tx, idem, &response.encode_to_vec()).await?;
        tx.commit().await?;
        Ok(response)
    }

    async fn create_referral(
        &self,
        referral: &Referral,
        idem: &Idem,
    ) -> StoreResult<CreateReferralResponse> {
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let facts = CreateFacts {
            service_status: service_status::<D>(&mut tx, &referral.service_id).await?,
            offered_at_location: referral.location_id.is_empty()
                || offered_at::<D>(&mut tx, &referral.service_id, &referral.location_id).await?,
            referrals: referrals_of::<D>(&mut tx, referral).await?,
        };
        let stored = referral::plan_create(referral, &facts, idem.now)?;
        let inserted = Query::new(
            "INSERT INTO referrals (referral_id, incident_id, service_id, location_id, status, notes, create_time, update_time, \
             incident_checked) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        )
        .bind(&stored.referral_id)
        .bind(&stored.incident_id)
        .bind(&stored.service_id)
        .bind(&stored.location_id)
        .bind(i64::from(stored.status))
        .bind(&stored.notes)
        .bind(idem.now)
        .bind(i64::from(stored.incident_checked))
        .execute::<D>(&mut tx)
        .await;
        if let Err(error) = inserted {
            if DirectoryError::is_unique_violation(&error) {
                return Err(DirectoryError::ReferralExists(String::new()));
            }
            return Err(error.into());
        }
        let response = CreateReferralResponse {
            referral: Some(stored),
        };
        record::<D>(&mut tx, idem, &response.encode_to_vec()).await?;
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
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let row = Query::new(format!(
            "{REFERRAL_COLUMNS} WHERE referral_id = $1{}",
            D::FOR_UPDATE
        ))
        .bind(referral_id)
        .fetch_optional::<D>(&mut tx)
        .await?
        .ok_or_else(|| DirectoryError::ReferralNotFound(referral_id.to_owned()))?;
        let current = decode_referral(&row)?;
        let next = referral::transition(&current, status, notes, idem.now)?;
        if next != current {
            let update = Query::new(
                "UPDATE referrals SET status = $2, notes = $3, update_time = $4 WHERE referral_id = $1",
            )
            .bind(referral_id)
            .bind(i64::from(next.status))
            .bind(&next.notes)
            .bind(next.update_time.as_ref().map_or(idem.now, timestamp_to_micros))
            .execute::<D>(&mut tx)
            .await;
            if let Err(error) = update {
                if DirectoryError::is_unique_violation(&error) {
                    return Err(DirectoryError::ReferralExists(String::new()));
                }
                return Err(error.into());
            }
        }
        let response = UpdateReferralResponse {
            referral: Some(next),
        };
        record::<D>(&mut tx, idem, &response.encode_to_vec()).await?;
        tx.commit().await?;
        Ok(response)
    }

    async fn dump(&self, table: Dump) -> StoreResult<Vec<Row>> {
        let mut conn = self.pool.acquire().await?;
        super::dump::dump::<D>(&mut conn, table).await
    }

    async fn erase_referral_notes(
        &self,
        created_before: i64,
        requests_before: i64,
    ) -> StoreResult<(u64, u64)> {
        // Look before writing: on SQLite even an UPDATE of no rows takes the write lock, and
        // a concurrent mutation whose transaction already read would then fail with
        // SQLITE_BUSY instead of waiting.
        let due = {
            let mut conn = self.pool.acquire().await?;
            Query::new(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM referrals WHERE create_time < $1 AND notes <> '') \
                 OR EXISTS (SELECT 1 FROM requests WHERE rpc IN ('CreateReferral', 'UpdateReferral') AND create_time < $2) \
                 THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END",
            )
            .bind(created_before)
            .bind(requests_before)
            .fetch_optional::<D>(&mut conn)
            .await?
            .map(|row| row.int(0))
            .transpose()?
            .unwrap_or(0)
        };
        if due == 0 {
            return Ok((0, 0));
        }
        let mut tx = relay_runtime::storage::begin_write(&self.pool).await?;
        let referrals =
            Query::new("UPDATE referrals SET notes = '' WHERE create_time < $1 AND notes <> ''")
                .bind(created_before)
                .execute::<D>(&mut tx)
                .await?;
        let requests = Query::new(
            "DELETE FROM requests WHERE rpc IN ('CreateReferral', 'UpdateReferral') AND create_time < $1",
        )
        .bind(requests_before)
        .execute::<D>(&mut tx)
        .await?;
        tx.commit().await?;
        Ok((referrals, requests))
    }

    async fn list_referrals(&self, filter: &ReferralFilter) -> StoreResult<Vec<Referral>> {
        let mut query = Query::new(REFERRAL_COLUMNS);
        query.push(" WHERE 1 = 1");
        if !filter.incident_id.is_empty() {
            query
                .push(" AND incident_id = ")
                .push_bind(filter.incident_id.as_str());
        }
        if !filter.service_id.is_empty() {
            query
                .push(" AND service_id = ")
                .push_bind(filter.service_id.as_str());
        }
        if filter.status != 0 {
            query
                .push(" AND status = ")
                .push_bind(i64::from(filter.status));
        }
        if let Some((time, id)) = &filter.after {
            query.push(" AND (create_time > ").push_bind(*time);
            query.push(" OR (create_time = ").push_bind(*time);
            query
                .push(" AND referral_id > ")
                .push_bind(id.as_str())
                .push("))");
        }
        query.push(format!(
            " ORDER BY create_time, referral_id{} LIMIT ",
            D::COLLATE
        ));
        query.push_bind(filter.limit);
        let mut conn = self.pool.acquire().await?;
        let rows = query.fetch_all::<D>(&mut conn).await?;
        rows.iter().map(decode_referral).collect()
    }
}

/// A statement that starts with `terms(id)`, the ids of the terms with the filter's taxonomy
/// codes and of their descendants, when it has codes (both backends' search reads it).
pub(super) fn with_terms(filter: &CandidateFilter) -> Query<'_> {
    let mut query = Query::default();
    if !filter.taxonomy_codes.is_empty() {
        query.push("WITH RECURSIVE terms(id) AS (SELECT id FROM taxonomy_terms WHERE code IN (");
        query.push_in(&filter.taxonomy_codes);
        query.push(
            ") UNION SELECT c.id FROM taxonomy_terms c JOIN terms ON c.parent_id = terms.id) ",
        );
    }
    query
}
