//! `relay directory import`: loads an Open Referral HSDS tabular data package (a folder or a
//! `.zip` of CSV files) into the directory.
//!
//! - Which files: when the package has a `datapackage.json` (at its root, or in the one
//!   folder a zip wraps everything in), each resource's `name` says which table it is and its
//!   `path` where the CSV is, relative to the descriptor (`data/services.csv` in many 211
//!   exports). Without a descriptor, CSV files are recognized by their file name, anywhere in
//!   the folder or zip.
//! - Every table name of HSDS 1.0, 1.1, 2.0 and 3.0 is accepted, singular (as descriptors
//!   name resources) or plural (as files are named): see [`Table::from_name`]. Tables Relay
//!   does not model (contacts, funding, eligibility, ...) are read and counted as ignored.
//! - Both layouts: HSDS 3.0 (`schedules.csv` with `byday`, `attributes.csv` linking taxonomy
//!   terms, `addresses.csv`) and the older 1.x/2.0 one (`regular_schedules.csv` with
//!   `weekday`, `holiday_schedules.csv`, `services_taxonomy.csv` or `service_attributes.csv`,
//!   `physical_addresses.csv`, `taxonomy.csv`, free-text times such as `9:00am` or `0900`).
//! - Tolerant of what real exports do: a UTF-8 byte order mark, CRLF line ends, quoted
//!   newlines, missing optional columns, extra columns, empty strings for nulls.
//! - Streaming: each file is read record by record and written as it is read, so memory stays
//!   flat whatever the package size (rows are upserts by their HSDS id; the database, not this
//!   process, holds what was read).
//! - All or nothing: the whole import is one transaction; any fatal error (unreadable file,
//!   a resource the descriptor names but the package lacks, malformed CSV, database failure)
//!   rolls it back.
//! - Idempotent: every row is an upsert by its HSDS id, so importing again updates rather than
//!   duplicates. A schedule row without an id (nothing refers to schedules) gets one derived
//!   from what it says, so it too is the same row on every import.
//! - Row by row reporting: a row that cannot be imported (a missing id, an unknown service, a
//!   time that is not a time) is skipped and reported with its file, table, line, column and
//!   reason; a location with impossible coordinates is imported without them, and reported.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, Read},
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

/// The file name of a tabular data package's descriptor.
pub const DESCRIPTOR: &str = "datapackage.json";

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
    /// The package's `datapackage.json` cannot be used.
    #[error("{path}: {reason}")]
    Descriptor {
        /// The descriptor, as named in the package.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder or zip holds no HSDS table.
    #[error(
        "{0} is not an HSDS tabular data package: no services or organizations table found (neither a datapackage.json resource nor a services.csv or organizations.csv file)"
    )]
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
    /// The file, as named in the package (`locations.csv`, `data/locations.csv`).
    pub file: String,
    /// The table: the descriptor's resource name, or the file's name without `.csv`.
    pub table: String,
    /// The line in that file where the record starts (1 is the header).
    pub line: u64,
    /// The column (or columns, comma separated) at fault.
    pub column: String,
    /// What was wrong and what was done about it.
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: table {}, column {}: {}",
            self.file, self.line, self.table, self.column, self.reason
        )
    }
}

/// Counts of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSummary {
    /// The file, as named in the package.
    pub file: String,
    /// The table: the descriptor's resource name, or the file's name without `.csv`.
    pub table: String,
    /// Records read.
    pub rows: u64,
    /// Records stored (possibly with a field dropped and reported).
    pub stored: u64,
    /// Records skipped and reported.
    pub rejected: u64,
    /// Records that HSDS allows but Relay does not model (tables such as contacts, attributes
    /// that do not link a service to a taxonomy term, schedule rows that say "closed" or give
    /// no hours), skipped silently.
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
    /// What was left out of the package as a whole, one sentence each (a descriptor resource
    /// that is not an HSDS table, a CSV file no table is named after).
    pub notes: Vec<String>,
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

