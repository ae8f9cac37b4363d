//! PostgreSQL (schema `routing`), as a [`Dialect`] of [`SqlStore`]: a [`Write`] as one
//! statement (one round trip), the joined reads of AssignTeam and ReleaseTeam, the
//! sequencer's advisory lock, and numbered batches written with one `UNNEST`.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use prost::Message;
use relay_proto::routing::{Assignment, AssignmentEvent, AssignmentSource};
use relay_runtime::sequencer::{Numbered, Sequencer};
use sqlx::{Arguments, PgPool, Postgres, Row, postgres::PgArguments};

use super::{
    EndAssignment, IncidentWrite, Lookup, RecordRow, RequestRecord, StoreError, Write,
    assignment_state_name, from_timestamp, join_tags,
    sql::{ASSIGNMENT_COLUMNS, INCIDENT_COLUMNS, PendingEvent, SEQUENCER_TABLES},
    sql_store::{Dialect, SqlStore},
};

/// The PostgreSQL implementation of [`Store`](super::Store).
pub type PostgresStore = SqlStore<Postgres>;

/// Positional parameters of a statement built piece by piece.
#[derive(Default)]
struct Params {
    args: PgArguments,
    count: usize,
}

impl Params {
    /// Binds `value` and returns its placeholder (`$n`).
    fn bind<'q, T>(&mut self, value: T) -> Result<String, StoreError>
    where
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.args.add(value).map_err(StoreError::Backend)?;
        self.count += 1;
        Ok(format!("${}", self.count))
    }
}

/// The SQLSTATE `refuse_write` (migration 0003) raises; its DETAIL names the failed check.
const REFUSED: &str = "RL001";

/// A [`Write`] as one statement, run on its own (autocommit): one data-modifying CTE per
/// part, each judged by a check (`request_ok`, `incident_ok`, `end_ok`, `token_ok`; true for a
/// part not present). When a check failed, the statement calls `refuse_write` with the first
/// failed one, in the order the checks have always been reported: the error aborts the whole
/// statement, so nothing of a refused write is kept. The new assignment is inserted only when
/// every check before it passed, so a refused write reports its first refusal rather than a
/// unique violation it caused. One round trip, where BEGIN, the statement and COMMIT took
/// three and the statements one by one up to eight.
fn fused_write(write: &Write, now: DateTime<Utc>) -> Result<(String, PgArguments), StoreError> {
    let mut f = Fused::default();
    if let Some(request) = &write.request {
        f.request(request, now)?;
    }
    if let Some(change) = &write.incident {
        f.incident(change)?;
    }
    if let Some(end) = &write.end_assignment {
        f.end(end)?;
    }
    if let Some(a) = &write.new_assignment {
        f.assignment(a)?;
    }
    if !write.events.is_empty() {
        f.events(&write.region, &write.events)?;
    }
    Ok(f.finish())
}

/// The statement of [`fused_write`] as it is built: its parameters, its CTEs and the checks
/// (name, CTE) that judge them.
#[derive(Default)]
struct Fused {
    p: Params,
    ctes: Vec<String>,
    checks: Vec<(&'static str, &'static str)>,
}

impl Fused {
    /// Remembers the request's response (`request_ok`).
    fn request(&mut self, request: &RequestRecord, now: DateTime<Utc>) -> Result<(), StoreError> {
        let p = &mut self.p;
        self.ctes.push(format!(
            "q AS (INSERT INTO requests (request_id, fingerprint, response, create_time) \
             VALUES ({}, {}, {}, {}) ON CONFLICT (request_id) DO NOTHING RETURNING 1)",
            p.bind(request.request_id.as_str())?,
            p.bind(request.fingerprint.as_slice())?,
            p.bind(request.response.as_slice())?,
            p.bind(now)?,
        ));
        self.checks.push(("request_ok", "q"));
        Ok(())
    }

