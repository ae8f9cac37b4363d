//! Row mapping shared by both backends: stored rows and stored JSON documents to the
//! model, and the keys a multi-row write reports its rows by.

use std::collections::HashSet;

use relay_proto::common::GeoPoint;
use relay_proto::directory::{
    Address, Capacity, Organization, Phone, Referral, Schedule, Service, ServiceLocation,
    TaxonomyTerm,
};

use super::{Row, StoreResult, query::Columns};
use crate::{error::DirectoryError, micros_to_timestamp};

/// Ids per statement when a list is bound (well below both databases' limits).
pub const CHUNK: usize = 500;

/// Rows per multi-row statement when importing (at most 14 bound values each, well below
/// both databases' limits).
pub const BATCH: usize = 1000;

/// A schedule as both backends aggregate it to JSON: `[freq, interval, byday, bymonthday,
/// opens_at, closes_at, valid_from, valid_to, dtstart, description]`.
pub type ScheduleJson = (
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

/// A location in a stored document: `[id, name, latitude, longitude, time_zone, attention,
/// address_1, address_2, city, region, state_province, postal_code, country, has_address,
/// schedules]`.
type LocationJson = (
    String,
    String,
    Option<f64>,
    Option<f64>,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Vec<ScheduleJson>,
);

/// A service's stored document: `[terms, languages, phones, locations]`, each in the order
/// GetService returns them.
pub type Lists = (
    Vec<(String, String, String, String, String)>,
    Vec<String>,
    Vec<(String, String, String, String)>,
    Vec<LocationJson>,
);

/// A capacity report in a loaded service: `[location_id, available, total, as_of_time]`.
pub type CapacityJson = (String, i64, i64, i64);

/// The columns of a service a load query reads first (0 to 17), before its lists.
pub const SERVICE_COLUMNS: &str = "s.id, s.organization_id, COALESCE(o.name, ''), \
     COALESCE(o.description, ''), COALESCE(o.url, ''), COALESCE(o.email, ''), s.name, \
     s.alternate_name, s.description, s.url, s.email, s.status, s.eligibility_description, \
     s.fees_description, s.application_process, s.alert, s.create_time, s.update_time";

/// The statement start of reading referrals whole.
pub const REFERRAL_COLUMNS: &str = "SELECT referral_id, incident_id, service_id, location_id, \
     status, notes, create_time, update_time, incident_checked FROM referrals";

/// The statement start of reading schedules with the service and location they apply to.
pub const SCHEDULE_COLUMNS: &str = "SELECT service_id, location_id, freq, \"interval\", byday, \
     bymonthday, opens_at, closes_at, valid_from, valid_to, dtstart, description FROM schedules";

fn int32(value: i64, otherwise: i32) -> i32 {
    i32::try_from(value).unwrap_or(otherwise)
}

/// A schedule from its JSON form.
#[must_use]
pub fn schedule_of(json: ScheduleJson) -> Schedule {
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
        freq: int32(freq, 0),
        interval: int32(interval, 0),
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

/// Stored JSON, parsed.
///
/// # Errors
/// [`DirectoryError::Corrupt`] when it does not parse as `T`.
pub fn decode_json<T: serde::de::DeserializeOwned>(json: &str) -> StoreResult<T> {
    serde_json::from_str(json).map_err(|e| DirectoryError::Corrupt(format!("stored JSON: {e}")))
}

/// A JSON array of [`ScheduleJson`], as schedules.
///
/// # Errors
/// As [`decode_json`].
pub fn decode_schedule_json(json: &str) -> StoreResult<Vec<Schedule>> {
    Ok(decode_json::<Vec<ScheduleJson>>(json)?
        .into_iter()
        .map(schedule_of)
        .collect())
}

/// The service columns (0 to 17, [`SERVICE_COLUMNS`]) of a load query, without its lists.
///
/// # Errors
/// When a column is missing or of another type.
pub fn decode_service(row: &impl Columns) -> StoreResult<Service> {
    Ok(Service {
        id: row.text(0)?,
        organization: Some(Organization {
            id: row.text(1)?,
            name: row.text(2)?,
            description: row.text(3)?,
            url: row.text(4)?,
            email: row.text(5)?,
        }),
        name: row.text(6)?,
        alternate_name: row.text(7)?,
        description: row.text(8)?,
        url: row.text(9)?,
        email: row.text(10)?,
        status: int32(row.int(11)?, 0),
        eligibility_description: row.text(12)?,
        fees_description: row.text(13)?,
        application_process: row.text(14)?,
        alert: row.text(15)?,
        create_time: Some(micros_to_timestamp(row.int(16)?)),
        update_time: Some(micros_to_timestamp(row.int(17)?)),
        ..Service::default()
    })
}

/// A loaded service ([`decode_service`]) completed with its stored document and its
/// capacity reports.
#[must_use]
pub fn with_lists(mut service: Service, lists: Lists, capacity: &[CapacityJson]) -> Service {
    let (terms, languages, phones, locations) = lists;
    service.taxonomy_terms = terms
        .into_iter()
        .map(|(id, code, name, taxonomy, parent_id)| TaxonomyTerm {
            id,
            code,
            name,
            taxonomy,
            parent_id,
        })
        .collect();
    service.languages = languages;
    service.phones = phones
        .into_iter()
        .map(|(number, extension, r#type, description)| Phone {
            number,
            extension,
            r#type,
            description,
        })
        .collect();
    service.locations = locations
        .into_iter()
        .map(|l| location_of(l, capacity))
        .collect();
    service
}

fn location_of(l: LocationJson, capacity: &[CapacityJson]) -> ServiceLocation {
    let location_id = l.0;
    ServiceLocation {
        point: l.2.zip(l.3).map(|(latitude, longitude)| GeoPoint {
            latitude,
            longitude,
        }),
        name: l.1,
        time_zone: l.4,
        address: (l.13 != 0).then_some(Address {
            attention: l.5,
            address_1: l.6,
            address_2: l.7,
            city: l.8,
            region: l.9,
            state_province: l.10,
            postal_code: l.11,
            country: l.12,
        }),
        capacity: capacity.iter().find(|c| c.0 == location_id).map(
            |&(_, available, total, as_of)| Capacity {
                available: int32(available, i32::MAX),
                total: int32(total, i32::MAX),
                as_of_time: Some(micros_to_timestamp(as_of)),
            },
        ),
        schedules: l.14.into_iter().map(schedule_of).collect(),
        location_id,
    }
}

/// Rows of [`SCHEDULE_COLUMNS`]: the service and location each applies to, and the rule.
///
/// # Errors
/// When a column is missing or of another type.
#[allow(clippy::type_complexity)]
pub fn decode_schedules(
    rows: &[impl Columns],
) -> StoreResult<Vec<(Option<String>, Option<String>, Schedule)>> {
    rows.iter()
        .map(|row| {
            Ok((
                row.opt_text(0)?,
                row.opt_text(1)?,
                Schedule {
                    freq: int32(row.int(2)?, 0),
                    interval: int32(row.int(3)?, 0),
                    byday: row.text(4)?,
                    bymonthday: row.text(5)?,
                    opens_at: row.text(6)?,
                    closes_at: row.text(7)?,
                    valid_from: row.text(8)?,
                    valid_to: row.text(9)?,
                    dtstart: row.text(10)?,
                    description: row.text(11)?,
                },
            ))
        })
        .collect()
}

/// A capacity report from columns `first` (available), `first + 1` (total) and `first + 2`
/// (as_of_time).
///
/// # Errors
/// When a column is missing or of another type.
pub fn decode_capacity(row: &impl Columns, first: usize) -> StoreResult<Capacity> {
    Ok(Capacity {
        available: int32(row.int(first)?, i32::MAX),
        total: int32(row.int(first + 1)?, i32::MAX),
        as_of_time: Some(micros_to_timestamp(row.int(first + 2)?)),
    })
}

/// A row of [`REFERRAL_COLUMNS`].
///
/// # Errors
/// When a column is missing or of another type.
pub fn decode_referral(row: &impl Columns) -> StoreResult<Referral> {
    Ok(Referral {
        referral_id: row.text(0)?,
        incident_id: row.text(1)?,
        service_id: row.text(2)?,
        location_id: row.text(3)?,
        status: int32(row.int(4)?, 0),
        notes: row.text(5)?,
        create_time: Some(micros_to_timestamp(row.int(6)?)),
        update_time: Some(micros_to_timestamp(row.int(7)?)),
        incident_checked: row.int(8)? != 0,
    })
}

/// The ids a row writes by (a multi-row statement may write each only once).
#[must_use]
pub fn row_keys(row: &Row) -> Vec<String> {
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
#[must_use]
pub fn missing_reason(row: &Row, stored: &HashSet<String>) -> Option<String> {
    let (key, reason) = match row {
        Row::Service(service, _) => (service.id.clone(), no_organization(service)),
        Row::ServiceTaxonomy {
            service_id,
            term_id,
        } => (
            format!("{service_id}\u{1}{term_id}"),
            format!("service `{service_id}` or taxonomy term `{term_id}` does not exist"),
        ),
        Row::Language {
            service_id, code, ..
        } => (format!("{service_id}\u{1}{code}"), no_service(service_id)),
        Row::Phone { id, service_id, .. } => (id.clone(), no_service(service_id)),
        Row::Address { location_id, .. } => (
            location_id.clone(),
            format!("location `{location_id}` does not exist"),
        ),
        Row::ServiceAtLocation {
            id,
            service_id,
            location_id,
            ..
        } => (id.clone(), no_pair(service_id, location_id)),
        Row::Organization { .. }
        | Row::TaxonomyTerm(_)
        | Row::Location { .. }
        | Row::LocationTimeZone { .. }
        | Row::Schedule { .. }
        | Row::Capacity { .. } => return None,
    };
    (!stored.contains(&key)).then_some(reason)
}

/// Why a service was not stored: its organization is unknown.
#[must_use]
pub fn no_organization(service: &Service) -> String {
    format!(
        "organization_id `{}` is not an organization of the package",
        service.organization.as_ref().map_or("", |o| o.id.as_str())
    )
}

/// Why a row of a service was not stored.
#[must_use]
pub fn no_service(service_id: &str) -> String {
    format!("service `{service_id}` does not exist")
}

/// Why a row of a service and a location was not stored.
#[must_use]
pub fn no_pair(service_id: &str, location_id: &str) -> String {
    format!("service `{service_id}` or location `{location_id}` does not exist")
}

/// Whether a schedule stored for (`sid`, `lid`) applies to `service` at `location`.
#[must_use]
pub fn applies(sid: Option<&str>, lid: Option<&str>, service: &str, location: &str) -> bool {
    match (sid, lid) {
        (Some(s), Some(l)) => s == service && l == location,
        (Some(s), None) => s == service,
        (None, Some(l)) => l == location,
        (None, None) => false,
    }
}
