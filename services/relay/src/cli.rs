//! The command line of `relay`: its subcommands and their arguments (clap).

use super::*;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Relay routes 911 calls to community responder teams. This tool runs the suite locally, drives it with a simulated CAD and fleet, and loads the referral directory.",
    long_about = None
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// Check a service's tamper-evident audit trail, or export it as JSON lines.
    Audit {
        #[command(subcommand)]
        command: crate::audit::AuditCommand,
    },
    /// Bearer tokens for Relay's services.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Sign a token (ES256) with a signing key file and print it: for development and tests
    /// (a deployment's tokens come from its identity provider). The services verify it with
    /// the key's JWKS (RELAY_AUTH_JWKS), issuer and audience.
    Issue(TokenArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct TokenArgs {
    /// The P-256 signing key, PKCS#8 PEM.
    #[arg(long, value_name = "FILE")]
    pub(super) signing_key: PathBuf,
    /// The key id (`kid`) the JWKS gives that key.
    #[arg(long, default_value = relay_runtime::security::pki::DEV_KID)]
    pub(super) kid: String,
    /// `iss`: what the services expect in RELAY_AUTH_ISSUER.
    #[arg(long, default_value = relay_runtime::security::pki::DEV_ISSUER)]
    pub(super) issuer: String,
    /// `aud`: what the services expect in RELAY_AUTH_AUDIENCE.
    #[arg(long, default_value = relay_runtime::security::pki::DEV_AUDIENCE)]
    pub(super) audience: String,
    /// `sub`: who the bearer is.
    #[arg(long, default_value = "relay-dev")]
    pub(super) subject: String,
    /// A scope (`incidents.submit`, ...); repeat for more. `all`: every scope.
    #[arg(long = "scope", required = true)]
    pub(super) scopes: Vec<String>,
    /// Bind the token to one CAD system's incidents.
    #[arg(long)]
    pub(super) cad_system: Option<String>,
    /// Bind the token to one team (a responder's device).
    #[arg(long)]
    pub(super) team_id: Option<String>,
    /// Limit the token to a region; repeat for more.
    #[arg(long = "region")]
    pub(super) regions: Vec<String>,
    /// How long the token is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub(super) lifetime_seconds: i64,
}

/// Simulated time, shared by `relay dev` and `relay simulate`: the clock reads `origin` at
/// the wall instant `anchor` and runs `speed` times as fast (RELAY_CLOCK__* for a service
/// process; development only).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ClockArgs {
    /// Run every time rule (escalation, review waits, recommendation expiry, stale
    /// positions, program hours, shift ends) this many times faster than the wall clock.
    #[arg(long)]
    pub(super) clock_speed: Option<f64>,
    /// The simulated time at the anchor, RFC 3339 (default: when `relay dev` starts).
    #[arg(long, value_parser = parse_instant)]
    pub(super) clock_origin: Option<chrono::DateTime<chrono::Utc>>,
    /// The wall instant at which the clock reads the origin, RFC 3339 (default: the origin).
    #[arg(long, value_parser = parse_instant)]
    pub(super) clock_anchor: Option<chrono::DateTime<chrono::Utc>>,
}

impl ClockArgs {
    pub(super) fn settings(&self) -> relay_runtime::config::ClockSettings {
        relay_runtime::config::ClockSettings {
            speed: self.clock_speed,
            origin: self.clock_origin,
            anchor: self.clock_anchor,
        }
    }
}

pub(super) fn parse_instant(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2026-03-02T08:00:00Z: {e}"))
}

#[derive(Debug, clap::Args)]
pub(super) struct SimulateArgs {
    /// Intake endpoint of the deployment to drive.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(super) intake: String,
    /// Availability endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub(super) availability: String,
    /// Directory endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50054")]
    pub(super) directory: String,
    /// The CA that the deployment's certificates chain to, PEM: calls go over TLS (an
    /// `http://` endpoint is called as `https://`). `relay dev` prints its own.
    #[arg(long, env = "RELAY_CA_FILE", value_name = "FILE")]
    pub(super) ca_file: Option<PathBuf>,
    /// The bearer token sent with every call (it needs the scopes of submitting, reading and
    /// watching incidents, reporting team status and reading the directory). `relay dev`
    /// prints one.
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// Seed of the synthetic metro area, fleet and call mix.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Simulated seconds per wall-clock second (60: an hour in a minute).
    #[arg(long, default_value_t = 60.0)]
    pub(super) speed: f64,
    /// Simulated minutes to run.
    #[arg(long, default_value_t = 240)]
    pub(super) minutes: u64,
    /// Teams on shift.
    #[arg(long, default_value_t = 8)]
    pub(super) teams: usize,
    /// Mean calls per simulated hour.
    #[arg(long, default_value_t = 12.0)]
    pub(super) calls_per_hour: f64,
    /// No live progress display (for logs and tests).
    #[arg(long)]
    pub(super) no_progress: bool,
    /// The deployment runs on simulated time (`relay dev --clock-speed S`): its origin, as
    /// `relay dev` printed it. The simulator then stamps calls, positions and shift ends in
    /// that time, at `--speed` (which must be the deployment's clock speed). Unset: the
    /// deployment runs on the wall clock.
    #[arg(long, value_parser = parse_instant)]
    pub(super) clock_origin: Option<chrono::DateTime<chrono::Utc>>,
    /// The wall instant of the origin, as `relay dev` printed it (default: the origin).
    #[arg(long, value_parser = parse_instant, requires = "clock_origin")]
    pub(super) clock_anchor: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, clap::Args)]
pub(super) struct ReportArgs {
    /// Start of the period, inclusive, RFC 3339 (calls received at or after it).
    #[arg(long)]
    pub(super) from: String,
    /// End of the period, exclusive, RFC 3339; at most 366 days after --from.
    #[arg(long)]
    pub(super) to: String,
    /// Report on this region only (default: every region together).
    #[arg(long, default_value = "")]
    pub(super) region: String,
    /// Intake's database: `postgres://...` or `sqlite://path`.
    #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
    pub(super) database_url: String,
    /// Intake's configuration file, for the region's `[intake.programs.<region>] time_zone`
    /// (hours of day and days are in that zone; UTC without it).
    #[arg(long)]
    pub(super) config: Option<PathBuf>,
    /// The file to write.
    #[arg(long, default_value = "report.html")]
    pub(super) out: PathBuf,
    /// html: one page with charts; csv, json: one row per metric, breakdown and period.
    #[arg(long, value_enum, default_value = "html")]
    pub(super) format: report::Format,
}

#[derive(Debug, Subcommand)]
pub(super) enum DirectoryCommand {
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
