//! `relay directory import`: loads an Open Referral HSDS tabular data package (a folder or a
//! `.zip` of CSV files) into the directory.
//!
//! - Both layouts: HSDS 3.0 (`schedules.csv` with `byday`, `attributes.csv` linking taxonomy
//!   terms, `addresses.csv`) and the older 1.x/2.0 one (`regular_schedules.csv` with
//!   `weekday`, `services_taxonomy.csv`, `physical_addresses.csv`, `taxonomy.csv`, free-text
//!   times such as `9:00am`).
//! - Streaming: each file is read record by record and written as it is read, so memory stays
//!   flat whatever the package size (rows are upserts by their HSDS id; the database, not this
//!   process, holds what was read).
//! - All or nothing: the whole import is one transaction; any fatal error (unreadable file,
//!   malformed CSV, database failure) rolls it back.
//! - Idempotent: every row is an upsert by its HSDS id, so importing again updates rather than
//!   duplicates.
//! - Row by row reporting: a row that cannot be imported (a missing id, an unknown service, a
//!   time that is not a time) is skipped and reported with its file, line and reason; a
//!   location with impossible coordinates is imported without them, and reported.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use relay_proto::directory::{
    Address, Organization, Phone, Schedule, ScheduleFrequency, Service, ServiceStatus, TaxonomyTerm,
};

use crate::{
    error::DirectoryError,
    schedule::{Hours, normalize_time, parse_time_zone},
    store::{Applied, DirectoryStore, Row, WriteSession},
};

/// At most this many rejections are kept in the report (the count is always exact).
pub const MAX_REPORTED_REJECTIONS: usize = 100_000;

/// Why an import failed as a whole (and so changed nothing).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The package could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was being read.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The zip file is damaged.
    #[error("cannot read zip {path}: {source}")]
    Zip {
        /// The zip.
        path: String,
        /// The cause.
        source: zip::result::ZipError,
    },
    /// A CSV file is malformed (not just a bad row).
    #[error("{file}: malformed CSV: {source}")]
    Csv {
        /// The file.
        file: String,
        /// The cause.
        source: csv::Error,
    },
    /// The folder or zip holds no HSDS table.
    #[error("{0} is not an HSDS tabular data package: no services.csv or organizations.csv found")]
    NotAPackage(String),
    /// The database failed; nothing was imported.
    #[error("database: {0}")]
    Store(#[from] DirectoryError),
}

/// Import settings.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// IANA time zone of locations whose package says nothing (HSDS 3.0 locations have no
    /// time zone column; schedules may carry a UTC offset).
    pub default_time_zone: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            default_time_zone: "UTC".into(),
        }
    }
}

/// One row that was not (wholly) imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The file, as named in the package (`locations.csv`).
    pub file: String,
    /// The line in that file where the record starts (1 is the header).
    pub line: u64,
    /// What was wrong and what was done about it.
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// Counts of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSummary {
    /// The file.
    pub file: String,
    /// Records read.
    pub rows: u64,
    /// Records stored (possibly with a field dropped and reported).
    pub stored: u64,
    /// Records skipped and reported.
    pub rejected: u64,
    /// Records that HSDS allows but Relay does not model (for example attributes that do not
    /// link a service to a taxonomy term), skipped silently.
    pub ignored: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Per file, in import order.
    pub files: Vec<FileSummary>,
    /// Each rejected row (at most [`MAX_REPORTED_REJECTIONS`]).
    pub rejections: Vec<Rejection>,
    /// Rejections in all (including those not kept).
    pub rejected: u64,
    /// Records read in all.
    pub rows: u64,
    /// Records stored in all.
    pub stored: u64,
}

/// Progress of an import, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The file being read.
    pub file: &'a str,
    /// Bytes of CSV read so far, over every file.
    pub bytes_done: u64,
    /// Bytes of CSV in the package.
    pub bytes_total: u64,
    /// Records read so far.
    pub rows: u64,
}

enum Source {
    Folder(PathBuf),
    Zip {
        path: String,
        archive: zip::ZipArchive<File>,
        names: HashMap<String, String>,
    },
}

