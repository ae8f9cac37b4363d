//! Mapping CSV records of each HSDS table to the model's rows ([`Row`]), or to the problem
//! that rejects them.

use std::collections::HashMap;

use relay_proto::directory::{
    Address, Organization, Phone, Schedule, ScheduleFrequency, Service, TaxonomyTerm,
};

use super::{
    ImportOptions,
    descriptor::Table,
    fields::{
        Problem, Time, date_of, id_or_derived, is_id, keep_email, keep_url, language_code, problem,
        require, require_id, status_of, time_of, weekday_code, zone_of,
    },
    records::Record,
};
use crate::{
    schedule::{Hours, ScheduleProblem},
    store::Row,
};

/// The rows of one record, or why it is rejected. Notes are reported but the rows stored.
pub(super) struct Mapped {
    pub(super) rows: Vec<Row>,
    pub(super) notes: Vec<Problem>,
}

impl Mapped {
    #[allow(clippy::unnecessary_wraps)]
    fn one(row: Row) -> Result<Option<Self>, Problem> {
        Ok(Some(Self {
            rows: vec![row],
            notes: Vec::new(),
        }))
    }
}

/// Coordinates of a location, or the note that says why they were dropped.
pub(super) fn point_of(r: &Record<'_>) -> (Option<(f64, f64)>, Option<Problem>) {
    let (lat, lon) = (r.get("latitude"), r.get("longitude"));
    if lat.is_empty() && lon.is_empty() {
        return (None, None);
    }
    let latitude = lat
        .parse::<f64>()
        .ok()
        .filter(|la| la.is_finite() && (-90.0..=90.0).contains(la));
    let longitude = lon
        .parse::<f64>()
        .ok()
        .filter(|lo| lo.is_finite() && (-180.0..=180.0).contains(lo));
    if let (Some(la), Some(lo)) = (latitude, longitude) {
        return (Some((la, lo)), None);
    }
    let mut why = Vec::new();
    let mut columns = Vec::new();
    if latitude.is_none() {
        why.push(format!("latitude `{lat}` is not a number from -90 to 90"));
        columns.push("latitude");
    }
    if longitude.is_none() {
        why.push(format!(
            "longitude `{lon}` is not a number from -180 to 180"
        ));
        columns.push("longitude");
    }
    (
        None,
        Some(problem(
            &columns.join(", "),
            format!(
                "{}; the location is imported without coordinates",
                why.join(", ")
            ),
        )),
    )
}

fn map_organization(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    let id = require_id(r, "id")?;
    let name = require(r, "name")?;
    Mapped::one(Row::Organization {
        id,
        name,
        description: r.get("description").to_owned(),
        url: keep_url(r.first(&["website", "url"]).1),
        email: keep_email(r.get("email")),
    })
}

fn map_term(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    let id = require_id(r, "id")?;
    let code = r.first(&["code", "id"]).1;
    let parent = r.get("parent_id");
    Mapped::one(Row::TaxonomyTerm(TaxonomyTerm {
        code: code
            .chars()
            .filter(|c| !c.is_whitespace())
            .take(64)
            .collect(),
        // 2.0 calls the name `term`.
        name: r.first(&["name", "term"]).1.to_owned(),
        taxonomy: r.first(&["taxonomy", "vocabulary"]).1.to_owned(),
        parent_id: if is_id(parent) {
            parent.to_owned()
        } else {
            String::new()
        },
        id,
    }))
}

fn map_service(r: &Record<'_>, now: i64) -> Result<Option<Mapped>, Problem> {
    let id = require_id(r, "id")?;
    let organization_id = require_id(r, "organization_id")?;
    let name = require(r, "name")?;
    let status = status_of(r.get("status")).ok_or_else(|| {
        problem(
            "status",
            format!(
                "status `{}` is not one of active, inactive, defunct, temporarily closed",
                r.get("status")
            ),
        )
    })?;
    let update_time = chrono::DateTime::parse_from_rfc3339(r.get("last_modified"))
        .map_or(now, |t| t.timestamp_micros());
    let service = Service {
        id,
        organization: Some(Organization {
            id: organization_id,
            ..Organization::default()
        }),
        name: name.chars().take(256).collect(),
        alternate_name: r.get("alternate_name").to_owned(),
        description: r.get("description").to_owned(),
        url: keep_url(r.get("url")),
        email: keep_email(r.get("email")),
        status: status as i32,
        eligibility_description: r
            .first(&["eligibility_description", "eligibility"])
            .1
            .to_owned(),
        fees_description: r.first(&["fees_description", "fees"]).1.to_owned(),
        application_process: r.get("application_process").to_owned(),
        alert: r.get("alert").to_owned(),
        ..Service::default()
    };
    Mapped::one(Row::Service(Box::new(service), update_time))
}

