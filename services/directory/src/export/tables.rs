//! The export's tables: each kind of stored row as CSV records, and each table's shape (its
//! HSDS name, file and columns).

use super::*;

pub(super) fn status_text(status: i32) -> &'static str {
    match ServiceStatus::try_from(status).unwrap_or(ServiceStatus::Active) {
        ServiceStatus::Inactive => "inactive",
        ServiceStatus::Defunct => "defunct",
        ServiceStatus::TemporarilyClosed => "temporarily closed",
        ServiceStatus::Active | ServiceStatus::Unspecified => "active",
    }
}

pub(super) fn rfc3339(micros: i64) -> String {
    from_micros(micros).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

pub(super) fn number(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// Reads every table and turns its rows into CSV records.
pub(super) async fn tables<S: DirectoryStore>(store: &S) -> Result<Vec<Table>, ExportError> {
    let organizations = records(store, Dump::Organizations, organizations_record).await?;
    let services = records(store, Dump::Services, services_record).await?;
    let (locations, addresses) = location_records(store.dump(Dump::Locations).await?);
    let service_at_location =
        records(store, Dump::ServiceAtLocation, service_at_location_record).await?;
    let schedules = records(store, Dump::Schedules, schedules_record).await?;
    let phones = records(store, Dump::Phones, phones_record).await?;
    let languages = records(store, Dump::Languages, languages_record).await?;
    let terms = records(store, Dump::TaxonomyTerms, terms_record).await?;
    let attributes = records(store, Dump::ServiceTaxonomy, attributes_record).await?;
    let capacity = records(store, Dump::Capacity, capacity_record).await?;
    let units = vec![vec![CAPACITY_UNIT_ID.to_owned(), "place".to_owned()]];
    Ok(vec![
        ORGANIZATION.with(organizations),
        SERVICE.with(services),
        LOCATION.with(locations),
        ADDRESS.with(addresses),
        SERVICE_AT_LOCATION.with(service_at_location),
        SCHEDULE.with(schedules),
        PHONE.with(phones),
        LANGUAGE.with(languages),
        TAXONOMY_TERM.with(terms),
        ATTRIBUTE.with(attributes),
        UNIT.with(units),
        SERVICE_CAPACITY.with(capacity),
    ])
}

/// The records `record` makes of the rows of `dump`.
pub(super) async fn records<S: DirectoryStore>(
    store: &S,
    dump: Dump,
    record: fn(Row) -> Option<Vec<String>>,
) -> Result<Vec<Vec<String>>, ExportError> {
    Ok(store
        .dump(dump)
        .await?
        .into_iter()
        .filter_map(record)
        .collect())
}

/// A table's name, file, note and columns: what it is before its rows are read.
pub(super) struct Shape {
    name: &'static str,
    path: &'static str,
    note: Option<&'static str>,
    columns: &'static [Column],
}

impl Shape {
    /// The table of this shape with `rows`.
    pub(super) fn with(&self, rows: Vec<Vec<String>>) -> Table {
        Table {
            name: self.name,
            path: self.path,
            note: self.note,
            columns: self.columns,
            rows,
        }
    }
}

/// A `Organizations` row as a CSV record.
pub(super) fn organizations_record(row: Row) -> Option<Vec<String>> {
    if let Row::Organization {
        id,
        name,
        description,
        url,
        email,
    } = row
    {
        return Some(vec![id, name, description, email, url]);
    }
    None
}

/// A `Services` row as a CSV record.
pub(super) fn services_record(row: Row) -> Option<Vec<String>> {
    if let Row::Service(s, update_time) = row {
        let s = *s;
        return Some(vec![
            s.id,
            s.organization.map(|o| o.id).unwrap_or_default(),
            s.name,
            s.alternate_name,
            s.description,
            s.url,
            s.email,
            status_text(s.status).to_owned(),
            s.application_process,
            s.fees_description,
            s.eligibility_description,
            s.alert,
            rfc3339(update_time),
        ]);
    }
    None
}

/// A `ServiceAtLocation` row as a CSV record.
pub(super) fn service_at_location_record(row: Row) -> Option<Vec<String>> {
    if let Row::ServiceAtLocation {
        id,
        service_id,
        location_id,
        ..
    } = row
    {
        return Some(vec![id, service_id, location_id]);
    }
    None
}

/// A `Schedules` row as a CSV record.
pub(super) fn schedules_record(row: Row) -> Option<Vec<String>> {
    if let Row::Schedule {
        id,
        service_id,
        location_id,
        schedule: s,
        ..
    } = row
    {
        let freq = match ScheduleFrequency::try_from(s.freq) {
            Ok(ScheduleFrequency::Monthly) => "MONTHLY",
            _ => "WEEKLY",
        };
        return Some(vec![
            id,
            service_id.unwrap_or_default(),
            location_id.unwrap_or_default(),
            s.valid_from,
            s.valid_to,
            s.dtstart,
            freq.to_owned(),
            if s.interval > 0 {
                s.interval.to_string()
            } else {
                String::new()
            },
            s.byday,
            s.bymonthday,
            s.description,
            s.opens_at,
            s.closes_at,
        ]);
    }
    None
}

/// A `Phones` row as a CSV record.
pub(super) fn phones_record(row: Row) -> Option<Vec<String>> {
    if let Row::Phone {
        id,
        service_id,
        phone,
    } = row
    {
        return Some(vec![
            id,
            service_id,
            phone.number,
            phone.extension,
            phone.r#type,
            phone.description,
        ]);
    }
    None
}

/// A `Languages` row as a CSV record.
pub(super) fn languages_record(row: Row) -> Option<Vec<String>> {
    if let Row::Language {
        service_id, code, ..
    } = row
    {
        return Some(vec![
            format!("{service_id}:language:{code}"),
            service_id,
            code,
        ]);
    }
    None
}

/// A `TaxonomyTerms` row as a CSV record.
pub(super) fn terms_record(row: Row) -> Option<Vec<String>> {
    if let Row::TaxonomyTerm(t) = row {
        // HSDS 3.0 requires a description; Relay keeps none, so the name stands in.
        return Some(vec![
            t.id,
            t.code,
            t.name.clone(),
            t.name,
            t.parent_id,
            t.taxonomy,
        ]);
    }
    None
}

/// A `ServiceTaxonomy` row as a CSV record.
pub(super) fn attributes_record(row: Row) -> Option<Vec<String>> {
    if let Row::ServiceTaxonomy {
        service_id,
        term_id,
    } = row
    {
        return Some(vec![
            format!("{service_id}:attribute:{term_id}"),
            service_id,
            term_id,
            "service".to_owned(),
        ]);
    }
    None
}

/// A `Capacity` row as a CSV record.
pub(super) fn capacity_record(row: Row) -> Option<Vec<String>> {
    if let Row::Capacity {
        service_id,
        location_id,
        capacity: c,
    } = row
    {
        return Some(vec![
            format!("{service_id}@{location_id}:capacity"),
            service_id,
            CAPACITY_UNIT_ID.to_owned(),
            c.available.to_string(),
            c.total.to_string(),
            rfc3339(c.as_of_time.as_ref().map_or(0, crate::timestamp_to_micros)),
            location_id,
        ]);
    }
    None
}

/// The `Locations` rows as location and address records.
pub(super) fn location_records(rows: Vec<Row>) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut locations = Vec::new();
    let mut addresses = Vec::new();
    for row in rows {
        match row {
            Row::Location {
                id,
                name,
                point,
                time_zone,
            } => locations.push(vec![
                id,
                "physical".to_owned(),
                name,
                number(point.map(|p| p.0)),
                number(point.map(|p| p.1)),
                time_zone,
            ]),
            Row::Address {
                location_id,
                address: a,
            } => addresses.push(vec![
                format!("{location_id}:address"),
                location_id,
                a.attention,
                a.address_1,
                a.address_2,
                a.city,
                a.region,
                a.state_province,
                a.postal_code,
                a.country,
                "physical".to_owned(),
            ]),
            _ => {}
        }
    }
    (locations, addresses)
}

pub(super) const ORGANIZATION: Shape = Shape {
    name: "organization",
    path: "organizations.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("name", S, None),
        ("description", S, None),
        ("email", S, None),
        ("website", S, None),
    ],
};