/// A folder or a zip, as a list of files named by their path inside it (`/` separated).
enum Source {
    Folder {
        root: PathBuf,
        files: Vec<(String, u64)>,
    },
    Zip {
        path: String,
        archive: zip::ZipArchive<File>,
        files: Vec<(String, u64)>,
    },
}

/// Folders deeper than this inside a package are not looked into.
const MAX_DEPTH: usize = 4;

fn skipped_entry(name: &str) -> bool {
    name.starts_with('.') || name == "__MACOSX"
}

fn list_folder(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, u64)>,
) -> Result<(), ImportError> {
    let io = |source| ImportError::Io {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skipped_entry(&name) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io)?;
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                list_folder(root, &path, depth + 1, out)?;
            }
        } else if let Ok(relative) = path.strip_prefix(root) {
            let relative = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, meta.len()));
        }
    }
    Ok(())
}

impl Source {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let display = path.display().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            list_folder(path, path, 0, &mut files)?;
            files.sort();
            return Ok(Self::Folder {
                root: path.to_owned(),
                files,
            });
        }
        let file = File::open(path).map_err(|source| ImportError::Io {
            path: display.clone(),
            source,
        })?;
        let zip_error = |source| ImportError::Zip {
            path: display.clone(),
            source,
        };
        let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
        let mut files = Vec::new();
        for index in 0..archive.len() {
            let entry = archive.by_index_raw(index).map_err(zip_error)?;
            let name = entry.name().to_owned();
            if entry.is_dir() || name.split('/').any(skipped_entry) {
                continue;
            }
            files.push((name, entry.size()));
        }
        files.sort();
        Ok(Self::Zip {
            path: display,
            archive,
            files,
        })
    }

    fn files(&self) -> &[(String, u64)] {
        match self {
            Self::Folder { files, .. } | Self::Zip { files, .. } => files,
        }
    }

    /// The file at `wanted` (exactly, else ignoring case) and its size.
    fn find(&self, wanted: &str) -> Option<(String, u64)> {
        let files = self.files();
        files
            .iter()
            .find(|(name, _)| name == wanted)
            .or_else(|| {
                files
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            })
            .cloned()
    }

    fn reader(&mut self, name: &str) -> Result<Box<dyn Read + '_>, ImportError> {
        match self {
            Self::Folder { root, .. } => {
                let path = root.join(name);
                let file = File::open(&path).map_err(|source| ImportError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(Box::new(file))
            }
            Self::Zip { path, archive, .. } => {
                let entry = archive.by_name(name).map_err(|source| ImportError::Zip {
                    path: path.clone(),
                    source,
                })?;
                Ok(Box::new(entry))
            }
        }
    }
}

/// What Relay does with an HSDS table. The order is the import order: a table comes after
/// the tables its rows refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Organizations,
    TaxonomyTerms,
    Services,
    Locations,
    Addresses,
    ServiceAtLocation,
    /// 3.0 `attribute` and 2.0 `other_attribute` / `link_taxonomy`: only links of a service
    /// to a taxonomy term are kept.
    Attributes,
    /// 1.x `service_taxonomy` and 2.0 `service_attribute`.
    ServiceTaxonomy,
    Languages,
    Phones,
    /// 2.0 and 3.0 `schedule` (RFC 5545 style).
    Schedules,
    /// 1.x `regular_schedule` (one weekday a row).
    RegularSchedules,
    /// 1.x `holiday_schedule` (a date range, open or closed).
    HolidaySchedules,
    /// HSDS 3.1 draft `service_capacity` (not in 3.0), with Relay's `location_id` column: a
    /// location's latest capacity report, as `relay directory export` writes it.
    Capacity,
    /// An HSDS table Relay does not model: read, counted, ignored.
    NotModelled,
}

