//! Reading a stored table whole, as the rows an import would write again (for an export).

use relay_proto::directory::{Address, Organization, Phone, TaxonomyTerm};

use super::{
    Dump, Row, StoreResult,
    query::{Columns, Dialect, Query},
    rows::{decode_capacity, decode_schedules, decode_service},
};

/// Every stored row of one table, in an order that keeps each service's lists in the order
/// GetService returns them when the rows are imported again in that order.
///
/// # Errors
/// When the database fails.
pub async fn dump<D: Dialect>(conn: &mut D::Connection, table: Dump) -> StoreResult<Vec<Row>> {
    let c = D::COLLATE;
    let sql = match table {
        Dump::Organizations => {
            format!("SELECT id, name, description, url, email FROM organizations ORDER BY id{c}")
        }
        Dump::TaxonomyTerms => format!(
            "SELECT id, code, name, taxonomy, COALESCE(parent_id, '') FROM taxonomy_terms ORDER BY id{c}"
        ),
        // The columns of decode_service, without the organization's own fields.
        Dump::Services => format!(
            "SELECT s.id, s.organization_id, '', '', '', '', s.name, s.alternate_name, s.description, s.url, \
             s.email, s.status, s.eligibility_description, s.fees_description, s.application_process, s.alert, \
             s.create_time, s.update_time FROM services s ORDER BY s.id{c}"
        ),
        Dump::ServiceTaxonomy => format!(
            "SELECT service_id, taxonomy_term_id FROM service_taxonomy ORDER BY service_id{c}, taxonomy_term_id{c}"
        ),
        Dump::Languages => format!(
            "SELECT service_id, code, position FROM languages ORDER BY position, code{c}, service_id{c}"
        ),
        Dump::Phones => format!(
            "SELECT id, service_id, number, extension, type, description FROM phones ORDER BY id{c}"
        ),
        Dump::Locations => format!(
            "SELECT id, name, latitude, longitude, time_zone, attention, address_1, address_2, city, region, \
             state_province, postal_code, country, has_address FROM locations ORDER BY id{c}"
        ),
        Dump::ServiceAtLocation => format!(
            "SELECT id, service_id, location_id, position FROM service_at_location \
             ORDER BY position, location_id{c}, service_id{c}"
        ),
        Dump::Schedules => format!(
            "SELECT service_id, location_id, freq, \"interval\", byday, bymonthday, opens_at, closes_at, valid_from, \
             valid_to, dtstart, description, id, position FROM schedules ORDER BY position, id{c}"
        ),
        Dump::Capacity => format!(
            "SELECT service_id, location_id, available, total, as_of_time FROM capacity \
             ORDER BY service_id{c}, location_id{c}"
        ),
    };
    let rows = Query::new(sql).fetch_all::<D>(conn).await?;
    match table {
        Dump::Schedules => schedules(&rows),
        Dump::Locations => locations(&rows),
        _ => rows.iter().map(|row| one(table, row)).collect(),
    }
}

/// The row of `table` a stored row is (every table but locations and schedules).
fn one(table: Dump, row: &impl Columns) -> StoreResult<Row> {
    Ok(match table {
        Dump::Organizations => Row::Organization {
            id: row.text(0)?,
            name: row.text(1)?,
            description: row.text(2)?,
            url: row.text(3)?,
            email: row.text(4)?,
        },
        Dump::TaxonomyTerms => Row::TaxonomyTerm(TaxonomyTerm {
            id: row.text(0)?,
            code: row.text(1)?,
            name: row.text(2)?,
            taxonomy: row.text(3)?,
            parent_id: row.text(4)?,
        }),
        Dump::Services => {
            let mut service = decode_service(row)?;
            let update_time = row.int(17)?;
            if let Some(organization) = &mut service.organization {
                *organization = Organization {
                    id: organization.id.clone(),
                    ..Organization::default()
                };
            }
            service.create_time = None;
            service.update_time = None;
            Row::Service(Box::new(service), update_time)
        }
        Dump::ServiceTaxonomy => Row::ServiceTaxonomy {
            service_id: row.text(0)?,
            term_id: row.text(1)?,
        },
        Dump::Languages => Row::Language {
            service_id: row.text(0)?,
            code: row.text(1)?,
            position: row.int(2)?,
        },
        Dump::Phones => Row::Phone {
            id: row.text(0)?,
            service_id: row.text(1)?,
            phone: Phone {
                number: row.text(2)?,
                extension: row.text(3)?,
                r#type: row.text(4)?,
                description: row.text(5)?,
            },
        },
        Dump::ServiceAtLocation => Row::ServiceAtLocation {
            id: row.text(0)?,
            service_id: row.text(1)?,
            location_id: row.text(2)?,
            position: row.int(3)?,
        },
        Dump::Capacity => Row::Capacity {
            service_id: row.text(0)?,
            location_id: row.text(1)?,
            capacity: decode_capacity(row, 2)?,
        },
        Dump::Locations | Dump::Schedules => {
            unreachable!("locations and schedules are read by their own functions")
        }
    })
}

/// Each location, followed by its address when it has one.
fn locations(rows: &[impl Columns]) -> StoreResult<Vec<Row>> {
    let mut out = Vec::new();
    for row in rows {
        let id = row.text(0)?;
        out.push(Row::Location {
            id: id.clone(),
            name: row.text(1)?,
            point: row.opt_float(2)?.zip(row.opt_float(3)?),
            time_zone: row.text(4)?,
        });
        if row.int(13)? != 0 {
            out.push(Row::Address {
                location_id: id,
                address: Address {
                    attention: row.text(5)?,
                    address_1: row.text(6)?,
                    address_2: row.text(7)?,
                    city: row.text(8)?,
                    region: row.text(9)?,
                    state_province: row.text(10)?,
                    postal_code: row.text(11)?,
                    country: row.text(12)?,
                },
            });
        }
    }
    Ok(out)
}

/// Schedules with the service and/or location ids as stored.
fn schedules(rows: &[impl Columns]) -> StoreResult<Vec<Row>> {
    let ids: Vec<(String, i64)> = rows
        .iter()
        .map(|row| Ok((row.text(12)?, row.int(13)?)))
        .collect::<StoreResult<_>>()?;
    Ok(decode_schedules(rows)?
        .into_iter()
        .zip(ids)
        .map(
            |((service_id, location_id, schedule), (id, position))| Row::Schedule {
                id,
                service_id,
                location_id,
                service_at_location_id: None,
                position,
                schedule,
            },
        )
        .collect())
}
