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

use std::path::Path;

use crate::{
    error::DirectoryError,
    store::{DirectoryStore, WriteSession},
};

mod descriptor;
mod fields;
mod mapping;
mod package;
mod records;
mod write;

use descriptor::{Table, plan};
use mapping::Seen;
use package::Source;
use records::import_file;

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
