//! `relay`: the command-line tool around the four Relay services.
//!
//! Each subcommand below is part of the plan in DESIGN.md.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod dev;
mod report;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Relay routes 911 calls to community responder teams. This tool runs the suite locally, drives it with a simulated CAD and fleet, and loads the referral directory.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all four services in one process on embedded storage (no Redis or PostgreSQL
    /// needed), each on its own loopback port, until Ctrl-C. They serve TLS with a local CA
    /// and check bearer tokens; the CA's path and a ready token are printed
    /// (`export RELAY_CA_FILE=...`, `export RELAY_TOKEN=...`) for `relay simulate` and clients.
    Dev {
        /// First of the four ports (intake, availability, routing, directory).
        #[arg(long, default_value_t = 50051)]
        port_base: u16,
        /// Keep state in this folder between runs (default: a temporary folder). The CA,
        /// keys and certificates are kept there too, so tokens stay valid across runs.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Serve plaintext gRPC and ask no credential (a warning says so): for tools that
        /// cannot do TLS. Never on a shared network.
        #[arg(long)]
        insecure: bool,
        /// Each caller's rate limit, in requests per second, with a burst of twice that
        /// (`[security.limits] requests_per_second` and `burst` of a deployment; default 500
        /// and 1000). The printed dev token is not limited by it (it has the service class):
        /// a low value lets a client see RESOURCE_EXHAUSTED with a narrower token.
        #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
        rate_limit: Option<u32>,
        #[command(flatten)]
        clock: ClockArgs,
    },
    /// Drive a Relay deployment through its public API with a seeded CAD and fleet
    /// simulator (teams on shifts reporting positions, calls with a realistic mix of types
    /// and risk flags, each followed to its close), then print a report.
    Simulate(SimulateArgs),
    /// Write a community response program's report for a period from intake's database:
    /// one self-contained HTML page (headline figures, charts, tables), or every figure as
    /// CSV or JSON rows. Definitions: docs/program-metrics.md.
    Report(ReportArgs),
    /// Manage the referral directory.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Bearer tokens for Relay's services.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token (ES256) with a signing key file and print it: for development and tests
    /// (a deployment's tokens come from its identity provider). The services verify it with
    /// the key's JWKS (RELAY_AUTH_JWKS), issuer and audience.
    Issue(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The P-256 signing key, PKCS#8 PEM.
    #[arg(long, value_name = "FILE")]
    signing_key: PathBuf,
    /// The key id (`kid`) the JWKS gives that key.
    #[arg(long, default_value = relay_runtime::security::pki::DEV_KID)]
    kid: String,
    /// `iss`: what the services expect in RELAY_AUTH_ISSUER.
    #[arg(long, default_value = relay_runtime::security::pki::DEV_ISSUER)]
    issuer: String,
    /// `aud`: what the services expect in RELAY_AUTH_AUDIENCE.
    #[arg(long, default_value = relay_runtime::security::pki::DEV_AUDIENCE)]
    audience: String,
    /// `sub`: who the bearer is.
    #[arg(long, default_value = "relay-dev")]
    subject: String,
    /// A scope (`incidents.submit`, ...); repeat for more. `all`: every scope.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// Bind the token to one CAD system's incidents.
    #[arg(long)]
    cad_system: Option<String>,
    /// Bind the token to one team (a responder's device).
    #[arg(long)]
    team_id: Option<String>,
    /// Limit the token to a region; repeat for more.
    #[arg(long = "region")]
    regions: Vec<String>,
    /// How long the token is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime_seconds: i64,
}

/// Simulated time, shared by `relay dev` and `relay simulate`: the clock reads `origin` at
/// the wall instant `anchor` and runs `speed` times as fast (RELAY_CLOCK__* for a service
/// process; development only).
#[derive(Debug, Clone, clap::Args)]
struct ClockArgs {
    /// Run every time rule (escalation, review waits, recommendation expiry, stale
    /// positions, program hours, shift ends) this many times faster than the wall clock.
    #[arg(long)]
    clock_speed: Option<f64>,
    /// The simulated time at the anchor, RFC 3339 (default: when `relay dev` starts).
    #[arg(long, value_parser = parse_instant)]
    clock_origin: Option<chrono::DateTime<chrono::Utc>>,
    /// The wall instant at which the clock reads the origin, RFC 3339 (default: the origin).
    #[arg(long, value_parser = parse_instant)]
    clock_anchor: Option<chrono::DateTime<chrono::Utc>>,
}

impl ClockArgs {
    fn settings(&self) -> relay_runtime::config::ClockSettings {
        relay_runtime::config::ClockSettings {
            speed: self.clock_speed,
            origin: self.clock_origin,
            anchor: self.clock_anchor,
        }
    }
}

fn parse_instant(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2026-03-02T08:00:00Z: {e}"))
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Intake endpoint of the deployment to drive.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    intake: String,
    /// Availability endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    availability: String,
    /// Directory endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50054")]
    directory: String,
    /// The CA that the deployment's certificates chain to, PEM: calls go over TLS (an
    /// `http://` endpoint is called as `https://`). `relay dev` prints its own.
    #[arg(long, env = "RELAY_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The bearer token sent with every call (it needs the scopes of submitting, reading and
    /// watching incidents, reporting team status and reading the directory). `relay dev`
    /// prints one.
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seed of the synthetic metro area, fleet and call mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per wall-clock second (60: an hour in a minute).
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Simulated minutes to run.
    #[arg(long, default_value_t = 240)]
    minutes: u64,
    /// Teams on shift.
    #[arg(long, default_value_t = 8)]
    teams: usize,
    /// Mean calls per simulated hour.
    #[arg(long, default_value_t = 12.0)]
    calls_per_hour: f64,
    /// No live progress display (for logs and tests).
    #[arg(long)]
    no_progress: bool,
    /// The deployment runs on simulated time (`relay dev --clock-speed S`): its origin, as
    /// `relay dev` printed it. The simulator then stamps calls, positions and shift ends in
    /// that time, at `--speed` (which must be the deployment's clock speed). Unset: the
    /// deployment runs on the wall clock.
    #[arg(long, value_parser = parse_instant)]
    clock_origin: Option<chrono::DateTime<chrono::Utc>>,
    /// The wall instant of the origin, as `relay dev` printed it (default: the origin).
    #[arg(long, value_parser = parse_instant, requires = "clock_origin")]
    clock_anchor: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// Start of the period, inclusive, RFC 3339 (calls received at or after it).
    #[arg(long)]
    from: String,
    /// End of the period, exclusive, RFC 3339; at most 366 days after --from.
    #[arg(long)]
    to: String,
    /// Report on this region only (default: every region together).
    #[arg(long, default_value = "")]
    region: String,
    /// Intake's database: `postgres://...` or `sqlite://path`.
    #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Intake's configuration file, for the region's `[intake.programs.<region>] time_zone`
    /// (hours of day and days are in that zone; UTC without it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
    /// html: one page with charts; csv, json: one row per metric, breakdown and period.
    #[arg(long, value_enum, default_value = "html")]
    format: report::Format,
}

#[derive(Debug, Subcommand)]
enum DirectoryCommand {
    /// Import an Open Referral HSDS tabular data package (3.0, or the 1.x/2.0 layout) from a
    /// folder or a .zip, all or nothing, with a per-row report of what was rejected.
    Import {
        /// The data package folder or .zip file.
        package: PathBuf,
        /// The database to import into: `postgres://...` or `sqlite://path`.
        #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// IANA time zone of locations whose package gives none (HSDS 3.0 locations have no
        /// time zone column).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
    },
    /// Export the whole directory as an HSDS 3.0 tabular data package (datapackage.json and
    /// CSVs, with live capacity as the HSDS 3.1 draft's service_capacity) to a .zip or a
    /// folder. With `import`, the upgrade path from an HSDS 1.x package to 3.0.
    Export {
        /// The .zip file or folder to write (a folder is created if needed).
        package: PathBuf,
        /// The database to export: `postgres://...` or `sqlite://path`.
        #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Write a seeded synthetic HSDS 3.0 package of a metro area's services (the same metro
    /// `relay simulate` uses), for demos and load tests.
    Generate {
        /// The folder to write the package to (created if needed).
        folder: PathBuf,
        /// How many services.
        #[arg(long, default_value_t = 2_000)]
        services: usize,
        /// Seed of the generated directory.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `relay report`: computes the figures and writes the file, printing its path.
fn program_report(args: ReportArgs) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let options = report::Options {
            from: report::parse_time("--from", &args.from)?,
            to: report::parse_time("--to", &args.to)?,
            time_zone: report::time_zone_from_config(args.config.as_deref(), &args.region)?,
            region: args.region.clone(),
            database_url: args.database_url.clone(),
            format: args.format,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let computed = runtime.block_on(report::compute(&options))?;
        report::write(&computed, options.format, &args.out)?;
        Ok(())
    };
    match run() {
        Ok(()) => {
            println!("report written to {}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay: report failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate(args) => simulate(&args),
        Command::Report(args) => program_report(args),
        Command::Dev {
            port_base,
            data_dir,
            insecure,
            rate_limit,
            clock,
        } => dev(dev::DevOptions {
            port_base,
            data_dir,
            clock: clock.settings(),
            insecure,
            rate_limit,
        }),
        Command::Token {
            command: TokenCommand::Issue(args),
        } => issue_token(&args),
        Command::Directory {
            command:
                DirectoryCommand::Import {
                    package,
                    database_url,
                    time_zone,
                },
        } => directory_import(&package, database_url, time_zone),
        Command::Directory {
            command:
                DirectoryCommand::Export {
                    package,
                    database_url,
                },
        } => directory_export(&package, database_url),
        Command::Directory {
            command:
                DirectoryCommand::Generate {
                    folder,
                    services,
                    seed,
                },
        } => match relay_directory::generate::write_package(&folder, services, seed) {
            Ok(written) => {
                println!(
                    "wrote {} services to {} (time zone America/Los_Angeles)",
                    written.len(),
                    folder.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("relay: cannot write {}: {error}", folder.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn issue_token(args: &TokenArgs) -> ExitCode {
    use relay_runtime::security::pki::{TokenClaims, TokenSigner, all_scopes};
    let pem = match std::fs::read_to_string(&args.signing_key) {
        Ok(pem) => pem,
        Err(error) => {
            eprintln!("relay: {}: {error}", args.signing_key.display());
            return ExitCode::from(2);
        }
    };
    let scopes = if args.scopes.iter().any(|scope| scope == "all") {
        all_scopes()
    } else {
        args.scopes.clone()
    };
    let claims = TokenClaims {
        subject: args.subject.clone(),
        scopes,
        cad_system: args.cad_system.clone(),
        team_id: args.team_id.clone(),
        regions: args.regions.clone(),
    };
    let token = TokenSigner::from_pem(&pem, &args.kid).and_then(|signer| {
        signer.issue(
            &args.issuer,
            &args.audience,
            &claims,
            0,
            args.lifetime_seconds,
        )
    });
    match token {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay: {error}");
            ExitCode::from(2)
        }
    }
}

fn dev(options: dev::DevOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay dev: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dev::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relay dev: {error}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(args: &SimulateArgs) -> ExitCode {
    use relay_simulator::{
        run::{Endpoints, RunOptions, run},
        scenario::{ScenarioConfig, generate},
    };
    if !(args.speed.is_finite() && args.speed > 0.0) {
        eprintln!("relay simulate: --speed must be a number greater than 0");
        return ExitCode::from(2);
    }
    let scenario = generate(&ScenarioConfig {
        seed: args.seed,
        teams: args.teams,
        calls_per_hour: args.calls_per_hour,
        duration_seconds: args.minutes * 60,
        ..ScenarioConfig::default()
    });
    let endpoints = Endpoints {
        intake: args.intake.clone(),
        availability: args.availability.clone(),
        directory: args.directory.clone(),
    };
    let ca_pem = match &args.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(error) => {
                eprintln!("relay simulate: --ca-file {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let credentials = match relay_simulator::run::Credentials::new(ca_pem, args.token.clone()) {
        Ok(credentials) => credentials,
        Err(error) => {
            eprintln!("relay simulate: {error}");
            return ExitCode::from(2);
        }
    };
    let clock = match args.clock_origin {
        Some(origin) => match relay_runtime::clock::ScaledClock::new(
            origin,
            args.clock_anchor.unwrap_or(origin),
            args.speed,
        ) {
            Ok(clock) => Some(clock),
            Err(error) => {
                eprintln!("relay simulate: {error}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let options = RunOptions {
        speed: args.speed,
        progress: !args.no_progress,
        clock,
        credentials,
        ..RunOptions::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay simulate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&scenario, &endpoints, options)) {
        Ok((observed, failures)) => {
            print!("{}", observed.report());
            println!("counts: {}", observed.counts());
            if !failures.is_empty() {
                println!("\nfailed calls (first {}):", failures.len());
                for failure in &failures {
                    println!("  {failure}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay simulate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A single-threaded runtime for a `relay directory` command (the error printed).
fn directory_runtime() -> Option<tokio::runtime::Runtime> {
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
async fn migrated_backend(database_url: String) -> anyhow::Result<relay_directory::Backend> {
    let database = relay_directory::STORAGE
        .migrated(&secrecy::SecretString::from(database_url), 2)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(relay_directory::Backend::on(&database))
}

/// `relay directory export`: migrates the database (so an empty or older one works), then
/// writes the package and one line per file.
fn directory_export(package: &std::path::Path, database_url: String) -> ExitCode {
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
fn directory_import(
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
