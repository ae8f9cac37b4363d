//! A service's own rows, its search data and its stored document (the lists GetService
//! returns, kept as JSON so a service loads in one statement) on either backend: replacing
//! them, refreshing what other services share with it, and loading services whole.

use std::collections::HashMap;

use relay_proto::directory::Service;

use super::{
    Applied, StoreResult,
    query::{Columns, Dialect, Query},
    rows::{CHUNK, CapacityJson, Lists, SERVICE_COLUMNS, decode_json, decode_service, with_lists},
    write::apply_row,
};
use crate::error::DirectoryError;

/// Recomputes search text for the services matched by `condition` (a WHERE clause on
/// `services` with `$1`, `$2` bound to `a`, `b`), their search rows and full-text entries,
/// and their stored documents.
pub(super) async fn refresh_search<D: Dialect>(
    conn: &mut D::Connection,
    condition: &str,
    a: &str,
    b: &str,
) -> StoreResult<()> {
    let matched = format!("(SELECT id FROM services WHERE {condition})");
    let run = |sql: String| Query::new(sql).bind(a).bind(b);
    run(format!(
        "UPDATE services SET search_text = {} WHERE {condition}",
        D::SEARCH_TEXT
    ))
    .execute::<D>(conn)
    .await?;
    D::refresh_rows(conn, condition, a, b).await?;
    run(format!(
        "DELETE FROM service_documents WHERE service_id IN {matched}"
    ))
    .execute::<D>(conn)
    .await?;
    run(format!(
        "INSERT INTO service_documents (service_id, lists) SELECT s.id, {} FROM services s \
         WHERE s.id IN {matched}",
        D::lists_json("s.id")
    ))
    .execute::<D>(conn)
    .await?;
    Ok(())
}

/// The services with these ids, in the order given (unknown ids are left out).
pub(super) async fn load_services<D: Dialect>(
    conn: &mut D::Connection,
    ids: &[String],
) -> StoreResult<Vec<Service>> {
    let mut by_id: HashMap<String, Service> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        load_chunk::<D>(conn, chunk, &mut by_id).await?;
    }
    Ok(ids.iter().filter_map(|id| by_id.get(id).cloned()).collect())
}

/// Loads services in one statement: each row carries its stored document (terms, languages,
/// phones, locations with schedules; see [`Dialect::lists_json`]) and its live capacity as
/// JSON.
async fn load_chunk<D: Dialect>(
    conn: &mut D::Connection,
    ids: &[String],
    out: &mut HashMap<String, Service>,
) -> StoreResult<()> {
    let mut query = Query::new(format!(
        "SELECT {SERVICE_COLUMNS}, COALESCE(d.lists, '[[], [], [], []]'), COALESCE({}, '[]') \
         FROM services s LEFT JOIN organizations o ON o.id = s.organization_id \
         LEFT JOIN service_documents d ON d.service_id = s.id WHERE s.id IN (",
        D::CAPACITY_JSON
    ));
    query.push_in(ids).push(")");
    for row in query.fetch_all::<D>(conn).await? {
        let lists: Lists = decode_json(&row.text(18)?)?;
        let capacity: Vec<CapacityJson> = decode_json(&row.text(19)?)?;
        let service = with_lists(decode_service(&row)?, lists, &capacity);
        out.insert(service.id.clone(), service);
    }
    Ok(())
}

/// Whether any term among `terms` differs from its stored version.
pub(super) async fn terms_changed<D: Dialect>(
    conn: &mut D::Connection,
    service: &Service,
) -> StoreResult<bool> {
    let mut changed = false;
    for term in &service.taxonomy_terms {
        let stored = Query::new(
            "SELECT code, name, taxonomy, COALESCE(parent_id, '') FROM taxonomy_terms WHERE id = $1",
        )
        .bind(&term.id)
        .fetch_optional::<D>(conn)
        .await?;
        if let Some(row) = stored {
            let stored = (row.text(0)?, row.text(1)?, row.text(2)?, row.text(3)?);
            changed |= stored
                != (
                    term.code.clone(),
                    term.name.clone(),
                    term.taxonomy.clone(),
                    term.parent_id.clone(),
                );
        }
    }
    Ok(changed)
}

/// Replaces a service's own rows (its lists, locations and schedules) by those of `service`.
pub(super) async fn replace_service<D: Dialect>(
    conn: &mut D::Connection,
    service: &Service,
    now: i64,
) -> StoreResult<()> {
    for table in [
        "service_taxonomy",
        "languages",
        "phones",
        "schedules",
        "service_at_location",
    ] {
        Query::new(format!("DELETE FROM {table} WHERE service_id = $1"))
            .bind(&service.id)
            .execute::<D>(conn)
            .await?;
    }
    for row in crate::rows_of_service(service, now) {
        if let Applied::Missing(reason) = apply_row::<D>(conn, &row).await? {
            return Err(DirectoryError::Corrupt(reason));
        }
    }
    Query::new(
        "DELETE FROM capacity WHERE service_id = $1 AND NOT EXISTS (SELECT 1 FROM service_at_location sal \
         WHERE sal.service_id = capacity.service_id AND sal.location_id = capacity.location_id)",
    )
    .bind(&service.id)
    .execute::<D>(conn)
    .await?;
    Ok(())
}