fn map_location(r: &Record<'_>, options: &ImportOptions) -> Result<Option<Mapped>, Problem> {
    let id = require_id(r, "id")?;
    let (point, note) = point_of(r);
    let zone = r.first(&["time_zone", "timezone"]).1;
    let time_zone = zone_of(zone).unwrap_or_else(|| options.default_time_zone.clone());
    Ok(Some(Mapped {
        rows: vec![Row::Location {
            id,
            name: r.get("name").to_owned(),
            point,
            time_zone,
        }],
        notes: note.into_iter().collect(),
    }))
}

fn map_address(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    let location_id = require_id(r, "location_id")?;
    let address_1 = require(r, "address_1")?;
    let address_2 = [r.get("address_2"), r.get("address_3"), r.get("address_4")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    Mapped::one(Row::Address {
        location_id,
        address: Address {
            attention: r.get("attention").to_owned(),
            address_1,
            address_2,
            city: r.get("city").to_owned(),
            region: r.get("region").to_owned(),
            state_province: r.get("state_province").to_owned(),
            postal_code: r.get("postal_code").to_owned(),
            country: r.get("country").to_owned(),
        },
    })
}

/// 3.0 `attribute` (`link_entity`), 2.0 `other_attribute` and `link_taxonomy` (`link_type`):
/// a service's taxonomy term; other links are ignored.
fn map_attribute(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    let entity = if r.columns.contains_key("link_entity") {
        r.get("link_entity")
    } else {
        r.get("link_type")
    };
    if !entity.eq_ignore_ascii_case("service") {
        return Ok(None);
    }
    let (term_column, _) = r.first(&["taxonomy_term_id", "taxonomy_id"]);
    Mapped::one(Row::ServiceTaxonomy {
        service_id: require_id(r, "link_id")?,
        term_id: require_id(r, term_column)?,
    })
}

fn map_service_taxonomy(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    let (term_column, _) = r.first(&["taxonomy_term_id", "taxonomy_id"]);
    Mapped::one(Row::ServiceTaxonomy {
        service_id: require_id(r, "service_id")?,
        term_id: require_id(r, term_column)?,
    })
}

fn map_language(r: &Record<'_>, position: i64) -> Result<Option<Mapped>, Problem> {
    if r.get("service_id").is_empty() {
        return Ok(None);
    }
    let service_id = require_id(r, "service_id")?;
    let (column, text) = r.first(&["code", "language", "name"]);
    let code = language_code(text).ok_or_else(|| {
        problem(
            column,
            format!("language `{text}` is not a language code or a known name"),
        )
    })?;
    Mapped::one(Row::Language {
        service_id,
        code,
        position,
    })
}

fn map_phone(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    if r.get("service_id").is_empty() {
        return Ok(None);
    }
    let number = r.get("number").trim_matches('"').trim();
    if number.is_empty() {
        return Err(problem("number", "number is missing"));
    }
    let extension = r.get("extension");
    let service_id = require_id(r, "service_id")?;
    Mapped::one(Row::Phone {
        id: id_or_derived(r, &[&service_id, number, extension])?,
        service_id,
        phone: Phone {
            number: number.chars().take(64).collect(),
            extension: if extension.bytes().all(|b| b.is_ascii_digit()) {
                extension.to_owned()
            } else {
                String::new()
            },
            r#type: r.get("type").to_ascii_lowercase(),
            description: r.get("description").to_owned(),
        },
    })
}

fn map_capacity(r: &Record<'_>) -> Result<Option<Mapped>, Problem> {
    let service_id = require_id(r, "service_id")?;
    if r.get("location_id").is_empty() {
        return Err(problem(
            "location_id",
            "location_id is missing (Relay keeps capacity per location)",
        ));
    }
    let location_id = require_id(r, "location_id")?;
    let count = |column: &str, required: bool| -> Result<i32, Problem> {
        match r.get(column) {
            "" if !required => Ok(0),
            text => text
                .parse::<f64>()
                .ok()
                .filter(|n| n.fract() == 0.0 && (0.0..=f64::from(i32::MAX)).contains(n))
                .map(|n| n as i32)
                .ok_or_else(|| {
                    problem(
                        column,
                        format!("{column} `{text}` is not a whole number of places"),
                    )
                }),
        }
    };
    let available = count("available", true)?;
    let total = count("maximum", false)?;
    let updated = r.get("updated");
    let as_of = chrono::DateTime::parse_from_rfc3339(updated).map_err(|_| {
        problem(
            "updated",
            format!("updated `{updated}` is not a date and time (RFC 3339)"),
        )
    })?;
    Mapped::one(Row::Capacity {
        service_id,
        location_id,
        capacity: relay_proto::directory::Capacity {
            available,
            total,
            as_of_time: Some(crate::micros_to_timestamp(as_of.timestamp_micros())),
        },
    })
}

/// What the rows read so far say that later tables need.
#[derive(Default)]
pub(super) struct Seen {
    /// The location of each service_at_location id: a schedule that names only a
    /// service_at_location and a `timezone` sets that location's time zone. One short entry per
    /// service and location pair.
    pub(super) sal_locations: HashMap<String, String>,
    /// The ids of the package's services and locations: their stored schedules are replaced
    /// by the package's (schedule rows without ids get ids derived from their contents, so
    /// changed hours come with new ids and the old ones would otherwise stay).
    pub(super) services: Vec<String>,
    /// The ids of the package's locations.
    pub(super) locations: Vec<String>,
}

pub(super) fn map_record(
    table: Table,
    r: &Record<'_>,
    options: &ImportOptions,
    now: i64,
    line: u64,
    seen: &mut Seen,
) -> Result<Option<Mapped>, Problem> {
    let position = i64::try_from(line).unwrap_or(i64::MAX);
    match table {
        Table::Organizations => map_organization(r),
        Table::TaxonomyTerms => map_term(r),
        Table::Services => map_service(r, now),
        Table::Locations => map_location(r, options),
        Table::Addresses => map_address(r),
        Table::ServiceAtLocation => {
            let service_id = require_id(r, "service_id")?;
            let location_id = require_id(r, "location_id")?;
            let id = id_or_derived(r, &[&service_id, &location_id])?;
            seen.sal_locations.insert(id.clone(), location_id.clone());
            Mapped::one(Row::ServiceAtLocation {
                id,
                service_id,
                location_id,
                position,
            })
        }
        Table::Attributes => map_attribute(r),
        Table::ServiceTaxonomy => map_service_taxonomy(r),
        Table::Languages => map_language(r, position),
        Table::Phones => map_phone(r),
        Table::Capacity => map_capacity(r),
        Table::Schedules | Table::RegularSchedules | Table::HolidaySchedules => {
            map_schedule(table, r, position, seen)
        }
        Table::NotModelled => Ok(None),
    }
}

/// Every day of the week, as a `byday`.
const EVERY_DAY: &str = "MO,TU,WE,TH,FR,SA,SU";

fn is_true(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "t" | "yes" | "y" | "1"
    )
}

