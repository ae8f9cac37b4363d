//! The report's charts, drawn with plotters' SVG backend: bars, the heat map, the trend, the
//! funnel, speed and on-scene time.

use super::*;

pub(super) const FONT: &str = "sans-serif";
pub(super) const RECEIVED: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);
pub(super) const ELIGIBLE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
pub(super) const SERVED: RGBColor = RGBColor(0x2f, 0x85, 0x5a);
pub(super) const UNSERVED: RGBColor = RGBColor(0xc0, 0x56, 0x21);
pub(super) const P90: RGBColor = RGBColor(0xd6, 0x9e, 0x2e);

pub(super) type Svg = String;

pub(super) fn draw_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw a chart: {error}")
}

/// One series of bars: its name, color and one value per category.
pub(super) struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    values: Vec<f64>,
}

/// A bar chart: one group of bars per category (one bar per series), with a legend when there
/// are several series, and `empty` written across the plot when every value is zero.
pub(super) struct BarChart<'a> {
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
pub(super) fn whole(value: &f64) -> String {
    format!("{value:.0}")
}

/// A line of text in the middle of a chart that has nothing to show.
pub(super) fn note<DB: DrawingBackend>(
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
pub(super) fn heat_map(report: &Report) -> anyhow::Result<Svg> {
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
pub(super) fn anchored(h: HPos) -> TextStyle<'static> {
    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(h, VPos::Center))
}

pub(super) fn mix(from: RGBColor, to: RGBColor, t: f64) -> RGBColor {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let channel = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(
        channel(from.0, to.0),
        channel(from.1, to.1),
        channel(from.2, to.2),
    )
}

pub(super) fn trend_chart(report: &Report) -> anyhow::Result<Svg> {
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
pub(super) fn all_served_note(report: &Report) -> &'static str {
    if value_of(report, "eligible_calls", "", "").1 == 0 {
        "No eligible calls in this period"
    } else {
        "Every eligible call was served"
    }
}

pub(super) fn funnel_chart(report: &Report) -> anyhow::Result<Svg> {
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

pub(super) fn speed_chart(report: &Report) -> anyhow::Result<Svg> {
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

pub(super) fn on_scene_histogram(report: &Report) -> anyhow::Result<Svg> {
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