impl Source {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let display = path.display().to_string();
        if path.is_dir() {
            return Ok(Self::Folder(path.to_owned()));
        }
        let file = File::open(path).map_err(|source| ImportError::Io {
            path: display.clone(),
            source,
        })?;
        let archive = zip::ZipArchive::new(file).map_err(|source| ImportError::Zip {
            path: display.clone(),
            source,
        })?;
        let names = archive
            .file_names()
            .filter_map(|full| {
                let base = full.rsplit('/').next()?.to_ascii_lowercase();
                (!base.is_empty() && !full.starts_with("__MACOSX")).then(|| (base, full.to_owned()))
            })
            .collect();
        Ok(Self::Zip {
            path: display,
            archive,
            names,
        })
    }

    fn size(&mut self, name: &str) -> Option<u64> {
        match self {
            Self::Folder(dir) => std::fs::metadata(dir.join(name))
                .ok()
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len()),
            Self::Zip { archive, names, .. } => {
                let full = names.get(name)?.clone();
                archive.by_name(&full).ok().map(|f| f.size())
            }
        }
    }

    fn reader(&mut self, name: &str) -> Result<Box<dyn Read + '_>, ImportError> {
        match self {
            Self::Folder(dir) => {
                let path = dir.join(name);
                let file = File::open(&path).map_err(|source| ImportError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, file)))
            }
            Self::Zip {
                path,
                archive,
                names,
            } => {
                let full = names.get(name).cloned().unwrap_or_else(|| name.to_owned());
                let entry = archive.by_name(&full).map_err(|source| ImportError::Zip {
                    path: path.clone(),
                    source,
                })?;
                Ok(Box::new(entry))
            }
        }
    }
}

/// The tables read, in dependency order; for each, the names it may have.
const TABLES: &[&str] = &[
    "organizations.csv",
    "taxonomy_terms.csv",
    "taxonomy.csv",
    "services.csv",
    "locations.csv",
    "addresses.csv",
    "physical_addresses.csv",
    "service_at_location.csv",
    "attributes.csv",
    "services_taxonomy.csv",
    "languages.csv",
    "phones.csv",
    "schedules.csv",
    "regular_schedules.csv",
];

/// A CSV record with its header, read by column name.
struct Record<'a> {
    columns: &'a HashMap<String, usize>,
    record: &'a csv::StringRecord,
}

impl Record<'_> {
    fn get(&self, name: &str) -> &str {
        self.columns
            .get(name)
            .and_then(|&i| self.record.get(i))
            .map_or("", str::trim)
    }

    fn first(&self, names: &[&str]) -> &str {
        names
            .iter()
            .map(|n| self.get(n))
            .find(|v| !v.is_empty())
            .unwrap_or("")
    }

    fn opt(&self, name: &str) -> Option<String> {
        let value = self.get(name);
        (!value.is_empty()).then(|| value.to_owned())
    }
}

fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn require_id(record: &Record<'_>, column: &str) -> Result<String, String> {
    let value = record.get(column);
    if value.is_empty() {
        Err(format!("{column} is missing"))
    } else if is_id(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{column} `{value}` is not an id (1..64 of A-Z a-z 0-9 . _ : -)"
        ))
    }
}

fn keep_url(value: &str) -> String {
    if (value.starts_with("http://") || value.starts_with("https://"))
        && !value.contains(char::is_whitespace)
    {
        value.to_owned()
    } else {
        String::new()
    }
}

fn keep_email(value: &str) -> String {
    if value
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !value.contains(char::is_whitespace)
    {
        value.to_owned()
    } else {
        String::new()
    }
}

fn status_of(text: &str) -> Option<ServiceStatus> {
    Some(
        match text.to_ascii_lowercase().replace(['_', '-'], " ").as_str() {
            "" | "active" => ServiceStatus::Active,
            "inactive" => ServiceStatus::Inactive,
            "defunct" => ServiceStatus::Defunct,
            "temporarily closed" => ServiceStatus::TemporarilyClosed,
            _ => return None,
        },
    )
}

/// ISO 639-1 codes of the language names 211 packages use most.
fn language_code(text: &str) -> Option<String> {
    let lower = text.trim().to_ascii_lowercase();
    let named = match lower.as_str() {
        "english" | "eng" => "en",
        "spanish" | "español" | "espanol" | "spa" => "es",
        "french" | "fra" | "fre" => "fr",
        "chinese" | "mandarin" | "zho" | "chi" => "zh",
        "cantonese" => "yue",
        "vietnamese" | "vie" => "vi",
        "korean" | "kor" => "ko",
        "russian" | "rus" => "ru",
        "arabic" | "ara" => "ar",
        "tagalog" | "filipino" | "tgl" => "tl",
        "portuguese" | "por" => "pt",
        "german" | "deu" | "ger" => "de",
        "somali" | "som" => "so",
        "haitian creole" | "hat" => "ht",
        "urdu" | "urd" => "ur",
        "polish" | "pol" => "pl",
        "american sign language" | "asl" => "ase",
        _ => "",
    };
    if !named.is_empty() {
        return Some(named.to_owned());
    }
    let mut parts = lower.split('-');
    let primary = parts.next().unwrap_or_default();
    ((2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric())))
    .then_some(lower)
}