/// The opening and closing times of a schedule row, or `None` when the row says the service
/// is closed or gives no hours at all (HSDS allows both to be null).
fn hours_of(r: &Record<'_>) -> Result<Option<(String, String)>, Problem> {
    let (opens, closes) = (r.get("opens_at"), r.get("closes_at"));
    if opens.is_empty() && closes.is_empty() {
        return Ok(None);
    }
    let time = |column: &str, text: &str| -> Result<Time, Problem> {
        if text.is_empty() {
            return Err(problem(
                column,
                format!("{column} is missing while the other time is given"),
            ));
        }
        time_of(text).ok_or_else(|| problem(column, format!("{column} `{text}` is not a time")))
    };
    match (time("opens_at", opens)?, time("closes_at", closes)?) {
        (Time::At(opens_at), Time::At(closes_at)) => Ok(Some((
            opens_at,
            if closes_at == "00:00" {
                "24:00".into()
            } else {
                closes_at
            },
        ))),
        _ => Ok(None),
    }
}

fn map_schedule(
    table: Table,
    r: &Record<'_>,
    position: i64,
    seen: &Seen,
) -> Result<Option<Mapped>, Problem> {
    let optional = |column: &str| -> Result<Option<String>, Problem> {
        match r.opt(column) {
            None => Ok(None),
            Some(_) => require_id(r, column).map(Some),
        }
    };
    let service_id = optional("service_id")?;
    let location_id = optional("location_id")?;
    let service_at_location_id = optional("service_at_location_id")?;
    if table == Table::HolidaySchedules && is_true(r.get("closed")) {
        // A closure: Relay's schedules say only when a service is open.
        return Ok(None);
    }
    let Some((opens_at, closes_at)) = hours_of(r)? else {
        return Ok(None);
    };
    let (freq, byday, valid_from, valid_to) = recurrence(table, r)?;
    let interval = match r.get("interval") {
        "" => 0,
        text => text.parse::<i32>().map_err(|_| {
            problem(
                "interval",
                format!("interval `{text}` is not a whole number"),
            )
        })?,
    };
    let schedule = Schedule {
        freq: freq as i32,
        interval,
        byday,
        bymonthday: if freq == ScheduleFrequency::Monthly {
            r.get("bymonthday").replace(' ', "")
        } else {
            String::new()
        },
        opens_at,
        closes_at,
        valid_from,
        valid_to,
        dtstart: date_of(r, "dtstart")?,
        description: r.get("description").to_owned(),
    };
    if let Err(problems) = Hours::parse(&schedule) {
        return Err(schedule_problem(table, problems));
    }
    // Nothing refers to a schedule row, so one without an id gets one derived from what it
    // says: the same row gives the same id on every import, and two identical rows are one
    // schedule.
    let interval = schedule.interval.to_string();
    let freq = schedule.freq.to_string();
    let id = id_or_derived(
        r,
        &[
            service_id.as_deref().unwrap_or_default(),
            location_id.as_deref().unwrap_or_default(),
            service_at_location_id.as_deref().unwrap_or_default(),
            &freq,
            &interval,
            &schedule.byday,
            &schedule.bymonthday,
            &schedule.opens_at,
            &schedule.closes_at,
            &schedule.valid_from,
            &schedule.valid_to,
            &schedule.dtstart,
            &schedule.description,
        ],
    )?;
    let mut rows = Vec::new();
    let zoned = location_id.as_ref().or_else(|| {
        service_at_location_id
            .as_ref()
            .and_then(|sal| seen.sal_locations.get(sal))
    });
    if let (Some(location_id), Some(zone)) = (zoned, zone_of(r.get("timezone"))) {
        rows.push(Row::LocationTimeZone {
            location_id: location_id.clone(),
            time_zone: zone,
        });
    }
    rows.push(Row::Schedule {
        id,
        service_id,
        location_id,
        service_at_location_id,
        position,
        schedule,
    });
    Ok(Some(Mapped {
        rows,
        notes: Vec::new(),
    }))
}

