//! `relay report`: a program's figures for a period, from intake's database, as one
//! self-contained HTML file (headline figures, tables and charts drawn with plotters' SVG
//! backend, inlined), or as CSV or JSON rows (one per metric, breakdown key and period).
//!
//! The figures come from `relay_intake::report`, the same code that serves
//! `relay.reports.v1.ReportService/GetProgramReport`; their definitions are in
//! docs/program-metrics.md.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use relay_intake::report::{self, Report, ReportRequest, WEEKDAYS};
use relay_proto::reports::ReportFigure;

mod charts;
use charts::*;
mod html;
use html::*;

/// What `relay report` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One self-contained HTML page with charts.
    Html,
    /// One row per metric, breakdown key and period.
    Csv,
    /// The same rows as a JSON document.
    Json,
}

/// The arguments of `relay report`, checked.
#[derive(Debug)]
pub struct Options {
    /// Start of the period, inclusive.
    pub from: DateTime<Utc>,
    /// End of the period, exclusive.
    pub to: DateTime<Utc>,
    /// One region, or empty for all.
    pub region: String,
    /// intake's database.
    pub database_url: String,
    /// The zone of the calendar breakdowns.
    pub time_zone: Tz,
    /// What to write.
    pub format: Format,
}

/// Parses an RFC 3339 time given on the command line.
///
/// # Errors
/// When it is not RFC 3339.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("{flag} `{text}` is not an RFC 3339 time such as 2026-03-01T00:00:00Z")
        })
}

/// The time zone of a region's report from an intake configuration file
/// (`[intake.programs.<region>] time_zone`), UTC when the file or the key is absent.
///
/// # Errors
/// When the file cannot be read or is not TOML.
pub fn time_zone_from_config(config: Option<&Path>, region: &str) -> anyhow::Result<Tz> {
    let Some(path) = config else {
        return Ok(Tz::UTC);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let zone = value
        .get("intake")
        .and_then(|v| v.get("programs"))
        .and_then(|v| v.get(region))
        .and_then(|v| v.get("time_zone"))
        .and_then(toml::Value::as_str);
    match zone {
        None => Ok(Tz::UTC),
        Some(zone) => zone.parse().map_err(|_| {
            anyhow::anyhow!("intake.programs.{region}.time_zone `{zone}` is not an IANA time zone")
        }),
    }
}

/// Computes the report from intake's database.
///
/// # Errors
/// When the period is invalid, or the database cannot be opened or read.
pub async fn compute(options: &Options) -> anyhow::Result<Report> {
    let mut v = relay_runtime::validate::Violations::new();
    relay_intake::report_api::check_period(&mut v, options.from, options.to);
    v.optional_id("region", &options.region);
    if let Err(error) = v.finish() {
        bail!(
            "{}",
            error
                .to_string()
                .replace("to_time", "--to")
                .replace("from_time", "--from")
        );
    }
    let config = relay_runtime::Config::builder("intake")
        .set("insecure_dev", true)
        .set("database_url", options.database_url.as_str())
        .set("database.max_connections", 2)
        .set("database.migrate_on_start", false)
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (store, _) = relay_intake::open_store(&config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open intake's database: {e}"))?;
    let request = ReportRequest {
        from: options.from,
        to: options.to,
        region: options.region.clone(),
        time_zone: options.time_zone,
    };
    Ok(report::compute(store.as_ref(), request, Utc::now()).await?)
}

/// Writes `report` in `format` to `out`.
///
/// # Errors
/// When the file cannot be written or a chart cannot be drawn.
pub fn write(report: &Report, format: Format, out: &Path) -> anyhow::Result<()> {
    let text = match format {
        Format::Html => html(report)?,
        Format::Csv => csv(report)?,
        Format::Json => json(report)?,
    };
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))
}

fn bucket_text(figure: &ReportFigure) -> String {
    figure
        .bucket_start_time
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn csv(report: &Report) -> anyhow::Result<String> {
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "from",
        "to",
        "region",
        "time_zone",
        "metric",
        "breakdown",
        "key",
        "bucket_start",
        "value",
        "unit",
        "sample_size",
        "time_basis",
    ])?;
    let (from, to) = (
        report.request.from.to_rfc3339(),
        report.request.to.to_rfc3339(),
    );
    for f in &report.figures {
        writer.write_record([
            from.as_str(),
            to.as_str(),
            report.request.region.as_str(),
            report.request.time_zone.name(),
            f.metric.as_str(),
            f.breakdown.as_str(),
            f.key.as_str(),
            bucket_text(f).as_str(),
            f.value.to_string().as_str(),
            f.unit.as_str(),
            f.sample_size.to_string().as_str(),
            f.time_basis.as_str(),
        ])?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}

fn json(report: &Report) -> anyhow::Result<String> {
    let figures: Vec<serde_json::Value> = report
        .figures
        .iter()
        .map(|f| {
            serde_json::json!({
                "metric": f.metric,
                "breakdown": f.breakdown,
                "key": f.key,
                "bucket_start": bucket_text(f),
                "value": f.value,
                "unit": f.unit,
                "sample_size": f.sample_size,
                "time_basis": f.time_basis,
            })
        })
        .collect();
    let document = serde_json::json!({
        "from": report.request.from.to_rfc3339(),
        "to": report.request.to.to_rfc3339(),
        "region": report.request.region,
        "time_zone": report.request.time_zone.name(),
        "bucket": report.bucket,
        "created": report.create_time.to_rfc3339(),
        "figures": figures,
    });
    Ok(serde_json::to_string_pretty(&document)? + "\n")
}
