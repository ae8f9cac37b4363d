//! `relay audit`: check a service's tamper-evident audit trail, and export it for a SIEM.
//!
//! `verify` walks the chain from its anchor and prints `OK` with the count, or the first
//! record that breaks it (edited, inserted, deleted, reordered) and exits 1. `export`
//! writes every record (all fields, hashes included) as JSON lines on stdout. Both read the
//! service's own schema on PostgreSQL (or the SQLite file of `relay dev`) and write nothing.

use std::{io::Write, process::ExitCode};

use clap::{Subcommand, ValueEnum};
use relay_runtime::{audit::AuditSink, storage::Database};
use secrecy::SecretString;

/// A service whose trail is read.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceName {
    /// relay-intake (schema `intake`).
    Intake,
    /// relay-routing (schema `routing`).
    Routing,
    /// relay-availability (schema `availability`).
    Availability,
    /// relay-directory (schema `directory`).
    Directory,
}

impl ServiceName {
    fn schema(self) -> &'static str {
        match self {
            Self::Intake => relay_intake::STORAGE.schema,
            Self::Routing => relay_routing::STORAGE.schema,
            Self::Availability => relay_availability::STORAGE.schema,
            Self::Directory => relay_directory::STORAGE.schema,
        }
    }
}

/// `relay audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check a service's audit chain from its anchor: prints `OK <n> records` or the first
    /// broken record (`seq N: edited|inserted|deleted|reordered`) and exits 1.
    Verify {
        /// The service whose trail is checked.
        #[arg(long, value_enum)]
        service: ServiceName,
        /// The service's database: `postgres://...` or `sqlite://path`.
        #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Write a service's audit records as JSON lines (one record a line, every field
    /// including seq, prev_hash and hash) to stdout, in seq order.
    Export {
        /// The service whose trail is exported.
        #[arg(long, value_enum)]
        service: ServiceName,
        /// The service's database: `postgres://...` or `sqlite://path`.
        #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}

/// Runs `command`.
pub fn run(command: AuditCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay audit: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            AuditCommand::Verify {
                service,
                database_url,
            } => verify(service, database_url).await,
            AuditCommand::Export {
                service,
                database_url,
                since,
                until,
            } => export(service, database_url, since.as_deref(), until.as_deref()).await,
        }
    });
    outcome.unwrap_or_else(|error| {
        eprintln!("relay audit: {error:#}");
        ExitCode::FAILURE
    })
}

fn sink(service: ServiceName, database_url: String) -> anyhow::Result<AuditSink> {
    let url = SecretString::from(database_url);
    Ok(AuditSink::new(Database::open(&url, service.schema(), 2)?))
}

async fn verify(service: ServiceName, database_url: String) -> anyhow::Result<ExitCode> {
    let sink = sink(service, database_url)?;
    let outcome = sink.verify().await;
    sink.database().close().await;
    match outcome? {
        Ok(verified) => {
            println!(
                "OK {} records (seq {} to {}, anchored at seq {})",
                verified.records,
                verified.anchor_seq + 1,
                verified.last_seq,
                verified.anchor_seq
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(finding) => {
            println!("{finding}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn micros(flag: &str, value: Option<&str>, default: i64) -> anyhow::Result<i64> {
    match value {
        None => Ok(default),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|time| time.timestamp_micros())
            .map_err(|error| anyhow::anyhow!("{flag} {text:?} is not an RFC 3339 time: {error}")),
    }
}

async fn export(
    service: ServiceName,
    database_url: String,
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let window = (
        micros("--since", since, i64::MIN)?,
        micros("--until", until, i64::MAX)?,
    );
    let sink = sink(service, database_url)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let outcome = sink
        .walk(i64::MIN, window, |entry| -> anyhow::Result<()> {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
            Ok(())
        })
        .await;
    sink.database().close().await;
    outcome?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