pub(super) const SERVICE: Shape = Shape {
    name: "service",
    path: "services.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("organization_id", S, None),
        ("name", S, None),
        ("alternate_name", S, None),
        ("description", S, None),
        ("url", S, None),
        ("email", S, None),
        ("status", S, None),
        ("application_process", S, None),
        ("fees_description", S, None),
        ("eligibility_description", S, None),
        ("alert", S, None),
        ("last_modified", "datetime", None),
    ],
};

pub(super) const LOCATION: Shape = Shape {
    name: "location",
    path: "locations.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("location_type", S, None),
        ("name", S, None),
        ("latitude", N, None),
        ("longitude", N, None),
        ("time_zone", S, Some(TIME_ZONE_NOTE)),
    ],
};

pub(super) const ADDRESS: Shape = Shape {
    name: "address",
    path: "addresses.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("location_id", S, None),
        ("attention", S, None),
        ("address_1", S, None),
        ("address_2", S, None),
        ("city", S, None),
        ("region", S, None),
        ("state_province", S, None),
        ("postal_code", S, None),
        ("country", S, None),
        ("address_type", S, None),
    ],
};

pub(super) const SERVICE_AT_LOCATION: Shape = Shape {
    name: "service_at_location",
    path: "service_at_location.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("service_id", S, None),
        ("location_id", S, None),
    ],
};

