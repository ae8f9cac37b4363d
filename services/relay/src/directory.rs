//! `relay directory import` and `relay directory export`.

use super::*;

/// A single-threaded runtime for a `relay directory` command (the error printed).
pub(super) fn directory_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("relay: cannot start: {error}");
            None
        }
    }
}

/// The directory database at `database_url`, migrated (so an empty or older one works).
pub(super) async fn migrated_backend(
    database_url: String,
) -> anyhow::Result<relay_directory::Backend> {
    let database = relay_directory::STORAGE
        .migrated(&secrecy::SecretString::from(database_url), 2)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(relay_directory::Backend::on(&database))
}

/// `relay directory export`: migrates the database (so an empty or older one works), then
/// writes the package and one line per file.
pub(super) fn directory_export(package: &std::path::Path, database_url: String) -> ExitCode {
    use relay_directory::{Backend, export};

    let Some(runtime) = directory_runtime() else {
        return ExitCode::FAILURE;
    };
    let result: anyhow::Result<export::ExportReport> = runtime.block_on(async {
        let backend = migrated_backend(database_url).await?;
        let report = match &backend {
            Backend::Postgres(store) => export::export(store, package).await,
            Backend::Sqlite(store) => export::export(store, package).await,
        }?;
        Ok(report)
    });
    match result {
        Ok(report) => {
            for (file, rows) in &report.files {
                println!("{file:<28} {rows:>9} rows");
            }
            println!("exported HSDS 3.0 package to {}", package.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay: export failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `relay directory import`: migrates the database, imports the package in one transaction
/// with a progress bar, and prints every rejected row as `file:line: reason`.
pub(super) fn directory_import(
    package: &std::path::Path,
    database_url: String,
    time_zone: String,
) -> ExitCode {
    use relay_directory::{Backend, import};

    if relay_directory::schedule::parse_time_zone(&time_zone).is_none() {
        eprintln!("relay: --time-zone `{time_zone}` is not an IANA time zone name");
        return ExitCode::FAILURE;
    }
    let Some(runtime) = directory_runtime() else {
        return ExitCode::FAILURE;
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let options = import::ImportOptions {
        default_time_zone: time_zone,
    };
    let result: anyhow::Result<import::ImportReport> = runtime.block_on(async {
        let backend = migrated_backend(database_url).await?;
        let mut progress = |p: import::Progress<'_>| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{} ({} rows)", p.file, p.rows));
        };
        let report = match &backend {
            Backend::Postgres(store) => {
                import::import(store, package, &options, &mut progress).await
            }
            Backend::Sqlite(store) => import::import(store, package, &options, &mut progress).await,
        }?;
        Ok(report)
    });
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            for rejection in &report.rejections {
                println!("rejected {rejection}");
            }
            if report.rejected > report.rejections.len() as u64 {
                println!(
                    "... and {} more rejected rows",
                    report.rejected - report.rejections.len() as u64
                );
            }
            for file in &report.files {
                println!(
                    "{:<28} {:>9} rows {:>9} stored {:>7} rejected {:>7} ignored",
                    file.file, file.rows, file.stored, file.rejected, file.ignored
                );
            }
            println!(
                "imported {} of {} rows from {}; {} rejected",
                report.stored,
                report.rows,
                package.display(),
                report.rejected
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay: import failed, nothing was imported: {error}");
            ExitCode::FAILURE
        }
    }
}