impl Table {
    /// The table a resource `name` (from a descriptor, or a file name without `.csv`) is,
    /// with `stem` the name of its file without `.csv` (`taxonomy` is the term list in 1.x,
    /// `taxonomy.csv`, but the list of vocabularies in 3.0, `taxonomies.csv`).
    fn from_name(name: &str, stem: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Some(match name.as_str() {
            "organization" | "organizations" => Self::Organizations,
            "taxonomy" if stem.eq_ignore_ascii_case("taxonomies") => Self::NotModelled,
            "taxonomy_term" | "taxonomy_terms" | "taxonomy" => Self::TaxonomyTerms,
            "service" | "services" => Self::Services,
            "location" | "locations" => Self::Locations,
            "address" | "addresses" | "physical_address" | "physical_addresses" => Self::Addresses,
            "service_at_location"
            | "services_at_location"
            | "service_at_locations"
            | "services_at_locations" => Self::ServiceAtLocation,
            "attribute" | "attributes" | "other_attribute" | "other_attributes"
            | "link_taxonomy" | "link_taxonomies" => Self::Attributes,
            "service_taxonomy"
            | "services_taxonomy"
            | "service_taxonomies"
            | "services_taxonomies"
            | "service_attribute"
            | "service_attributes" => Self::ServiceTaxonomy,
            "language" | "languages" => Self::Languages,
            "phone" | "phones" => Self::Phones,
            "schedule" | "schedules" => Self::Schedules,
            "regular_schedule" | "regular_schedules" => Self::RegularSchedules,
            "holiday_schedule" | "holiday_schedules" => Self::HolidaySchedules,
            "postal_address"
            | "postal_addresses"
            | "program"
            | "programs"
            | "contact"
            | "contacts"
            | "funding"
            | "fundings"
            | "eligibility"
            | "eligibilities"
            | "service_area"
            | "service_areas"
            | "required_document"
            | "required_documents"
            | "payment_accepted"
            | "payments_accepted"
            | "accessibility_for_disabilities"
            | "accessibility"
            | "accessibilities"
            | "cost_option"
            | "cost_options"
            | "organization_identifier"
            | "organization_identifiers"
            | "taxonomies"
            | "metadata"
            | "meta_table_description"
            | "meta_table_descriptions"
            | "url"
            | "urls"
            | "unit"
            | "units" => Self::NotModelled,
            "service_capacity" | "service_capacities" => Self::Capacity,
            _ => return None,
        })
    }

    /// The columns a row refers to other rows by (named when a referred row is missing).
    fn references(self) -> &'static str {
        match self {
            Self::Services => "organization_id",
            Self::Addresses => "location_id",
            Self::ServiceAtLocation => "service_id, location_id",
            Self::Attributes => "link_id, taxonomy_term_id",
            Self::ServiceTaxonomy => "service_id, taxonomy_term_id",
            Self::Languages | Self::Phones => "service_id",
            Self::Capacity => "service_id, location_id",
            Self::Schedules | Self::RegularSchedules | Self::HolidaySchedules => {
                "service_id, location_id, service_at_location_id"
            }
            Self::Organizations | Self::TaxonomyTerms | Self::Locations | Self::NotModelled => "id",
        }
    }
}