/// How often a schedule row repeats: frequency, `byday`, and the dates it is valid between,
/// read the way its table writes them.
fn recurrence(
    table: Table,
    r: &Record<'_>,
) -> Result<(ScheduleFrequency, String, String, String), Problem> {
    Ok(match table {
        Table::RegularSchedules => {
            let weekday = r.get("weekday");
            let code = weekday_code(weekday).ok_or_else(|| {
                problem(
                    "weekday",
                    format!("weekday `{weekday}` is not a day of the week (Monday, mon, 1..7)"),
                )
            })?;
            (
                ScheduleFrequency::Weekly,
                code.to_owned(),
                date_of(r, "valid_from")?,
                date_of(r, "valid_to")?,
            )
        }
        Table::HolidaySchedules => {
            let from = date_of(r, "start_date")?;
            let to = date_of(r, "end_date")?;
            if from.is_empty() {
                return Err(problem("start_date", "start_date is missing"));
            }
            (
                ScheduleFrequency::Weekly,
                EVERY_DAY.to_owned(),
                from.clone(),
                if to.is_empty() { from } else { to },
            )
        }
        _ => {
            let freq = match r.get("freq").to_ascii_uppercase().as_str() {
                "" | "WEEKLY" => ScheduleFrequency::Weekly,
                "DAILY" => ScheduleFrequency::Weekly,
                "MONTHLY" => ScheduleFrequency::Monthly,
                other => {
                    return Err(problem(
                        "freq",
                        format!("freq `{other}` is not supported (WEEKLY, DAILY or MONTHLY)"),
                    ));
                }
            };
            let mut byday = r.get("byday").to_ascii_uppercase().replace(' ', "");
            if byday.is_empty() && r.get("freq").eq_ignore_ascii_case("daily") {
                EVERY_DAY.clone_into(&mut byday);
            }
            (
                freq,
                byday,
                date_of(r, "valid_from")?,
                date_of(r, "valid_to")?,
            )
        }
    })
}

/// The problem of a schedule whose rule does not parse, naming the package's columns (a 1.x
/// regular schedule's `byday` is its `weekday`).
fn schedule_problem(table: Table, problems: Vec<ScheduleProblem>) -> Problem {
    let column = match table {
        Table::RegularSchedules => problems
            .iter()
            .map(|(field, _)| if *field == "byday" { "weekday" } else { field })
            .collect::<Vec<_>>(),
        _ => problems.iter().map(|(field, _)| *field).collect(),
    };
    problem(
        &column.join(", "),
        problems
            .into_iter()
            .map(|(field, why)| format!("{field} {why}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}
