//! `relay`: the command-line tool around the four Relay services.
//!
//! Each subcommand below is part of the plan in DESIGN.md. Those not built yet say so and exit
//! with status 1 rather than pretending to work.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

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
    /// needed), each on its own loopback port, until Ctrl-C.
    Dev {
        /// First of the four ports (intake, availability, routing, directory).
        #[arg(long, default_value_t = 50051)]
        port_base: u16,
        /// Keep state in this folder between runs (default: a temporary folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Drive a Relay deployment through its public API with a seeded CAD and fleet
    /// simulator, then print a report.
    Simulate {
        /// Intake endpoint of the deployment to drive.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        intake: String,
        /// Seed of the synthetic metro area, fleet and call mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How much faster than real time simulated time runs.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// Manage the referral directory.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DirectoryCommand {
    /// Import an Open Referral HSDS tabular data package (3.0, or the 1.x/2.0 layout) from a
    /// folder or a .zip, all or nothing, with a per-row report of what was rejected.
    Import {
        /// The data package folder or .zip file.
        package: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, issue) = match cli.command {
        Command::Dev { .. } => ("relay dev", 7),
        Command::Simulate { .. } => ("relay simulate", 7),
        Command::Directory {
            command: DirectoryCommand::Import { .. },
        } => ("relay directory import", 6),
    };
    eprintln!("relay: `{name}` is not built yet (tracked in issue #{issue})");
    ExitCode::FAILURE
}
