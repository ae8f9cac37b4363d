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

// ---- HTML ----------------------------------------------------------------------------------

/// Plain words for the unserved keys of docs/program-metrics.md.
fn reason_label(key: &str) -> &str {
    match key {
        "NO_TEAMS_IN_REGION" => "No team on duty",
        "NO_TEAM_IN_RANGE" => "No team close enough",
        "ALL_BUSY" => "All teams busy",
        "MISSING_CAPABILITY" => "No team with the skills needed",
        "ALL_POSITIONS_STALE" => "Team locations unknown",
        "SHIFT_ENDING" => "Teams' shifts ending",
        "OUTSIDE_PROGRAM_HOURS" => "Outside program hours",
        "ROUTING_REFUSED" => "Routing refused the call",
        "REVIEW_TIMEOUT" => "No dispatcher review in time",
        "RECOMMENDATION_EXPIRED" => "Recommendation not confirmed",
        "CANCELLED_BEFORE_ASSIGNMENT" => "Cancelled before a team was sent",
        "ESCALATED" => "Escalated (no reason recorded)",
        "CLOSED_WITHOUT_ASSIGNMENT" => "Closed without a team",
        "NOT_YET_ROUTED" => "Still waiting for routing",
        other => other,
    }
}

fn segment_label(metric: &str) -> &'static str {
    match metric {
        "received_to_triaged" => "Call received → triaged",
        "received_to_assigned" => "Call received → team assigned",
        "received_to_dispatched" => "Call received → team dispatched",
        "received_to_en_route" => "Call received → team en route",
        "received_to_on_scene" => "Call received → team on scene",
        "on_scene_to_cleared" => "Team on scene → cleared",
        _ => "",
    }
}

/// Plain words for a figure's time basis.
fn basis_label(basis: &str) -> &'static str {
    match basis {
        "source" => "CAD and teams",
        "mixed" => "CAD and Relay",
        "record" => "Relay",
        _ => "",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn duration_text(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

fn percent(value: f64) -> String {
    format!("{:.0}%", value * 100.0)
}

fn value_of(report: &Report, metric: &str, breakdown: &str, key: &str) -> (f64, i64) {
    report
        .figure(metric, breakdown, key)
        .map_or((0.0, 0), |f| (f.value, f.sample_size))
}

const FONT: &str = "sans-serif";
const RECEIVED: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);
const ELIGIBLE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const SERVED: RGBColor = RGBColor(0x2f, 0x85, 0x5a);
const UNSERVED: RGBColor = RGBColor(0xc0, 0x56, 0x21);
const P90: RGBColor = RGBColor(0xd6, 0x9e, 0x2e);

type Svg = String;

fn draw_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw a chart: {error}")
}

/// One series of bars: its name, color and one value per category.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<f64>,
}

/// A bar chart: one group of bars per category (one bar per series), with a legend when there
/// are several series, and `empty` written across the plot when every value is zero.
struct BarChart<'a> {
    size: (u32, u32),
    categories: &'a [String],
    series: &'a [Series<'a>],
    /// Categories down the side (first at the top) and bars to the right; otherwise
    /// categories along the bottom and bars upward.
    horizontal: bool,
    /// What the value axis measures.
    value_desc: &'a str,
    /// What the category axis holds (empty: nothing written).
    category_desc: &'a str,
    /// Writes each bar's value at its end.
    value_label: Option<&'a dyn Fn(f64) -> String>,
    empty: &'a str,
}

