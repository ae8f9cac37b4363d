//! `relay directory export`: writes everything the directory holds as an Open Referral HSDS
//! 3.0 tabular data package (a `datapackage.json` descriptor and one CSV file per table), in
//! a folder or a `.zip`.
//!
//! - Tables and columns are HSDS 3.0's (`organizations.csv`, `services.csv`, `locations.csv`,
//!   `addresses.csv`, `service_at_location.csv`, `schedules.csv`, `phones.csv`,
//!   `languages.csv`, `taxonomy_terms.csv`, `attributes.csv`), with the columns Relay keeps.
//! - Live capacity has no place in HSDS 3.0; it is written as the HSDS 3.1 draft models it:
//!   `service_capacity.csv` (`id`, `service_id`, `unit_id`, `available`, `maximum`,
//!   `updated`) and `units.csv` (one unit, "place"), plus a `location_id` column, because
//!   Relay keeps capacity per location and 3.1 per service.
//! - One other column is Relay's own: `locations.csv` `time_zone` (the location's IANA time
//!   zone; HSDS 3.0 has only a schedule's UTC offset, which loses daylight saving time).
//!   Both extensions are declared in the descriptor with a description that says so.
//! - Ids are the ones the directory holds (the ids of the imported package), so an export of
//!   an imported package keeps its links with the source. HSDS 3.0 suggests UUIDs; rows Relay
//!   derived (a phone or schedule without an id in a 1.x package) keep their derived ids.
//! - The importer reads the package back: importing an export into an empty directory gives
//!   the same services, field for field, except `create_time` (the time of the import).
//! - Reads through [`DirectoryStore::dump`], so it works on PostgreSQL and SQLite alike.

use std::{io::Write, path::Path};

use relay_proto::directory::{ScheduleFrequency, ServiceStatus};

use crate::{
    error::DirectoryError,
    from_micros,
    store::{DirectoryStore, Dump, Row},
};

mod tables;
use tables::*;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What was being written.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The zip could not be written.
    #[error("cannot write zip {path}: {source}")]
    Zip {
        /// The zip.
        path: String,
        /// The cause.
        source: zip::result::ZipError,
    },
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] DirectoryError),
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Each CSV file (path inside the package) and its number of data rows.
    pub files: Vec<(String, u64)>,
}

/// The unit of every capacity row: Relay counts places (beds, seats, slots).
pub const CAPACITY_UNIT_ID: &str = "relay-place";

/// One column of an exported table: its name, its Frictionless type, and for a column that
/// is not HSDS 3.0's, why it is there.
type Column = (&'static str, &'static str, Option<&'static str>);

/// One exported table.
struct Table {
    /// Resource name (the HSDS table).
    name: &'static str,
    /// File name.
    path: &'static str,
    /// For a table that is not HSDS 3.0's, what it is.
    note: Option<&'static str>,
    columns: &'static [Column],
    rows: Vec<Vec<String>>,
}

const S: &str = "string";
const N: &str = "number";

const TIME_ZONE_NOTE: &str = "Relay extension, not HSDS 3.0: the location's IANA time zone (HSDS 3.0 has only a schedule's UTC offset). Opening hours are wall-clock times in this zone.";
const CAPACITY_LOCATION_NOTE: &str = "Relay extension to the HSDS 3.1 draft table: the location the report is for (Relay keeps capacity per service and location).";
const CAPACITY_NOTE: &str = "HSDS 3.1 draft table (not in HSDS 3.0): the latest live capacity report of each service at each location that reports one.";
const UNIT_NOTE: &str =
    "HSDS 3.1 draft table (not in HSDS 3.0): the units service_capacity counts.";

/// Writes the whole directory in `store` as an HSDS 3.0 tabular data package at `path`: a
/// `.zip` file when the path ends in `.zip`, otherwise a folder (created if missing; files
/// of the same names are replaced, others left alone).
///
/// # Errors
/// [`ExportError`] when the database fails or the package cannot be written; a `.zip` is
/// then left incomplete.
pub async fn export<S: DirectoryStore>(
    store: &S,
    path: &Path,
) -> Result<ExportReport, ExportError> {
    let tables = tables(store).await?;
    let descriptor = descriptor(&tables);
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        crate::import::DESCRIPTOR.to_owned(),
        serde_json::to_vec_pretty(&descriptor).unwrap_or_default(),
    )];
    let mut report = ExportReport::default();
    for table in &tables {
        files.push((table.path.to_owned(), csv_of(table)));
        report
            .files
            .push((table.path.to_owned(), table.rows.len() as u64));
    }
    let is_zip = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    let io = |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    };
    if is_zip {
        let zip_error = |source| ExportError::Zip {
            path: path.display().to_string(),
            source,
        };
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).map_err(io)?);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in &files {
            zip.start_file(name.as_str(), options).map_err(zip_error)?;
            zip.write_all(bytes).map_err(io)?;
        }
        zip.finish().map_err(zip_error)?;
    } else {
        std::fs::create_dir_all(path).map_err(io)?;
        for (name, bytes) in &files {
            std::fs::write(path.join(name), bytes).map_err(|source| ExportError::Io {
                path: path.join(name).display().to_string(),
                source,
            })?;
        }
    }
    Ok(report)
}

fn csv_of(table: &Table) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = writer.write_record(table.columns.iter().map(|c| c.0));
    for row in &table.rows {
        let _ = writer.write_record(row);
    }
    writer.into_inner().unwrap_or_default()
}

fn descriptor(tables: &[Table]) -> serde_json::Value {
    let resources: Vec<serde_json::Value> = tables
        .iter()
        .map(|table| {
            let fields: Vec<serde_json::Value> = table
                .columns
                .iter()
                .map(|(name, kind, note)| {
                    let mut field = serde_json::json!({ "name": name, "type": kind });
                    if let Some(note) = note {
                        field["description"] = (*note).into();
                    }
                    field
                })
                .collect();
            let mut resource = serde_json::json!({
                "name": table.name,
                "path": table.path,
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "profile": "tabular-data-resource",
                "schema": { "fields": fields, "primaryKey": "id" },
            });
            if let Some(note) = table.note {
                resource["description"] = note.into();
            }
            resource
        })
        .collect();
    serde_json::json!({
        "name": "relay_directory_export",
        "title": "Relay referral directory",
        "description": "Every organization, service, location and schedule of a Relay referral directory, as an Open Referral HSDS 3.0 tabular data package, with live capacity as the HSDS 3.1 draft models it.",
        "profile": "tabular-data-package",
        "version": "3.0.0",
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "resources": resources,
    })
}