fn weekday_code(text: &str) -> Option<&'static str> {
    let lower = text.trim().to_ascii_lowercase();
    Some(match lower.as_str() {
        "1" | "mo" | "mon" | "monday" => "MO",
        "2" | "tu" | "tue" | "tues" | "tuesday" => "TU",
        "3" | "we" | "wed" | "wednesday" => "WE",
        "4" | "th" | "thu" | "thur" | "thurs" | "thursday" => "TH",
        "5" | "fr" | "fri" | "friday" => "FR",
        "6" | "sa" | "sat" | "saturday" => "SA",
        "7" | "0" | "su" | "sun" | "sunday" => "SU",
        _ => return None,
    })
}

fn date_of(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(String::new());
    }
    let day = text.get(..10).unwrap_or(text);
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.format("%Y-%m-%d").to_string())
        .map_err(|_| format!("`{text}` is not a date (YYYY-MM-DD)"))
}

/// A schedule's `timezone` as an IANA name: a name is kept; a UTC offset in hours (HSDS 3.0
/// says "expressed as a UTC offset") becomes the matching `Etc/GMT` zone.
fn zone_of(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    if parse_time_zone(text).is_some() {
        return Some(text.to_owned());
    }
    let offset: f64 = text.parse().ok()?;
    if offset.fract() != 0.0 || !(-12.0..=14.0).contains(&offset) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let hours = offset as i32;
    // POSIX-style Etc zones have the sign inverted: UTC+3 is Etc/GMT-3.
    Some(match hours {
        0 => "Etc/UTC".to_owned(),
        h if h > 0 => format!("Etc/GMT-{h}"),
        h => format!("Etc/GMT+{}", -h),
    })
}

