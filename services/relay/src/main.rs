//! `relay`: the command-line tool around the four Relay services.
//!
//! Each subcommand below is part of the plan in DESIGN.md.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod audit;
mod dev;
mod report;

mod cli;
use cli::*;
mod directory;
use directory::*;

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
        Command::Audit { command } => audit::run(command),
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