impl BarChart<'_> {
    fn draw(&self) -> anyhow::Result<Svg> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            root.fill(&WHITE).map_err(draw_error)?;
            let max = self
                .series
                .iter()
                .flat_map(|s| s.values.iter().copied())
                .fold(0.0_f64, f64::max);
            let n = self.categories.len().max(1);
            #[allow(clippy::cast_precision_loss)]
            let categories = -0.5..(n as f64 - 0.5);
            // Headroom past the longest bar for the legend or the value labels.
            // (at least 0..5, so that an empty chart's whole-number ticks do not repeat).
            let values = 0.0..(max * 1.35).ceil().max(5.0);
            let horizontal = self.horizontal;
            // Where category `i` sits on its axis, and a (category, value) point as (x, y).
            #[allow(clippy::cast_precision_loss)]
            let slot = move |i: usize| {
                if horizontal {
                    (n - 1 - i) as f64
                } else {
                    i as f64
                }
            };
            let point = move |c: f64, v: f64| if horizontal { (v, c) } else { (c, v) };
            let mut builder = ChartBuilder::on(&root);
            builder.margin(12);
            let mut chart = if horizontal {
                builder.x_label_area_size(40).y_label_area_size(250);
                builder.build_cartesian_2d(values, categories)
            } else {
                builder.x_label_area_size(46).y_label_area_size(56);
                builder.build_cartesian_2d(categories, values)
            }
            .map_err(draw_error)?;
            let step = if horizontal { 1 } else { (n / 12).max(1) };
            let category_label = |position: &f64| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let at = position.round().max(0.0) as usize;
                let index = if horizontal {
                    n - 1 - at.min(n - 1)
                } else {
                    at
                };
                if (position - position.round()).abs() < 1e-6 && index.is_multiple_of(step) {
                    self.categories.get(index).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            let mut mesh = chart.configure_mesh();
            mesh.light_line_style(TRANSPARENT).label_style((FONT, 13));
            if horizontal {
                mesh.disable_y_mesh()
                    .y_labels(n)
                    .y_label_formatter(&category_label)
                    .x_labels(8)
                    .x_label_formatter(&whole)
                    .x_desc(self.value_desc)
                    .y_desc(self.category_desc);
            } else {
                mesh.disable_x_mesh()
                    .x_labels(n.min(40))
                    .x_label_formatter(&category_label)
                    .y_labels(6)
                    .y_label_formatter(&whole)
                    .x_desc(self.category_desc)
                    .y_desc(self.value_desc);
            }
            mesh.draw().map_err(draw_error)?;
            #[allow(clippy::cast_precision_loss)]
            let width = 0.8 / self.series.len().max(1) as f64;
            for (k, s) in self.series.iter().enumerate() {
                let color = s.color;
                // Series left to right, or top to bottom.
                #[allow(clippy::cast_precision_loss)]
                let start = move |i: usize| {
                    if horizontal {
                        slot(i) + 0.4 - (k + 1) as f64 * width
                    } else {
                        slot(i) - 0.4 + k as f64 * width
                    }
                };
                let bars = s.values.iter().enumerate().map(move |(i, v)| {
                    let from = start(i);
                    Rectangle::new(
                        [point(from, 0.0), point(from + width * 0.9, *v)],
                        color.filled(),
                    )
                });
                chart
                    .draw_series(bars)
                    .map_err(draw_error)?
                    .label(s.name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                if let Some(label) = self.value_label {
                    let labels = s.values.iter().enumerate().filter(|(_, v)| **v > 0.0);
                    chart
                        .draw_series(labels.map(|(i, v)| {
                            Text::new(
                                label(*v),
                                point(start(i) + width * 0.45, *v),
                                anchored(HPos::Left),
                            )
                        }))
                        .map_err(draw_error)?;
                }
            }
            if self.series.len() > 1 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font((FONT, 13))
                    .draw()
                    .map_err(draw_error)?;
            }
            if max <= 0.0 {
                note(&root, self.empty, self.size)?;
            }
            root.present().map_err(draw_error)?;
        }
        Ok(svg)
    }
}

/// An axis label without decimals (counts, whole minutes).
#[allow(clippy::trivially_copy_pass_by_ref)] // plotters passes labels by reference
fn whole(value: &f64) -> String {
    format!("{value:.0}")
}

/// A line of text in the middle of a chart that has nothing to show.
fn note<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
    size: (u32, u32),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let x = i32::try_from(size.0 / 2).unwrap_or(0) - i32::try_from(text.len() * 4).unwrap_or(0);
    let y = i32::try_from(size.1 / 2).unwrap_or(0);
    root.draw(&Text::new(
        text.to_owned(),
        (x.max(10), y),
        (FONT, 18).into_font().color(&BLACK.mix(0.6)),
    ))
    .map_err(|e| anyhow::anyhow!("cannot draw a chart: {e}"))
}