/// One CSV file to read.
#[derive(Debug, Clone)]
struct Planned {
    table: Table,
    /// The resource's name, or the file's name without `.csv`.
    name: String,
    /// The file, as named in the package.
    file: String,
    size: u64,
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn stem(path: &str) -> &str {
    let base = base_name(path);
    match base.len().checked_sub(4) {
        Some(cut) if base.is_char_boundary(cut) && base[cut..].eq_ignore_ascii_case(".csv") => {
            &base[..cut]
        }
        _ => base,
    }
}

/// `relative` resolved against the folder `dir` (both `/` separated), or `None` when it
/// leaves the package.
fn resolve(dir: &str, relative: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in relative.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// The package's descriptor, if any: the `datapackage.json` nearest the top.
fn find_descriptor(source: &Source) -> Option<String> {
    source
        .files()
        .iter()
        .map(|(name, _)| name)
        .filter(|name| base_name(name).eq_ignore_ascii_case(DESCRIPTOR))
        .min_by_key(|name| (name.matches('/').count(), (*name).clone()))
        .cloned()
}

/// The files to read, in import order, and what was left out, from the descriptor.
fn plan_from_descriptor(
    source: &mut Source,
    descriptor: &str,
) -> Result<(Vec<Planned>, Vec<String>), ImportError> {
    let fail = |reason: String| ImportError::Descriptor {
        path: descriptor.to_owned(),
        reason,
    };
    let mut text = String::new();
    source
        .reader(descriptor)?
        .read_to_string(&mut text)
        .map_err(|source| ImportError::Io {
            path: descriptor.to_owned(),
            source,
        })?;
    let json: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let resources = json
        .get("resources")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| fail("has no `resources` list".into()))?;
    let dir = descriptor
        .rsplit_once('/')
        .map_or("", |(dir, _)| dir)
        .to_owned();
    let mut planned = Vec::new();
    let mut notes = Vec::new();
    for (index, resource) in resources.iter().enumerate() {
        let name = resource
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let label = if name.is_empty() {
            format!("resource {}", index + 1)
        } else {
            format!("resource `{name}`")
        };
        let path = match resource.get("path") {
            Some(serde_json::Value::String(path)) => path.clone(),
            Some(serde_json::Value::Array(_)) => {
                return Err(fail(format!(
                    "{label} is split over several files, which this importer does not read; join them into one CSV"
                )));
            }
            _ => {
                notes.push(format!(
                    "{descriptor}: {label} has no `path` (inline data is not read); skipped"
                ));
                continue;
            }
        };
        let table = Table::from_name(&name, stem(&path))
            .or_else(|| Table::from_name(stem(&path), stem(&path)));
        let Some(table) = table else {
            notes.push(format!(
                "{descriptor}: {label} (`{path}`) is not an HSDS table; skipped"
            ));
            continue;
        };
        if path.contains("://") {
            return Err(fail(format!(
                "{label} is at `{path}`, a URL; this importer reads only files inside the package"
            )));
        }
        let Some(wanted) = resolve(&dir, &path) else {
            return Err(fail(format!(
                "{label} path `{path}` points outside the package"
            )));
        };
        match source.find(&wanted) {
            Some((file, size)) => planned.push(Planned {
                table,
                name: if name.is_empty() {
                    stem(&path).to_owned()
                } else {
                    name
                },
                file,
                size,
            }),
            None if table == Table::NotModelled => notes.push(format!(
                "{descriptor}: {label} file `{wanted}` is not in the package; skipped (Relay does not use this table)"
            )),
            None => {
                return Err(fail(format!(
                    "{label} file `{wanted}` is not in the package"
                )));
            }
        }
    }
    Ok((planned, notes))
}

/// The files to read, in import order, and what was left out, from file names alone.
fn plan_from_names(source: &Source) -> (Vec<Planned>, Vec<String>) {
    let mut planned = Vec::new();
    let mut notes = Vec::new();
    for (file, size) in source.files() {
        if !base_name(file).to_ascii_lowercase().ends_with(".csv") {
            continue;
        }
        let name = stem(file);
        match Table::from_name(name, name) {
            Some(table) => planned.push(Planned {
                table,
                name: name.to_owned(),
                file: file.clone(),
                size: *size,
            }),
            None => notes.push(format!("{file} is not named after an HSDS table; skipped")),
        }
    }
    (planned, notes)
}

/// The files of the package to read, in import order, and what was left out.
fn plan(source: &mut Source, package: &Path) -> Result<(Vec<Planned>, Vec<String>), ImportError> {
    let (mut planned, notes) = match find_descriptor(source) {
        Some(descriptor) => plan_from_descriptor(source, &descriptor)?,
        None => plan_from_names(source),
    };
    if !planned
        .iter()
        .any(|p| matches!(p.table, Table::Services | Table::Organizations))
    {
        return Err(ImportError::NotAPackage(package.display().to_string()));
    }
    planned.sort_by(|a, b| a.table.cmp(&b.table).then_with(|| a.file.cmp(&b.file)));
    planned.dedup_by(|a, b| a.file == b.file);
    Ok((planned, notes))
}

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

