//! Writing mapped records in batches, and accounting for each in the report.

use super::{
    FileSummary, ImportError, ImportReport, MAX_REPORTED_REJECTIONS, Rejection,
    descriptor::Planned,
    fields::{Problem, problem},
    mapping::Mapped,
};
use crate::store::{Applied, Row, WriteSession};

/// Rows written per batch (one multi-row statement per kind of row).
pub(super) const BATCH_ROWS: usize = 1000;

/// The file being imported and its counts.
pub(super) struct Current<'a> {
    pub(super) planned: &'a Planned,
    pub(super) summary: FileSummary,
}

impl Current<'_> {
    pub(super) fn reject(&mut self, report: &mut ImportReport, line: u64, problem: Problem) {
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
pub(super) async fn flush<W: WriteSession>(
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