    /// Creates or updates the incident at the version read (`incident_ok`).
    fn incident(&mut self, change: &IncidentWrite) -> Result<(), StoreError> {
        let p = &mut self.p;
        let r = &change.record;
        let values = [
            p.bind(r.incident_id.as_str())?,
            p.bind(r.region.as_str())?,
            p.bind(r.cad_system.as_str())?,
            p.bind(r.priority)?,
            p.bind(r.location.latitude)?,
            p.bind(r.location.longitude)?,
            p.bind(join_tags(&r.required_capabilities))?,
            p.bind(join_tags(&r.preferred_capabilities))?,
            p.bind(r.expected_duration_seconds)?,
            p.bind(r.state.as_str())?,
            p.bind(r.queued_time)?,
            p.bind(r.escalate_time)?,
            p.bind(r.unserved_reason)?,
            p.bind(change.expected_version)?,
            p.bind(r.update_time)?,
            p.bind(r.cad_incident_id.as_str())?,
        ];
        // INCIDENT_COLUMNS lists the columns in the order of `values`; the version is
        // written one above the expected one.
        let columns: Vec<&str> = INCIDENT_COLUMNS.split(',').map(str::trim).collect();
        debug_assert_eq!(columns.len(), values.len());
        let version = columns.iter().position(|c| *c == "version").unwrap_or(13);
        let value = |i: usize| {
            if i == version {
                format!("{} + 1", values[i])
            } else {
                values[i].clone()
            }
        };
        self.ctes.push(if change.expected_version == 0 {
            format!(
                "i AS (INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES ({}) \
                 ON CONFLICT (incident_id) DO NOTHING RETURNING 1)",
                (0..columns.len()).map(value).collect::<Vec<_>>().join(", ")
            )
        } else {
            format!(
                "i AS (UPDATE incidents SET {} WHERE incident_id = {} AND version = {} RETURNING 1)",
                (1..columns.len())
                    .map(|i| format!("{} = {}", columns[i], value(i)))
                    .collect::<Vec<_>>()
                    .join(", "),
                values[0],
                values[version]
            )
        });
        self.checks.push(("incident_ok", "i"));
        Ok(())
    }

    /// Ends an ACTIVE assignment (`end_ok`).
    fn end(&mut self, end: &EndAssignment) -> Result<(), StoreError> {
        let p = &mut self.p;
        self.ctes.push(format!(
            "e AS (UPDATE assignments SET state = {}, end_time = {}, end_reason = {}, \
             end_cause = {} WHERE assignment_id = {} AND state = 'ACTIVE' RETURNING 1)",
            p.bind(assignment_state_name(end.state))?,
            p.bind(end.end_time)?,
            p.bind(end.end_reason.as_str())?,
            p.bind(i32::from(end.end_cause))?,
            p.bind(end.assignment_id.as_str())?,
        ));
        self.checks.push(("end_ok", "e"));
        Ok(())
    }

