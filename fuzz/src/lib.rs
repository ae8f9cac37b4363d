//! What the fuzz targets share: a write session that checks each row the HSDS importer
//! produces instead of storing it, and a runner for the importer over a file on disk.

use std::path::Path;

use relay_directory::{
    import::{ImportOptions, ImportReport, import_into},
    schedule::{Hours, parse_time_zone},
    store::{Applied, Row, StoreResult, WriteSession},
};

/// A write session that stores nothing: it asserts what the database's columns and the
/// open-now search rely on for every row, and says every row was stored.
#[derive(Debug, Default)]
pub struct CheckingSession {
    /// Rows seen.
    pub rows: usize,
}

fn check(row: &Row) {
    match row {
        Row::Location {
            point, time_zone, ..
        } => {
            if let Some((lat, lon)) = point {
                assert!(
                    lat.is_finite() && (-90.0..=90.0).contains(lat),
                    "latitude {lat}"
                );
                assert!(
                    lon.is_finite() && (-180.0..=180.0).contains(lon),
                    "longitude {lon}"
                );
            }
            assert!(
                parse_time_zone(time_zone).is_some(),
                "time zone {time_zone:?}"
            );
        }
        Row::LocationTimeZone { time_zone, .. } => {
            assert!(
                parse_time_zone(time_zone).is_some(),
                "time zone {time_zone:?}"
            );
        }
        Row::Schedule { schedule, .. } => {
            assert!(
                Hours::parse(schedule).is_ok(),
                "an imported schedule the evaluator refuses: {schedule:?}"
            );
        }
        _ => {}
    }
}

impl WriteSession for CheckingSession {
    async fn apply(&mut self, row: &Row) -> StoreResult<Applied> {
        check(row);
        self.rows += 1;
        Ok(Applied::Stored)
    }

    async fn apply_all(&mut self, rows: &[Row]) -> StoreResult<Vec<Applied>> {
        rows.iter().for_each(check);
        self.rows += rows.len();
        Ok(vec![Applied::Stored; rows.len()])
    }

    async fn forget_schedules(
        &mut self,
        _services: &[String],
        _locations: &[String],
    ) -> StoreResult<()> {
        Ok(())
    }

    async fn refresh_all_search(&mut self) -> StoreResult<()> {
        Ok(())
    }

    async fn commit(self) -> StoreResult<()> {
        Ok(())
    }
}

/// Imports the package at `path` (a folder or a zip) into a [`CheckingSession`], on a
/// current-thread runtime, and checks the report's counts add up.
pub fn import_package(path: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let mut session = CheckingSession::default();
    let result = runtime.block_on(import_into(
        &mut session,
        path,
        &ImportOptions::default(),
        &mut |_| {},
    ));
    if let Ok(report) = result {
        check_report(&report, session.rows);
    }
}

fn check_report(report: &ImportReport, rows_written: usize) {
    let files: u64 = report.files.iter().map(|f| f.rows).sum();
    assert_eq!(files, report.rows, "per-file rows do not add up");
    let stored: u64 = report.files.iter().map(|f| f.stored).sum();
    assert_eq!(
        stored, report.stored,
        "per-file stored records do not add up"
    );
    assert!(
        report.stored <= report.rows,
        "more records stored than read"
    );
    assert!(u64::try_from(rows_written).unwrap_or(u64::MAX) >= report.stored);
}

// The targets' bodies, one module each: `fuzz_targets/<name>.rs` hands libFuzzer's input to
// `<name>::run`, and `make test` runs the same functions over the committed corpus and
// pseudo-random inputs (tests/tests/fuzz_corpus.rs includes this file), so a change that
// breaks a target's property fails the ordinary test suite too. Paths are explicit, so this
// file works both as the fuzz crate's root and as a module of that test.
#[path = "targets/hsds_csv.rs"]
pub mod hsds_csv;
#[path = "targets/hsds_zip.rs"]
pub mod hsds_zip;
#[path = "targets/page_token.rs"]
pub mod page_token;
#[path = "targets/protocol.rs"]
pub mod protocol;
#[path = "targets/schedule.rs"]
pub mod schedule;
#[path = "targets/validators.rs"]
pub mod validators;