/// Eligible calls not served, by local weekday and hour.
fn heat_map(report: &Report) -> anyhow::Result<Svg> {
    let size = (1100, 330);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let max = report
            .unserved_heat
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0);
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            // Cells are centered on whole numbers, so each tick labels its cell.
            .build_cartesian_2d(-0.5..23.5, -0.5..6.5)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(24)
            .y_labels(7)
            .x_label_formatter(&|x: &f64| format!("{:02}", x.round()))
            .y_label_formatter(&|y: &f64| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let day = 6usize.saturating_sub(y.round().max(0.0) as usize);
                WEEKDAYS
                    .get(day)
                    .map(|d| (*d).to_owned())
                    .unwrap_or_default()
            })
            .x_desc(format!("hour of day ({})", report.request.time_zone.name()))
            .label_style((FONT, 13))
            .draw()
            .map_err(draw_error)?;
        let cells = report
            .unserved_heat
            .iter()
            .enumerate()
            .flat_map(|(day, hours)| {
                hours
                    .iter()
                    .enumerate()
                    .map(move |(hour, n)| (day, hour, *n))
            });
        #[allow(clippy::cast_precision_loss)]
        chart
            .draw_series(cells.clone().map(|(day, hour, n)| {
                let intensity = if max == 0 { 0.0 } else { n as f64 / max as f64 };
                let color = if n == 0 {
                    RGBColor(0xf3, 0xf4, 0xf6)
                } else {
                    mix(RGBColor(0xfd, 0xe6, 0xd3), UNSERVED, intensity)
                };
                let (x, y) = (hour as f64, (6 - day) as f64);
                Rectangle::new([(x - 0.46, y - 0.44), (x + 0.46, y + 0.44)], color.filled())
            }))
            .map_err(draw_error)?;
        #[allow(clippy::cast_precision_loss)]
        chart
            .draw_series(cells.filter(|(_, _, n)| *n > 0).map(|(day, hour, n)| {
                Text::new(
                    n.to_string(),
                    (hour as f64, (6 - day) as f64),
                    anchored(HPos::Center),
                )
            }))
            .map_err(draw_error)?;
        if max == 0 {
            note(&root, all_served_note(report), size)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// Small text anchored at its vertical middle and `h`.
fn anchored(h: HPos) -> TextStyle<'static> {
    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(h, VPos::Center))
}

fn mix(from: RGBColor, to: RGBColor, t: f64) -> RGBColor {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let channel = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(
        channel(from.0, to.0),
        channel(from.1, to.1),
        channel(from.2, to.2),
    )
}

fn trend_chart(report: &Report) -> anyhow::Result<Svg> {
    let format = if report.bucket == "day" {
        "%a %d %b"
    } else {
        "wk of %d %b"
    };
    let categories: Vec<String> = report
        .buckets
        .iter()
        .map(|(start, _)| {
            start
                .with_timezone(&report.request.time_zone)
                .format(format)
                .to_string()
        })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let column = |f: fn(&report::TrendBucket) -> u64| -> Vec<f64> {
        report.buckets.iter().map(|(_, b)| f(b) as f64).collect()
    };
    BarChart {
        size: (1100, 380),
        categories: &categories,
        series: &[
            Series {
                name: "All calls received",
                color: RECEIVED,
                values: column(|b| b.received),
            },
            Series {
                name: "Eligible for a community team",
                color: ELIGIBLE,
                values: column(|b| b.eligible),
            },
            Series {
                name: "Served by a community team",
                color: SERVED,
                values: column(|b| b.served),
            },
        ],
        horizontal: false,
        value_desc: "calls",
        category_desc: "",
        value_label: None,
        empty: "No calls in this period",
    }
    .draw()
}

/// What an empty unserved chart says: that there were no eligible calls, or that every one
/// was served.
fn all_served_note(report: &Report) -> &'static str {
    if value_of(report, "eligible_calls", "", "").1 == 0 {
        "No eligible calls in this period"
    } else {
        "Every eligible call was served"
    }
}

fn funnel_chart(report: &Report) -> anyhow::Result<Svg> {
    let rows: Vec<(&String, u64)> = report
        .unserved_by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k, *n))
        .collect();
    let mut rows = rows;
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    let categories: Vec<String> = rows
        .iter()
        .map(|(k, _)| reason_label(k).to_owned())
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let values: Vec<f64> = rows.iter().map(|(_, n)| *n as f64).collect();
    let height = 90 + 36 * u32::try_from(categories.len().max(2)).unwrap_or(2);
    BarChart {
        size: (1100, height),
        categories: &categories,
        series: &[Series {
            name: "Eligible calls not served",
            color: UNSERVED,
            values,
        }],
        horizontal: true,
        value_desc: "eligible calls not served",
        category_desc: "",
        value_label: Some(&|v| format!("{v:.0}")),
        empty: all_served_note(report),
    }
    .draw()
}