    /// The first of `names` with a value, and its value.
    fn first<'n>(&self, names: &[&'n str]) -> (&'n str, &str) {
        names
            .iter()
            .map(|n| (*n, self.get(n)))
            .find(|(_, v)| !v.is_empty())
            .unwrap_or((names[0], ""))
    }

    fn opt(&self, name: &str) -> Option<String> {
        let value = self.get(name);
        (!value.is_empty()).then(|| value.to_owned())
    }
}

/// Why a row is rejected: the column at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    column: String,
    reason: String,
}

fn problem(column: &str, reason: impl Into<String>) -> Problem {
    Problem {
        column: column.to_owned(),
        reason: reason.into(),
    }
}

fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn require_id(record: &Record<'_>, column: &str) -> Result<String, Problem> {
    let value = record.get(column);
    if value.is_empty() {
        Err(problem(column, format!("{column} is missing")))
    } else if is_id(value) {
        Ok(value.to_owned())
    } else {
        Err(problem(
            column,
            format!("{column} `{value}` is not an id (1..64 of A-Z a-z 0-9 . _ : -)"),
        ))
    }
}

/// A row's `id`, or, when it has none, one derived from `parts` (what the row says), the same
/// on every import. Only for rows that nothing else in a package refers to by id (schedules,
/// phones), or that are referred to only by what derives the id (a service at a location).
fn id_or_derived(record: &Record<'_>, parts: &[&str]) -> Result<String, Problem> {
    if record.get("id").is_empty() {
        Ok(format!("derived-{:016x}", stable_hash(parts)))
    } else {
        require_id(record, "id")
    }
}

