//! `relay report` end to end: synthetic incidents (with narratives and caller names) written
//! through intake's store into SQLite, then the HTML, CSV and JSON reports written by the
//! binary. Checks the figures agree across formats, every chart is drawn, bad periods are
//! refused, and no caller detail reaches any output. Leaves the HTML reports in
//! `target/tmp/report-check/` for the browser check (scripts/report-check.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command};

use relay_intake::store::{IncidentStore, SqliteStore};
use secrecy::SecretString;

const FROM: &str = "2026-03-02T00:00:00Z";
const TO: &str = "2026-03-16T00:00:00Z";
const CALLS: u64 = 600;
const SECRETS: [&str; 3] = ["NARRATIVE-SECRET", "CALLERNAME-SECRET", "5550199"];

fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

async fn database(dir: &Path) -> String {
    let url = format!("sqlite://{}", dir.join("intake.db").display());
    let pool = relay_runtime::storage::sqlite_pool(&SecretString::from(url.clone()), 2).unwrap();
    relay_intake::SQLITE_MIGRATOR.run(&pool).await.unwrap();
    let store = SqliteStore::new(pool);
    for incident in
        relay_intake::synthetic::incidents(CALLS, 0, micros(FROM), micros(TO), &["east"], 7)
    {
        store
            .create_incident(&incident, vec![], vec![], 1)
            .await
            .unwrap();
    }
    url
}

fn report(url: &str, args: &[&str], out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("report")
        .args(args)
        .arg("--database-url")
        .arg(url)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn assert_private(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} is in {}", path.display());
    }
}

#[tokio::test]
async fn relay_report_writes_html_csv_and_json_without_caller_details() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let check_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-check");
    std::fs::create_dir_all(&check_dir).unwrap();

    let html = check_dir.join("report.html");
    let output = report(
        &url,
        &["--from", FROM, "--to", TO, "--region", "east"],
        &html,
    );
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("report written to"));
    assert_private(&html);
    let page = std::fs::read_to_string(&html).unwrap();
    for chart in [
        "chart-trend",
        "chart-unserved",
        "chart-speed",
        "chart-on-scene",
        "chart-heat",
    ] {
        let start = page
            .find(&format!("id=\"{chart}\""))
            .unwrap_or_else(|| panic!("{chart} missing"));
        let figure = &page[start..start + page[start..].find("</figure>").unwrap()];
        assert!(
            figure.contains("<svg") && figure.matches("<rect").count() >= 3,
            "{chart} is empty"
        );
    }
    // Self-contained: nothing is fetched when the page opens (SVG's xmlns is a name, not a
    // fetch).
    for external in ["src=", "href=", "<link", "url(", "@import"] {
        assert!(!page.contains(external), "the page refers to {external}");
    }

    let csv = dir.path().join("report.csv");
    let output = report(&url, &["--from", FROM, "--to", TO, "--format", "csv"], &csv);
    assert!(output.status.success(), "{output:?}");
    assert_private(&csv);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("from,to,region,time_zone,metric,breakdown,key,bucket_start,value,unit,sample_size,time_basis\n"));
    let received: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(",calls_received,,,,"))
        .collect();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].contains(&format!(",{CALLS},calls,{CALLS},")),
        "{}",
        received[0]
    );
    // 14 days: one trend row per day and metric.
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(",calls_received,,,2026-"))
            .count(),
        14
    );

    let json = dir.path().join("report.json");
    let output = report(
        &url,
        &["--from", FROM, "--to", TO, "--format", "json"],
        &json,
    );
    assert!(output.status.success(), "{output:?}");
    assert_private(&json);
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let figures = document["figures"].as_array().unwrap();
    assert_eq!(
        figures.len(),
        text.lines().count() - 1,
        "JSON and CSV have the same rows"
    );
    let share = figures
        .iter()
        .find(|f| f["metric"] == "eligible_calls_served_share" && f["bucket_start"] == "")
        .unwrap();
    let value = share["value"].as_f64().unwrap();
    assert!(value > 0.3 && value < 0.95, "{share}");

    // A period without calls still draws every chart (with a note), for the browser check.
    let empty = check_dir.join("report-empty.html");
    let output = report(
        &url,
        &[
            "--from",
            "2026-06-01T00:00:00Z",
            "--to",
            "2026-06-02T00:00:00Z",
        ],
        &empty,
    );
    assert!(output.status.success(), "{output:?}");
    assert!(
        std::fs::read_to_string(&empty)
            .unwrap()
            .contains("No calls in this period")
    );
}

#[tokio::test]
async fn relay_report_refuses_a_bad_period_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("intake.db").display());
    let out = dir.path().join("r.html");
    for (args, flag) in [
        (vec!["--from", TO, "--to", FROM], "--to"),
        (
            vec![
                "--from",
                "2025-01-01T00:00:00Z",
                "--to",
                "2026-03-01T00:00:00Z",
            ],
            "--to",
        ),
        (vec!["--from", "yesterday", "--to", TO], "--from"),
    ] {
        let output = report(&url, &args, &out);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
}