/// The rows of one record, or why it is rejected. Notes are reported but the rows stored.
struct Mapped {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Mapped {
    fn one(row: Row) -> Result<Option<Self>, String> {
        Ok(Some(Self {
            rows: vec![row],
            notes: Vec::new(),
        }))
    }
}

#[allow(clippy::too_many_lines)]
fn map_record(
    table: &str,
    r: &Record<'_>,
    options: &ImportOptions,
    now: i64,
    line: u64,
) -> Result<Option<Mapped>, String> {
    let position = i64::try_from(line).unwrap_or(i64::MAX);
    match table {
        "organizations.csv" => {
            let id = require_id(r, "id")?;
            let name = r.get("name");
            if name.is_empty() {
                return Err("name is missing".into());
            }
            Mapped::one(Row::Organization {
                id,
                name: name.to_owned(),
                description: r.get("description").to_owned(),
                url: keep_url(r.first(&["website", "url"])),
                email: keep_email(r.get("email")),
            })
        }
        "taxonomy_terms.csv" | "taxonomy.csv" => {
            let id = require_id(r, "id")?;
            let code = r.first(&["code", "id"]);
            let parent = r.get("parent_id");
            Mapped::one(Row::TaxonomyTerm(TaxonomyTerm {
                code: code
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .take(64)
                    .collect(),
                name: r.get("name").to_owned(),
                taxonomy: r.first(&["taxonomy", "vocabulary"]).to_owned(),
                parent_id: if is_id(parent) {
                    parent.to_owned()
                } else {
                    String::new()
                },
                id,
            }))
        }
        "services.csv" => {
            let id = require_id(r, "id")?;
            let organization_id = require_id(r, "organization_id")?;
            let name = r.get("name");
            if name.is_empty() {
                return Err("name is missing".into());
            }
            let status = status_of(r.get("status")).ok_or_else(|| {
                format!(
                    "status `{}` is not one of active, inactive, defunct, temporarily closed",
                    r.get("status")
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
                    .to_owned(),
                fees_description: r.first(&["fees_description", "fees"]).to_owned(),
                application_process: r.get("application_process").to_owned(),
                alert: r.get("alert").to_owned(),
                ..Service::default()
            };
            Mapped::one(Row::Service(Box::new(service), update_time))
        }
        "locations.csv" => {
            let id = require_id(r, "id")?;
            let mut notes = Vec::new();
            let (lat, lon) = (r.get("latitude"), r.get("longitude"));
            let point = if lat.is_empty() && lon.is_empty() {
                None
            } else {
                match (lat.parse::<f64>(), lon.parse::<f64>()) {
                    (Ok(la), Ok(lo))
                        if la.is_finite()
                            && lo.is_finite()
                            && (-90.0..=90.0).contains(&la)
                            && (-180.0..=180.0).contains(&lo) =>
                    {
                        Some((la, lo))
                    }
                    _ => {
                        let mut why = Vec::new();
                        if !lat
                            .parse::<f64>()
                            .is_ok_and(|la| la.is_finite() && (-90.0..=90.0).contains(&la))
                        {
                            why.push(format!("latitude `{lat}` is not a number from -90 to 90"));
                        }
                        if !lon
                            .parse::<f64>()
                            .is_ok_and(|lo| lo.is_finite() && (-180.0..=180.0).contains(&lo))
                        {
                            why.push(format!(
                                "longitude `{lon}` is not a number from -180 to 180"
                            ));
                        }
                        notes.push(format!(
                            "{}; the location is imported without coordinates",
                            why.join(", ")
                        ));
                        None
                    }
                }
            };
            let zone = r.first(&["time_zone", "timezone"]);
            let time_zone = zone_of(zone).unwrap_or_else(|| options.default_time_zone.clone());
            Ok(Some(Mapped {
                rows: vec![Row::Location {
                    id,
                    name: r.get("name").to_owned(),
                    point,
                    time_zone,
                }],
                notes,
            }))
        }
        "addresses.csv" | "physical_addresses.csv" => {
            let location_id = require_id(r, "location_id")?;
            let address_1 = r.get("address_1");
            if address_1.is_empty() {
                return Err("address_1 is missing".into());
            }
            let address_2 = [r.get("address_2"), r.get("address_3"), r.get("address_4")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            Mapped::one(Row::Address {
                location_id,
                address: Address {
                    attention: r.get("attention").to_owned(),
                    address_1: address_1.to_owned(),
                    address_2,
                    city: r.get("city").to_owned(),
                    region: r.get("region").to_owned(),
                    state_province: r.get("state_province").to_owned(),
                    postal_code: r.get("postal_code").to_owned(),
                    country: r.get("country").to_owned(),
                },
            })
        }
        "service_at_location.csv" => Mapped::one(Row::ServiceAtLocation {
            id: require_id(r, "id")?,
            service_id: require_id(r, "service_id")?,
            location_id: require_id(r, "location_id")?,
            position,
        }),
        "attributes.csv" => {
            if !r.get("link_entity").eq_ignore_ascii_case("service") {
                return Ok(None);
            }
            Mapped::one(Row::ServiceTaxonomy {
                service_id: require_id(r, "link_id")?,
                term_id: require_id(r, "taxonomy_term_id")?,
            })
        }
        "services_taxonomy.csv" => {
            let column = if r.get("taxonomy_term_id").is_empty() {
                "taxonomy_id"
            } else {
                "taxonomy_term_id"
            };
            Mapped::one(Row::ServiceTaxonomy {
                service_id: require_id(r, "service_id")?,
                term_id: require_id(r, column)?,
            })
        }
        "languages.csv" => {
            if r.get("service_id").is_empty() {
                return Ok(None);
            }
            let service_id = require_id(r, "service_id")?;
            let text = r.first(&["code", "language", "name"]);
            let code = language_code(text).ok_or_else(|| {
                format!("language `{text}` is not a language code or a known name")
            })?;
            Mapped::one(Row::Language {
                service_id,
                code,
                position,
            })
        }
        "phones.csv" => {
            if r.get("service_id").is_empty() {
                return Ok(None);
            }
            let number = r.get("number").trim_matches('"').trim();
            if number.is_empty() {
                return Err("number is missing".into());
            }
            let extension = r.get("extension");
            Mapped::one(Row::Phone {
                id: require_id(r, "id")?,
                service_id: require_id(r, "service_id")?,
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
        "schedules.csv" | "regular_schedules.csv" => map_schedule(table, r, position),
        _ => Ok(None),
    }
}

fn map_schedule(table: &str, r: &Record<'_>, position: i64) -> Result<Option<Mapped>, String> {
    let id = require_id(r, "id")?;
    let optional = |column: &str| -> Result<Option<String>, String> {
        match r.opt(column) {
            None => Ok(None),
            Some(_) => require_id(r, column).map(Some),
        }
    };
    let service_id = optional("service_id")?;
    let location_id = optional("location_id")?;
    let service_at_location_id = optional("service_at_location_id")?;
    let time = |column: &str| -> Result<String, String> {
        let text = r.get(column);
        if text.is_empty() {
            return Err(format!(
                "{column} is missing: a schedule without hours cannot say when the service is open"
            ));
        }
        normalize_time(text).ok_or_else(|| format!("{column} `{text}` is not a time"))
    };
    let opens_at = time("opens_at")?;
    let mut closes_at = time("closes_at")?;
    if closes_at == "00:00" {
        closes_at = "24:00".into();
    }
    let (freq, byday) = if table == "regular_schedules.csv" {
        let weekday = r.get("weekday");
        let code = weekday_code(weekday)
            .ok_or_else(|| format!("weekday `{weekday}` is not a day of the week"))?;
        (ScheduleFrequency::Weekly, code.to_owned())
    } else {
        let freq = match r.get("freq").to_ascii_uppercase().as_str() {
            "" | "WEEKLY" | "DAILY" => ScheduleFrequency::Weekly,
            "MONTHLY" => ScheduleFrequency::Monthly,
            other => {
                return Err(format!(
                    "freq `{other}` is not supported (WEEKLY or MONTHLY)"
                ));
            }
        };
        (freq, r.get("byday").to_ascii_uppercase().replace(' ', ""))
    };
    let interval = match r.get("interval") {
        "" => 0,
        text => text
            .parse::<i32>()
            .map_err(|_| format!("interval `{text}` is not a whole number"))?,
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
        valid_from: date_of(r.get("valid_from"))?,
        valid_to: date_of(r.get("valid_to"))?,
        dtstart: date_of(r.get("dtstart"))?,
        description: r.get("description").to_owned(),
    };
    if let Err(problems) = Hours::parse(&schedule) {
        return Err(problems
            .into_iter()
            .map(|(field, why)| format!("{field} {why}"))
            .collect::<Vec<_>>()
            .join("; "));
    }
    let mut rows = Vec::new();
    if let (Some(location_id), Some(zone)) = (&location_id, zone_of(r.get("timezone"))) {
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

/// Rows written per batch (one multi-row statement per kind of row).
const BATCH_ROWS: usize = 1000;

/// Writes the `pending` records of `table` in one batch and accounts for each, in line order.
/// A record is rejected when any of its rows could not be stored; its other rows are still
/// written (only schedules have two rows, and the first, a location's time zone, is always
/// stored).
async fn flush<W: WriteSession>(
    session: &mut W,
    table: &str,
    pending: &mut Vec<(u64, Result<Mapped, String>)>,
    summary: &mut FileSummary,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    // Each record's rows, in order, and how many there were.
    let mut counts = Vec::with_capacity(pending.len());
    let mut rows: Vec<Row> = Vec::new();
    for (_, mapped) in pending.iter_mut() {
        let taken = mapped
            .as_mut()
            .map(|m| std::mem::take(&mut m.rows))
            .unwrap_or_default();
        counts.push(taken.len());
        rows.extend(taken);
    }
    let results = if rows.is_empty() {
        Vec::new()
    } else {
        session.apply_all(&rows).await?
    };
    let mut results = results.into_iter();
    let mut reject = |line: u64, reason: String| {
        summary.rejected += 1;
        report.rejected += 1;
        if report.rejections.len() < MAX_REPORTED_REJECTIONS {
            report.rejections.push(Rejection {
                file: table.to_owned(),
                line,
                reason,
            });
        }
    };
    for ((line, mapped), count) in pending.drain(..).zip(counts) {
        // The first row of the record that could not be stored, if any.
        let missing = results
            .by_ref()
            .take(count)
            .fold(None, |first, applied| match applied {
                Applied::Missing(reason) => first.or(Some(reason)),
                Applied::Stored => first,
            });
        match mapped {
            Err(reason) => reject(line, reason),
            Ok(mapped) => match missing {
                Some(reason) => reject(line, reason),
                None => {
                    for note in mapped.notes {
                        reject(line, note);
                    }
                    summary.stored += 1;
                    report.stored += 1;
                }
            },
        }
    }
    Ok(())
}

/// Imports the package at `path` (a folder or a `.zip`) into `store`, in one transaction,
/// calling `progress` as it reads.
///
/// # Errors
/// [`ImportError`] when the package cannot be read or the database fails; then nothing was
/// imported.
pub async fn import<S: DirectoryStore>(
    store: &S,
    path: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ImportReport, ImportError> {
    let mut source = Source::open(path)?;
    let present: Vec<(&str, u64)> = TABLES
        .iter()
        .filter_map(|name| source.size(name).map(|size| (*name, size)))
        .collect();
    if !present
        .iter()
        .any(|(name, _)| matches!(*name, "services.csv" | "organizations.csv"))
    {
        return Err(ImportError::NotAPackage(path.display().to_string()));
    }
    let bytes_total: u64 = present.iter().map(|(_, size)| size).sum();
    let now = crate::micros(chrono::Utc::now());
    let mut session = store.begin().await?;
    let mut report = ImportReport::default();
    let mut bytes_before = 0;
    for (table, size) in present {
        let mut summary = FileSummary {
            file: table.to_owned(),
            ..FileSummary::default()
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 16, source.reader(table)?);
        // With CRLF line ends the CSV reader stops at '\r' and counts the '\n' as part of
        // the next record, one line early: correct for it.
        let crlf = std::io::BufRead::fill_buf(&mut reader)
            .map_err(|source| ImportError::Io {
                path: table.to_owned(),
                source,
            })?
            .windows(2)
            .any(|w| w == b"\r\n");
        let mut csv = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let csv_error = |source| ImportError::Csv {
            file: table.to_owned(),
            source,
        };
        let columns: HashMap<String, usize> = csv
            .headers()
            .map_err(csv_error)?
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.trim()
                        .trim_start_matches('\u{feff}')
                        .to_ascii_lowercase(),
                    i,
                )
            })
            .collect();
        let mut record = csv::StringRecord::new();
        let mut position = 0;
        // Records read but not yet written, in order, with their line.
        let mut pending: Vec<(u64, Result<Mapped, String>)> = Vec::new();
        let mut pending_rows = 0;
        loop {
            // The reader's position before a record is where the record starts.
            let line = csv.position().line() + u64::from(crlf);
            if !csv.read_record(&mut record).map_err(csv_error)? {
                break;
            }
            summary.rows += 1;
            report.rows += 1;
            let mapped = map_record(
                table,
                &Record {
                    columns: &columns,
                    record: &record,
                },
                options,
                now,
                line,
            );
            match mapped {
                Ok(None) => summary.ignored += 1,
                Ok(Some(mapped)) => {
                    pending_rows += mapped.rows.len();
                    pending.push((line, Ok(mapped)));
                }
                Err(reason) => pending.push((line, Err(reason))),
            }
            if pending_rows >= BATCH_ROWS || pending.len() >= BATCH_ROWS {
                flush(&mut session, table, &mut pending, &mut summary, &mut report).await?;
                pending_rows = 0;
            }
            if summary.rows.is_multiple_of(512) {
                position = record.position().map_or(position, csv::Position::byte);
                progress(Progress {
                    file: table,
                    bytes_done: bytes_before + position,
                    bytes_total,
                    rows: report.rows,
                });
            }
        }
        flush(&mut session, table, &mut pending, &mut summary, &mut report).await?;
        bytes_before += size;
        progress(Progress {
            file: table,
            bytes_done: bytes_before,
            bytes_total,
            rows: report.rows,
        });
        report.files.push(summary);
    }
    session.refresh_all_search().await?;
    session.commit().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_weekdays_and_languages() {
        assert_eq!(zone_of("3").as_deref(), Some("Etc/GMT-3"));
        assert_eq!(zone_of("-8").as_deref(), Some("Etc/GMT+8"));
        assert_eq!(
            zone_of("America/Chicago").as_deref(),
            Some("America/Chicago")
        );
        assert_eq!(zone_of("Mars/Olympus"), None);
        assert_eq!(weekday_code("Monday"), Some("MO"));
        assert_eq!(weekday_code("7"), Some("SU"));
        assert_eq!(weekday_code("Funday"), None);
        assert_eq!(language_code("Spanish").as_deref(), Some("es"));
        assert_eq!(language_code("ur").as_deref(), Some("ur"));
        assert_eq!(language_code("Klingon spoken here"), None);
    }
}