fn require(record: &Record<'_>, column: &str) -> Result<String, Problem> {
    let value = record.get(column);
    if value.is_empty() {
        Err(problem(column, format!("{column} is missing")))
    } else {
        Ok(value.to_owned())
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

fn date_of(record: &Record<'_>, column: &str) -> Result<String, Problem> {
    let text = record.get(column);
    if text.is_empty() {
        return Ok(String::new());
    }
    let day = text.get(..10).unwrap_or(text);
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.format("%Y-%m-%d").to_string())
        .map_err(|_| {
            problem(
                column,
                format!("{column} `{text}` is not a date (YYYY-MM-DD)"),
            )
        })
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

/// A schedule time as packages write it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Time {
    /// Canonical "HH:MM" (`24:00` is the end of the day).
    At(String),
    /// The row says the service is closed.
    Closed,
}

/// Reads a schedule time: what [`normalize_time`] reads (`9:00am`, `17:30`, `09:00:00`,
/// `noon`), plus `0900` (four digits, as some exports write it), a trailing `Z` or UTC offset
/// (`09:00-05:00`, as the HSDS 1.x field description suggests; the time is read as the
/// location's wall clock, whose zone already says the offset), and `closed`.
fn time_of(text: &str) -> Option<Time> {
    let lower = text.trim().to_ascii_lowercase();
    if lower == "closed" {
        return Some(Time::Closed);
    }
    let mut body = lower.as_str();
    if let Some(rest) = body.strip_suffix('z')
        && rest.ends_with(|c: char| c.is_ascii_digit())
    {
        body = rest;
    }
    if let Some(at) = body.rfind(['+', '-'])
        && at > 0
    {
        let offset = body[at + 1..].replace(':', "");
        if matches!(offset.len(), 2 | 4) && offset.bytes().all(|b| b.is_ascii_digit()) {
            body = &body[..at];
        }
    }
    if let Some(time) = normalize_time(body) {
        return Some(Time::At(time));
    }
    // Military time without a colon: 900, 0900, 1730, 2400.
    if matches!(body.len(), 3 | 4) && body.bytes().all(|b| b.is_ascii_digit()) {
        let (hours, minutes) = body.split_at(body.len() - 2);
        return normalize_time(&format!("{hours}:{minutes}")).map(Time::At);
    }
    None
}

/// A 64-bit FNV-1a hash of `parts` (each followed by a separator): stable across Rust
/// versions and platforms, unlike `std`'s hasher, so a derived id is the same on every
/// import.
fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0x1f)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The rows of one record, or why it is rejected. Notes are reported but the rows stored.
struct Mapped {
    rows: Vec<Row>,
    notes: Vec<Problem>,
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
fn point_of(r: &Record<'_>) -> (Option<(f64, f64)>, Option<Problem>) {
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
struct Seen {
    /// The location of each service_at_location id: a schedule that names only a
    /// service_at_location and a `timezone` sets that location's time zone. One short entry per
    /// service and location pair.
    sal_locations: HashMap<String, String>,
    /// The ids of the package's services and locations: their stored schedules are replaced
    /// by the package's (schedule rows without ids get ids derived from their contents, so
    /// changed hours come with new ids and the old ones would otherwise stay).
    services: Vec<String>,
    locations: Vec<String>,
}

fn map_record(
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
    let (freq, byday, valid_from, valid_to) = match table {
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
    };
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
        let column = match table {
            Table::RegularSchedules => problems
                .iter()
                .map(|(field, _)| if *field == "byday" { "weekday" } else { field })
                .collect::<Vec<_>>(),
            _ => problems.iter().map(|(field, _)| *field).collect(),
        };
        return Err(problem(
            &column.join(", "),
            problems
                .into_iter()
                .map(|(field, why)| format!("{field} {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        ));
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

/// Rows written per batch (one multi-row statement per kind of row).
const BATCH_ROWS: usize = 1000;

/// The file being imported and its counts.
struct Current<'a> {
    planned: &'a Planned,
    summary: FileSummary,
}

impl Current<'_> {
    fn reject(&mut self, report: &mut ImportReport, line: u64, problem: Problem) {
        self.summary.rejected += 1;
        report.rejected += 1;
        if report.rejections.len() < MAX_REPORTED_REJECTIONS {
            report.rejections.push(Rejection {
                file: self.planned.file.clone(),
                table: self.planned.name.clone(),
                line,
                column: problem.column,
                reason: problem.reason,
            });
        }
    }
}

/// Writes the `pending` records of the current file in one batch and accounts for each, in
/// line order. A record is rejected when any of its rows could not be stored; its other rows
/// are still written (only schedules have two rows, and the first, a location's time zone, is
/// always stored).
async fn flush<W: WriteSession>(
    session: &mut W,
    current: &mut Current<'_>,
    pending: &mut Vec<(u64, Result<Mapped, Problem>)>,
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
    let references = current.planned.table.references();
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
            Err(why) => current.reject(report, line, why),
            Ok(mapped) => match missing {
                Some(reason) => current.reject(report, line, problem(references, reason)),
                None => {
                    for note in mapped.notes {
                        current.reject(report, line, note);
                    }
                    current.summary.stored += 1;
                    report.stored += 1;
                }
            },
        }
    }
    Ok(())
}

/// Skips a UTF-8 byte order mark at the start of `reader` (spreadsheet exports write one; a
/// CSV parser would take it for part of the first column's name, or break its quoting).
fn skip_bom(reader: &mut impl BufRead, file: &str) -> Result<(), ImportError> {
    let start = reader.fill_buf().map_err(|source| ImportError::Io {
        path: file.to_owned(),
        source,
    })?;
    if start.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(())
}

/// Whether the file's lines end with CRLF (as far as its first buffer shows).
fn uses_crlf(reader: &mut impl BufRead, file: &str) -> Result<bool, ImportError> {
    Ok(reader
        .fill_buf()
        .map_err(|source| ImportError::Io {
            path: file.to_owned(),
            source,
        })?
        .windows(2)
        .any(|w| w == b"\r\n"))
}

/// Reads one file of the package into `session`.
#[allow(clippy::too_many_arguments)]
async fn import_file<W: WriteSession>(
    session: &mut W,
    reader: &mut dyn Read,
    planned: &Planned,
    options: &ImportOptions,
    now: i64,
    (bytes_before, bytes_total): (u64, u64),
    seen: &mut Seen,
    report: &mut ImportReport,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<FileSummary, ImportError> {
    let file = planned.file.as_str();
    let mut current = Current {
        planned,
        summary: FileSummary {
            file: file.to_owned(),
            table: planned.name.clone(),
            ..FileSummary::default()
        },
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
    skip_bom(&mut reader, file)?;
    // With CRLF line ends the CSV reader stops at '\r' and counts the '\n' as part of
    // the next record, one line early: correct for it.
    let crlf = uses_crlf(&mut reader, file)?;
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let csv_error = |source| ImportError::Csv {
        file: file.to_owned(),
        source,
    };
    let mut columns: HashMap<String, usize> = HashMap::new();
    for (i, name) in csv.headers().map_err(csv_error)?.iter().enumerate() {
        columns.entry(name.trim().to_ascii_lowercase()).or_insert(i);
    }
    let mut record = csv::StringRecord::new();
    let mut position = 0;
    // Records read but not yet written, in order, with their line.
    let mut pending: Vec<(u64, Result<Mapped, Problem>)> = Vec::new();
    let mut pending_rows = 0;
    loop {
        // The reader's position before a record is where the record starts.
        let line = csv.position().line() + u64::from(crlf);
        if !csv.read_record(&mut record).map_err(csv_error)? {
            break;
        }
        current.summary.rows += 1;
        report.rows += 1;
        let mapped = map_record(
            planned.table,
            &Record {
                columns: &columns,
                record: &record,
            },
            options,
            now,
            line,
            seen,
        );
        match mapped {
            Ok(None) => current.summary.ignored += 1,
            Ok(Some(mapped)) => {
                for row in &mapped.rows {
                    match row {
                        Row::Service(service, _) => seen.services.push(service.id.clone()),
                        Row::Location { id, .. } => seen.locations.push(id.clone()),
                        _ => {}
                    }
                }
                pending_rows += mapped.rows.len();
                pending.push((line, Ok(mapped)));
            }
            Err(why) => pending.push((line, Err(why))),
        }
        if pending_rows >= BATCH_ROWS || pending.len() >= BATCH_ROWS {
            flush(session, &mut current, &mut pending, report).await?;
            pending_rows = 0;
        }
        if current.summary.rows.is_multiple_of(512) {
            position = record.position().map_or(position, csv::Position::byte);
            progress(Progress {
                file,
                bytes_done: bytes_before + position,
                bytes_total,
                rows: report.rows,
            });
        }
    }
    flush(session, &mut current, &mut pending, report).await?;
    Ok(current.summary)
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
    let mut session = store.begin().await?;
    let report = import_into(&mut session, path, options, progress).await?;
    session.commit().await?;
    Ok(report)
}

/// Reads the package at `path` into an open write `session` without committing it: what
/// [`import`] does inside its transaction (and what the fuzz targets drive).
///
/// # Errors
/// As [`import`]; the caller then drops the session, which rolls it back.
pub async fn import_into<W: WriteSession>(
    session: &mut W,
    path: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ImportReport, ImportError> {
    let mut source = Source::open(path)?;
    let (planned, notes) = plan(&mut source, path)?;
    let bytes_total: u64 = planned.iter().map(|p| p.size).sum();
    let now = crate::micros(chrono::Utc::now());
    let mut report = ImportReport {
        notes,
        ..ImportReport::default()
    };
    let mut bytes_before = 0;
    let mut seen = Seen::default();
    let mut forgot = false;
    for planned in &planned {
        // Schedule tables come after services and locations (see `plan`).
        if !forgot && planned.table >= Table::Schedules {
            session
                .forget_schedules(&seen.services, &seen.locations)
                .await?;
            forgot = true;
        }
        let mut reader = source.reader(&planned.file)?;
        let summary = import_file(
            session,
            &mut reader,
            planned,
            options,
            now,
            (bytes_before, bytes_total),
            &mut seen,
            &mut report,
            progress,
        )
        .await?;
        bytes_before += planned.size;
        progress(Progress {
            file: &planned.file,
            bytes_done: bytes_before,
            bytes_total,
            rows: report.rows,
        });
        report.files.push(summary);
    }
    if !forgot {
        session
            .forget_schedules(&seen.services, &seen.locations)
            .await?;
    }
    session.refresh_all_search().await?;
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

    #[test]
    fn times_as_packages_write_them() {
        let at = |s: &str| Some(Time::At(s.to_owned()));
        for (text, want) in [
            ("9:00am", at("09:00")),
            ("9:00 AM", at("09:00")),
            ("0900", at("09:00")),
            ("900", at("09:00")),
            ("1730", at("17:30")),
            ("09:00:00", at("09:00")),
            ("24:00", at("24:00")),
            ("2400", at("24:00")),
            ("09:00Z", at("09:00")),
            ("09:00-05:00", at("09:00")),
            ("17:30+0100", at("17:30")),
            ("Closed", Some(Time::Closed)),
            ("2460", None),
            ("9:60", None),
            ("nine", None),
            ("-05:00", None),
        ] {
            assert_eq!(time_of(text), want, "{text}");
        }
    }

    #[test]
    fn table_names_of_every_version() {
        for (name, stem, want) in [
            (
                "services_at_location",
                "services_at_location",
                Table::ServiceAtLocation,
            ),
            (
                "service_at_location",
                "services_at_location",
                Table::ServiceAtLocation,
            ),
            (
                "regular_schedule",
                "regular_schedules",
                Table::RegularSchedules,
            ),
            (
                "holiday_schedules",
                "holiday_schedules",
                Table::HolidaySchedules,
            ),
            ("physical_address", "physical_addresses", Table::Addresses),
            ("postal_addresses", "postal_addresses", Table::NotModelled),
            (
                "service_taxonomy",
                "services_taxonomy",
                Table::ServiceTaxonomy,
            ),
            (
                "service_attribute",
                "service_attributes",
                Table::ServiceTaxonomy,
            ),
            ("taxonomy", "taxonomy", Table::TaxonomyTerms),
            ("taxonomy", "taxonomies", Table::NotModelled),
            ("taxonomy_term", "taxonomy_terms", Table::TaxonomyTerms),
            ("attribute", "attributes", Table::Attributes),
            ("Schedules", "schedules", Table::Schedules),
            ("eligibility", "eligibility", Table::NotModelled),
            ("accessibility_for_disabilities", "x", Table::NotModelled),
        ] {
            assert_eq!(Table::from_name(name, stem), Some(want), "{name} {stem}");
        }
        assert_eq!(Table::from_name("readme", "readme"), None);
    }

    #[test]
    fn paths_resolve_inside_the_package_only() {
        assert_eq!(
            resolve("", "data/services.csv").as_deref(),
            Some("data/services.csv")
        );
        assert_eq!(
            resolve("export", "./data/../data/services.csv").as_deref(),
            Some("export/data/services.csv")
        );
        assert_eq!(resolve("", "../services.csv"), None);
        assert_eq!(stem("data/Services.CSV"), "Services");
    }

    #[test]
    fn derived_ids_are_stable() {
        // FNV-1a's published test vector, then separation of the parts.
        assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }
}
