//! The report as one self-contained HTML page: labels, tables and the page around the
//! charts.

use super::*;

/// Plain words for the unserved keys of docs/program-metrics.md.
pub(super) fn reason_label(key: &str) -> &str {
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

pub(super) fn segment_label(metric: &str) -> &'static str {
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
pub(super) fn basis_label(basis: &str) -> &'static str {
    match basis {
        "source" => "CAD and teams",
        "mixed" => "CAD and Relay",
        "record" => "Relay",
        _ => "",
    }
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) fn duration_text(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 5400.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

pub(super) fn percent(value: f64) -> String {
    format!("{:.0}%", value * 100.0)
}

pub(super) fn value_of(report: &Report, metric: &str, breakdown: &str, key: &str) -> (f64, i64) {
    report
        .figure(metric, breakdown, key)
        .map_or((0.0, 0), |f| (f.value, f.sample_size))
}

pub(super) fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
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

pub(super) fn breakdown_rows(report: &Report, metric: &str, breakdown: &str) -> Vec<(String, f64)> {
    report
        .figures
        .iter()
        .filter(|f| f.metric == metric && f.breakdown == breakdown && f.bucket_start_time.is_none())
        .map(|f| (f.key.clone(), f.value))
        .collect()
}

pub(super) fn html(report: &Report) -> anyhow::Result<String> {
    let mut page = String::new();
    head(&mut page, report);
    headline(&mut page, report);
    charts(&mut page, report)?;
    page.push_str(
        "<h2>Figures</h2>\n<div class=\"columns\"><div>\n<h3>Calls by triage decision</h3>",
    );
    figures_of_calls(&mut page, report);
    page.push_str("</div><div>\n<h3>Response times</h3>");
    figures_of_times(&mut page, report);
    page.push_str("</div></div>\n");
    let _ = write!(
        page,
        "<footer>Computed {} from Relay intake's incident record. Times of day are in {}. \
         Each figure is defined in docs/program-metrics.md; `relay report --format csv` gives every figure as data. \
         This report holds no caller names, phone numbers, narratives or notes.</footer>\n</body></html>\n",
        report.create_time.to_rfc3339(),
        report.request.time_zone.name()
    );
    Ok(page)
}

/// The page's head, style and title line.
fn head(page: &mut String, report: &Report) {
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
}

/// The headline figures, as cards.
fn headline(page: &mut String, report: &Report) {
    let (received, _) = value_of(report, "calls_received", "", "");
    let (eligible, _) = value_of(report, "eligible_calls", "", "");
    let (served, _) = value_of(report, "eligible_calls_served", "", "");
    let (share, share_n) = value_of(report, "eligible_calls_served_share", "", "");
    let (unserved, _) = value_of(report, "eligible_calls_unserved", "", "");
    let (on_scene, on_scene_n) = value_of(report, "received_to_on_scene_p50", "", "");
    let (on_scene90, _) = value_of(report, "received_to_on_scene_p90", "", "");
    let (referrals, referrals_n) = value_of(report, "referrals_per_served_call", "", "");
    let (co, _) = value_of(report, "co_response_share", "", "");
    let none = NONE.to_owned();
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
}

/// The charts, each under its title with its caption.
fn charts(page: &mut String, report: &Report) -> anyhow::Result<()> {
    let zone = report.request.time_zone;
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
    Ok(())
}

/// The left column of the figures: calls by triage decision, unserved reasons, outcomes.
fn figures_of_calls(page: &mut String, report: &Report) {
    let none = NONE.to_owned();
    let rows: Vec<Vec<String>> = breakdown_rows(report, "calls_triaged", "disposition")
        .into_iter()
        .map(|(k, v)| vec![k.replace('_', " ").to_lowercase(), format!("{v:.0}")])
        .collect();
    table(page, &["decision", "calls"], &rows);
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
    table(page, &["reason", "calls", "median wait"], &rows);
    page.push_str(
        "<p class=\"note\">Reasons with no call are left out; the CSV lists them all.</p>",
    );
    page.push_str("<h3>How calls closed</h3>");
    let rows: Vec<Vec<String>> = breakdown_rows(report, "calls_closed", "close_outcome")
        .into_iter()
        .map(|(k, v)| vec![k.replace('_', " ").to_lowercase(), format!("{v:.0}")])
        .collect();
    table(page, &["outcome", "calls"], &rows);
    let (alert_calls, _) = value_of(report, "calls_with_safety_alert", "", "");
    let (alerts, _) = value_of(report, "safety_alerts_raised", "", "");
    let _ = write!(
        page,
        "<p class=\"note\">Safety alerts after a team was sent (a new risk reported while \
         it was assigned): {alerts:.0} on {alert_calls:.0} calls.</p>"
    );
}

/// The right column of the figures: response times, by step and by priority, and calls by
/// incident type.
fn figures_of_times(page: &mut String, report: &Report) {
    let none = NONE.to_owned();
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
        page,
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
    table(page, &["priority", "median", "90th pct", "calls"], &rows);
    page.push_str("<h3>Calls by incident type</h3>");
    let mut rows = breakdown_rows(report, "calls_received", "incident_type");
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k, format!("{v:.0}")])
        .collect();
    table(page, &["type (APCO)", "calls"], &rows);
}

/// What a figure without a call shows.
const NONE: &str = "—";