    /// Raises the team's fencing token (`token_ok`), then records the new ACTIVE assignment
    /// only when every check so far passed.
    fn assignment(&mut self, a: &Assignment) -> Result<(), StoreError> {
        let p = &mut self.p;
        self.ctes.push(format!(
            "t AS (INSERT INTO team_tokens (team_id, last_token) VALUES ({}, {}) \
             ON CONFLICT (team_id) DO UPDATE SET last_token = EXCLUDED.last_token \
             WHERE team_tokens.last_token < EXCLUDED.last_token RETURNING 1)",
            p.bind(a.team_id.as_str())?,
            p.bind(a.fencing_token)?,
        ));
        self.checks.push(("token_ok", "t"));
        let guard = self
            .checks
            .iter()
            .map(|(_, cte)| format!("EXISTS (SELECT 1 FROM {cte})"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let p = &mut self.p;
        self.ctes.push(format!(
            "a AS (INSERT INTO assignments (assignment_id, incident_id, team_id, region, \
             distance_meters, eta_seconds, assigned_at, fencing_token, state, source, \
             cad_system, end_time, end_reason, end_cause, cad_incident_id) \
             SELECT {}, {}, {}, {}, {}, {}, {}, {}, 'ACTIVE', {}, {}, NULL, '', 0, {} \
             WHERE {guard})",
            p.bind(a.assignment_id.as_str())?,
            p.bind(a.incident_id.as_str())?,
            p.bind(a.team_id.as_str())?,
            p.bind(a.region.as_str())?,
            p.bind(a.distance_meters)?,
            p.bind(a.eta_seconds)?,
            p.bind(from_timestamp(a.assigned_at.as_ref()))?,
            p.bind(a.fencing_token)?,
            p.bind(if a.source == 0 {
                AssignmentSource::AutoAssign as i32
            } else {
                a.source
            })?,
            p.bind(a.cad_system.as_str())?,
            p.bind(a.cad_incident_id.as_str())?,
        ));
        Ok(())
    }

    /// Appends the events, unnumbered: the sequencer numbers them (see sequence_events).
    fn events(&mut self, region: &str, events: &[AssignmentEvent]) -> Result<(), StoreError> {
        let p = &mut self.p;
        let payloads: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
        self.ctes.push(format!(
            "p AS (INSERT INTO pending_events (region, payload) SELECT {}, payload \
             FROM UNNEST({}::bytea[]) WITH ORDINALITY AS e(payload, n) ORDER BY n)",
            p.bind(region)?,
            p.bind(payloads)?,
        ));
        Ok(())
    }

    /// The statement: the CTEs, then the call of `refuse_write` with the first failed check.
    fn finish(self) -> (String, PgArguments) {
        let check = |name: &str| {
            self.checks
                .iter()
                .find(|(check, _)| *check == name)
                .map_or_else(
                    || format!("true AS {name}"),
                    |(_, cte)| format!("EXISTS (SELECT 1 FROM {cte}) AS {name}"),
                )
        };
        let select = format!(
            "SELECT refuse_write(CASE WHEN NOT c.request_ok THEN 'request_ok' \
             WHEN NOT c.incident_ok THEN 'incident_ok' WHEN NOT c.end_ok THEN 'end_ok' \
             ELSE 'token_ok' END) \
             FROM (SELECT {}, {}, {}, {}) AS c \
             WHERE NOT (c.request_ok AND c.incident_ok AND c.end_ok AND c.token_ok)",
            check("request_ok"),
            check("incident_ok"),
            check("end_ok"),
            check("token_ok")
        );
        let sql = if self.ctes.is_empty() {
            select
        } else {
            format!("WITH {} {select}", self.ctes.join(", "))
        };
        (sql, self.p.args)
    }
}

/// The refusal a failed write stands for: a check `refuse_write` named, or one of the
/// unique indexes that allow one ACTIVE assignment per team and per incident.
fn refusal(error: &sqlx::Error) -> Option<StoreError> {
    let database = error.as_database_error()?;
    if database.code().as_deref() == Some(REFUSED) {
        let detail = database
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(sqlx::postgres::PgDatabaseError::detail);
        return match detail {
            Some("request_ok") => Some(StoreError::DuplicateRequest),
            Some("incident_ok") => Some(StoreError::VersionConflict),
            Some("end_ok") => Some(StoreError::NotActive),
            Some("token_ok") => Some(StoreError::StaleToken),
            _ => None,
        };
    }
    match database.constraint() {
        Some("assignments_one_active_per_team") => Some(StoreError::TeamBusy),
        Some("assignments_one_active_per_incident") => Some(StoreError::IncidentBusy),
        _ => None,
    }
}

/// One sequencer at a time across replicas (the lock is held until its batch commits, so the
/// next one sees its moves); the lock's name is the one routing has always taken, so replicas
/// of the previous release exclude the new ones too.
static SEQUENCER: LazyLock<Sequencer> = LazyLock::new(|| {
    Sequencer::new(
        SEQUENCER_TABLES,
        Some("SELECT pg_advisory_xact_lock(hashtext('relay.routing.sequencer'))"),
    )
});

/// A read of a request's remembered response (`q`, by `$1`), an incident (`i`) and an
/// assignment (`a`), joined as `joins` says, in one round trip.
fn lookup_sql(joins: &str) -> String {
    let aliased = |columns: &str, alias: &str| {
        columns
            .split(',')
            .map(|c| format!("{alias}.{0} AS {alias}_{0}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT q.fingerprint AS q_fingerprint, q.response AS q_response, {}, {} \
         FROM (SELECT 1) AS one LEFT JOIN requests q ON q.request_id = $1 {joins}",
        aliased(INCIDENT_COLUMNS, "i"),
        aliased(ASSIGNMENT_COLUMNS, "a")
    )
}

/// The fused write `query` and the call's audit `record` in one transaction: no change
/// without its record.
async fn audited(
    pool: &PgPool,
    query: sqlx::query::Query<'_, sqlx::Postgres, PgArguments>,
    record: &relay_runtime::audit::AuditRecord,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    query.execute(&mut *tx).await?;
    relay_runtime::audit::AuditLog::append::<sqlx::Postgres>(&mut tx, record).await?;
    tx.commit().await
}

async fn lookup_row(
    pool: &PgPool,
    sql: &str,
    request_id: &str,
    key: &str,
) -> Result<Lookup, StoreError> {
    let row = sqlx::query(sql)
        .bind(request_id)
        .bind(key)
        .fetch_one(pool)
        .await?;
    let fingerprint: Option<Vec<u8>> = row.try_get("q_fingerprint")?;
    let request = match fingerprint {
        Some(fingerprint) => Some(RequestRecord {
            request_id: request_id.to_owned(),
            fingerprint,
            response: row.try_get("q_response")?,
        }),
        None => None,
    };
    let incident_id: Option<String> = row.try_get("i_incident_id")?;
    let assignment_id: Option<String> = row.try_get("a_assignment_id")?;
    Ok(Lookup {
        request,
        incident: incident_id.map(|_| row.incident_at("i_")).transpose()?,
        assignment: assignment_id.map(|_| row.assignment_at("a_")).transpose()?,
    })
}

/// AssignTeam's read: the request, the incident and its ACTIVE assignment.
static LOOKUP: LazyLock<String> = LazyLock::new(|| {
    lookup_sql(
        "LEFT JOIN incidents i ON i.incident_id = $2 \
         LEFT JOIN assignments a ON a.incident_id = $2 AND a.state = 'ACTIVE'",
    )
});

/// ReleaseTeam's read: the request, the assignment (in any state) and its incident.
static LOOKUP_ASSIGNMENT: LazyLock<String> = LazyLock::new(|| {
    lookup_sql(
        "LEFT JOIN assignments a ON a.assignment_id = $2 \
         LEFT JOIN incidents i ON i.incident_id = a.incident_id",
    )
});

impl Dialect for Postgres {
    fn sequencer() -> &'static Sequencer {
        &SEQUENCER
    }

    /// Writes a numbered batch into `events`, in one statement. clock_timestamp() under the
    /// sequencer's lock never decreases along a region's numbers, so pruning by time never
    /// leaves a hole before a kept event.
    async fn insert_numbered(
        tx: &mut sqlx::PgConnection,
        rows: Vec<Numbered<PendingEvent>>,
    ) -> Result<(), StoreError> {
        let mut regions = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        for numbered in rows {
            seqs.push(numbered.sequence);
            regions.push(numbered.row.region);
            payloads.push(numbered.row.payload);
        }
        sqlx::query(
            "INSERT INTO events (region, seq, payload, event_time) \
             SELECT region, seq, payload, clock_timestamp() \
             FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS e(region, seq, payload)",
        )
        .bind(&regions)
        .bind(&seqs)
        .bind(&payloads)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// [`fused_write`]: one round trip.
    async fn write(store: &SqlStore<Self>, write: Write) -> Result<(), StoreError> {
        let (sql, args) = fused_write(&write, Utc::now())?;
        let query = sqlx::query_with(&sql, args);
        let written = match &write.audit {
            None => query.execute(store.pool()).await.map(drop),
            Some(record) => audited(store.pool(), query, record).await,
        };
        written.map_err(|error| refusal(&error).unwrap_or_else(|| error.into()))
    }

    async fn lookup(
        store: &SqlStore<Self>,
        request_id: &str,
        incident_id: &str,
    ) -> Result<Lookup, StoreError> {
        lookup_row(store.pool(), &LOOKUP, request_id, incident_id).await
    }

    async fn lookup_assignment(
        store: &SqlStore<Self>,
        request_id: &str,
        assignment_id: &str,
    ) -> Result<Lookup, StoreError> {
        lookup_row(store.pool(), &LOOKUP_ASSIGNMENT, request_id, assignment_id).await
    }
}