pub(super) const SCHEDULE: Shape = Shape {
    name: "schedule",
    path: "schedules.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("service_id", S, None),
        ("location_id", S, None),
        ("valid_from", "date", None),
        ("valid_to", "date", None),
        ("dtstart", "date", None),
        ("freq", S, None),
        ("interval", N, None),
        ("byday", S, None),
        ("bymonthday", S, None),
        ("description", S, None),
        ("opens_at", "time", None),
        ("closes_at", "time", None),
    ],
};

pub(super) const PHONE: Shape = Shape {
    name: "phone",
    path: "phones.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("service_id", S, None),
        ("number", S, None),
        ("extension", N, None),
        ("type", S, None),
        ("description", S, None),
    ],
};

pub(super) const LANGUAGE: Shape = Shape {
    name: "language",
    path: "languages.csv",
    note: None,
    columns: &[("id", S, None), ("service_id", S, None), ("code", S, None)],
};

pub(super) const TAXONOMY_TERM: Shape = Shape {
    name: "taxonomy_term",
    path: "taxonomy_terms.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("code", S, None),
        ("name", S, None),
        ("description", S, None),
        ("parent_id", S, None),
        ("taxonomy", S, None),
    ],
};

pub(super) const ATTRIBUTE: Shape = Shape {
    name: "attribute",
    path: "attributes.csv",
    note: None,
    columns: &[
        ("id", S, None),
        ("link_id", S, None),
        ("taxonomy_term_id", S, None),
        ("link_entity", S, None),
    ],
};

pub(super) const UNIT: Shape = Shape {
    name: "unit",
    path: "units.csv",
    note: Some(UNIT_NOTE),
    columns: &[("id", S, None), ("name", S, None)],
};

pub(super) const SERVICE_CAPACITY: Shape = Shape {
    name: "service_capacity",
    path: "service_capacity.csv",
    note: Some(CAPACITY_NOTE),
    columns: &[
        ("id", S, None),
        ("service_id", S, None),
        ("unit_id", S, None),
        ("available", N, None),
        ("maximum", N, None),
        ("updated", "datetime", None),
        ("location_id", S, Some(CAPACITY_LOCATION_NOTE)),
    ],
};