fn speed_chart(report: &Report) -> anyhow::Result<Svg> {
    let categories: Vec<String> = report::SEGMENTS
        .iter()
        .map(|(name, _, _)| segment_label(name).to_owned())
        .collect();
    let minutes = |suffix: &str| -> Vec<f64> {
        report::SEGMENTS
            .iter()
            .map(|(name, _, _)| value_of(report, &format!("{name}_{suffix}"), "", "").0 / 60.0)
            .collect()
    };
    BarChart {
        size: (1100, 380),
        categories: &categories,
        series: &[
            Series {
                name: "Median (half of calls faster)",
                color: ELIGIBLE,
                values: minutes("p50"),
            },
            Series {
                name: "90th percentile (9 in 10 faster)",
                color: P90,
                values: minutes("p90"),
            },
        ],
        horizontal: true,
        value_desc: "minutes",
        category_desc: "",
        value_label: Some(&|v| duration_text(v * 60.0)),
        empty: "No timed steps in this period",
    }
    .draw()
}

fn on_scene_histogram(report: &Report) -> anyhow::Result<Svg> {
    let seconds = report
        .segments
        .iter()
        .find(|(name, _)| *name == "received_to_on_scene")
        .map(|(_, d)| d.seconds.clone())
        .unwrap_or_default();
    // Five-minute bins up to the 95th percentile (the rest in the last bin), at least 60 min.
    let top = report::percentile(&seconds, 0.95)
        .unwrap_or(0.0)
        .max(3600.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bins = ((top / 300.0).ceil() as usize).clamp(1, 48);
    let mut counts = vec![0.0; bins];
    for s in &seconds {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bin = ((s / 300.0).floor() as usize).min(bins - 1);
        counts[bin] += 1.0;
    }
    let categories: Vec<String> = (0..bins)
        .map(|b| {
            if b + 1 == bins {
                format!("{}+", b * 5)
            } else {
                format!("{}–{}", b * 5, b * 5 + 5)
            }
        })
        .collect();
    BarChart {
        size: (1100, 340),
        categories: &categories,
        series: &[Series {
            name: "Calls",
            color: SERVED,
            values: counts,
        }],
        horizontal: false,
        value_desc: "calls",
        category_desc: "minutes from the 911 call to the team on scene",
        value_label: None,
        empty: "No team reached a scene in this period",
    }
    .draw()
}

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn breakdown_rows(report: &Report, metric: &str, breakdown: &str) -> Vec<(String, f64)> {
    report
        .figures
        .iter()
        .filter(|f| f.metric == metric && f.breakdown == breakdown && f.bucket_start_time.is_none())
        .map(|f| (f.key.clone(), f.value))
        .collect()
}

#[allow(clippy::too_many_lines)] // the page, top to bottom
fn html(report: &Report) -> anyhow::Result<String> {
    let zone = report.request.time_zone;
    let local = |t: DateTime<Utc>| {
        t.with_timezone(&zone)
            .format("%a %d %b %Y %H:%M")
            .to_string()
    };
    let region = if report.request.region.is_empty() {
        "All regions".to_owned()
    } else {
        format!("Region {}", report.request.region)
    };
    let (received, _) = value_of(report, "calls_received", "", "");
    let (eligible, _) = value_of(report, "eligible_calls", "", "");
    let (served, _) = value_of(report, "eligible_calls_served", "", "");
    let (share, share_n) = value_of(report, "eligible_calls_served_share", "", "");
    let (unserved, _) = value_of(report, "eligible_calls_unserved", "", "");
    let (on_scene, on_scene_n) = value_of(report, "received_to_on_scene_p50", "", "");
    let (on_scene90, _) = value_of(report, "received_to_on_scene_p90", "", "");
    let (referrals, referrals_n) = value_of(report, "referrals_per_served_call", "", "");
    let (co, _) = value_of(report, "co_response_share", "", "");
    let none = "—".to_owned();

    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Community response program report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px auto; max-width: 1140px; color: #1a202c; }}
h1 {{ font-size: 26px; margin-bottom: 4px; }}
h2 {{ font-size: 20px; margin-top: 36px; border-bottom: 1px solid #cbd5e0; padding-bottom: 4px; }}
p.lede {{ color: #4a5568; margin-top: 0; }}
.cards {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }}
.card {{ border: 1px solid #cbd5e0; border-radius: 8px; padding: 12px 14px; }}
.card .value {{ font-size: 30px; font-weight: bold; }}
.card .label {{ color: #4a5568; font-size: 14px; }}
figure {{ margin: 12px 0; }}
figcaption {{ color: #4a5568; font-size: 14px; margin-bottom: 6px; }}
figure svg {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }}
th, td {{ border-bottom: 1px solid #e2e8f0; padding: 4px 10px; text-align: left; }}
td:not(:first-child) {{ text-align: right; white-space: nowrap; }}
.columns {{ display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }}
p.note {{ color: #718096; font-size: 13px; margin-top: 0; }}
footer {{ color: #718096; font-size: 13px; margin-top: 36px; }}
</style></head><body>
<h1>Community response program report</h1>
<p class="lede">{region} · calls received {from} to {to} ({zone}) · {received:.0} calls</p>
"#,
        title = escape(&region),
        region = escape(&region),
        from = local(report.request.from),
        to = local(report.request.to),
        zone = zone.name(),
    );
    let cards = [
        (format!("{received:.0}"), "calls received".to_owned()),
        (
            format!("{eligible:.0}"),
            "eligible for a community team (alone or with police/EMS)".to_owned(),
        ),
        (
            if share_n == 0 {
                none.clone()
            } else {
                percent(share)
            },
            format!("of eligible calls a community team handled ({served:.0} calls)"),
        ),
        (
            format!("{unserved:.0}"),
            "eligible calls no community team could take".to_owned(),
        ),
        (
            if on_scene_n == 0 {
                none.clone()
            } else {
                duration_text(on_scene)
            },
            "median time from call to team on scene".to_owned(),
        ),
        (
            if on_scene_n == 0 {
                none.clone()
            } else {
                duration_text(on_scene90)
            },
            "9 in 10 teams were on scene within this".to_owned(),
        ),
        (
            if share_n == 0 {
                none.clone()
            } else {
                percent(co)
            },
            "of eligible calls were co-responses with police or EMS".to_owned(),
        ),
        (
            if referrals_n == 0 {
                none.clone()
            } else {
                format!("{referrals:.2}")
            },
            "referrals to services per served, closed call".to_owned(),
        ),
    ];
    page.push_str(r#"<div class="cards" id="headline">"#);
    for (value, label) in &cards {
        let _ = write!(
            page,
            r#"<div class="card"><div class="value">{}</div><div class="label">{}</div></div>"#,
            escape(value),
            escape(label)
        );
    }
    page.push_str("</div>\n");

    let charts = [
        (
            "chart-trend",
            format!("Calls and diversion by {}", report.bucket),
            format!(
                "Each {}: every call received, those the protocol found eligible for a community team, and those a team was assigned to.",
                report.bucket
            ),
            trend_chart(report)?,
        ),
        (
            "chart-unserved",
            "Why eligible calls were not served".to_owned(),
            "Eligible calls no community team was assigned to, by the first reason routing gave.".to_owned(),
            funnel_chart(report)?,
        ),
        (
            "chart-speed",
            "How fast teams responded".to_owned(),
            "Time from the 911 call to each step; half of calls were faster than the median bar, 9 in 10 faster than the 90th-percentile bar.".to_owned(),
            speed_chart(report)?,
        ),
        (
            "chart-on-scene",
            "Time from call to team on scene".to_owned(),
            "How many calls a team reached within each 5-minute band.".to_owned(),
            on_scene_histogram(report)?,
        ),
        (
            "chart-heat",
            "When eligible calls went unserved".to_owned(),
            format!(
                "Eligible calls not served, by day of week and hour the call came in ({} time); darker means more.",
                zone.name()
            ),
            heat_map(report)?,
        ),
    ];
    for (id, title, caption, svg) in &charts {
        let _ = write!(
            page,
            "<h2>{}</h2>\n<figure class=\"chart\" id=\"{id}\"><figcaption>{}</figcaption>\n{svg}\n</figure>\n",
            escape(title),
            escape(caption)
        );
    }

    page.push_str(
        "<h2>Figures</h2>\n<div class=\"columns\"><div>\n<h3>Calls by triage decision</h3>",
    );
    let rows: Vec<Vec<String>> = breakdown_rows(report, "calls_triaged", "disposition")
        .into_iter()
        .map(|(k, v)| vec![k.replace('_', " ").to_lowercase(), format!("{v:.0}")])
        .collect();
    table(&mut page, &["decision", "calls"], &rows);
    page.push_str("<h3>Why eligible calls were not served</h3>");
    let rows: Vec<Vec<String>> = report
        .unserved_by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| {
            let wait = value_of(report, "unserved_wait_p50", "unserved_reason", k);
            vec![
                reason_label(k).to_owned(),
                n.to_string(),
                if wait.1 == 0 {
                    none.clone()
                } else {
                    duration_text(wait.0)
                },
            ]
        })
        .collect();
    table(&mut page, &["reason", "calls", "median wait"], &rows);
    page.push_str(
        "<p class=\"note\">Reasons with no call are left out; the CSV lists them all.</p>",
    );
    page.push_str("<h3>How calls closed</h3>");
    let rows: Vec<Vec<String>> = breakdown_rows(report, "calls_closed", "close_outcome")
        .into_iter()
        .map(|(k, v)| vec![k.replace('_', " ").to_lowercase(), format!("{v:.0}")])
        .collect();
    table(&mut page, &["outcome", "calls"], &rows);
    let (alert_calls, _) = value_of(report, "calls_with_safety_alert", "", "");
    let (alerts, _) = value_of(report, "safety_alerts_raised", "", "");
    let _ = write!(
        page,
        "<p class=\"note\">Safety alerts after a team was sent (a new risk reported while \
         it was assigned): {alerts:.0} on {alert_calls:.0} calls.</p>"
    );
    page.push_str("</div><div>\n<h3>Response times</h3>");
    let rows: Vec<Vec<String>> = report::SEGMENTS
        .iter()
        .map(|(name, _, _)| {
            let p50 = report.figure(&format!("{name}_p50"), "", "");
            let p90 = value_of(report, &format!("{name}_p90"), "", "").0;
            let n = p50.map_or(0, |f| f.sample_size);
            vec![
                segment_label(name).to_owned(),
                if n == 0 {
                    none.clone()
                } else {
                    duration_text(p50.map_or(0.0, |f| f.value))
                },
                if n == 0 {
                    none.clone()
                } else {
                    duration_text(p90)
                },
                n.to_string(),
                basis_label(p50.map_or("", |f| f.time_basis.as_str())).to_owned(),
            ]
        })
        .collect();
    table(
        &mut page,
        &["step", "median", "90th pct", "calls", "times from"],
        &rows,
    );
    page.push_str(
        "<p class=\"note\">Times from: <em>CAD and teams</em>, the CAD's call time and the \
         teams' own status times; <em>CAD and Relay</em>, some ends of the step are when Relay \
         recorded it (no reported time was given).</p>",
    );
    page.push_str("<h3>Call to team on scene, by priority</h3>");
    let rows: Vec<Vec<String>> = report
        .figures
        .iter()
        .filter(|f| {
            f.metric == "received_to_on_scene_p50" && f.breakdown == "priority" && f.sample_size > 0
        })
        .map(|f| {
            let p90 = value_of(report, "received_to_on_scene_p90", "priority", &f.key).0;
            vec![
                format!("priority {}", f.key),
                duration_text(f.value),
                duration_text(p90),
                f.sample_size.to_string(),
            ]
        })
        .collect();
    table(
        &mut page,
        &["priority", "median", "90th pct", "calls"],
        &rows,
    );
    page.push_str("<h3>Calls by incident type</h3>");
    let mut rows = breakdown_rows(report, "calls_received", "incident_type");
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k, format!("{v:.0}")])
        .collect();
    table(&mut page, &["type (APCO)", "calls"], &rows);
    page.push_str("</div></div>\n");
    let _ = write!(
        page,
        "<footer>Computed {} from Relay intake's incident record. Times of day are in {}. \
         Each figure is defined in docs/program-metrics.md; `relay report --format csv` gives every figure as data. \
         This report holds no caller names, phone numbers, narratives or notes.</footer>\n</body></html>\n",
        report.create_time.to_rfc3339(),
        zone.name()
    );
    Ok(page)
}
