//! Reading one CSV file of a package, record by record, tolerant of what real exports do
//! (a byte order mark, CRLF line ends, missing or extra columns).

use std::{
    collections::HashMap,
    io::{BufRead, Read},
};

use super::{
    FileSummary, ImportError, ImportOptions, ImportReport, Progress,
    descriptor::Planned,
    fields::Problem,
    mapping::{Mapped, Seen, map_record},
    write::{BATCH_ROWS, Current, flush},
};
use crate::store::{Row, WriteSession};

/// A CSV record with its header, read by column name.
pub(super) struct Record<'a> {
    pub(super) columns: &'a HashMap<String, usize>,
    pub(super) record: &'a csv::StringRecord,
}

impl Record<'_> {
    pub(super) fn get(&self, name: &str) -> &str {
        self.columns
            .get(name)
            .and_then(|&i| self.record.get(i))
            .map_or("", str::trim)
    }

    /// The first of `names` with a value, and its value.
    pub(super) fn first<'n>(&self, names: &[&'n str]) -> (&'n str, &str) {
        names
            .iter()
            .map(|n| (*n, self.get(n)))
            .find(|(_, v)| !v.is_empty())
            .unwrap_or((names[0], ""))
    }

    pub(super) fn opt(&self, name: &str) -> Option<String> {
        let value = self.get(name);
        (!value.is_empty()).then(|| value.to_owned())
    }
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
pub(super) async fn import_file<W: WriteSession>(
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
