//! Issue 18, part 3: kill -9 of every service in turn under load (part of `make chaos`).
//!
//! The four services run as processes on the machine's PostgreSQL and Redis; teams are on duty
//! and clear their calls, CADs submit calls concurrently and retry until acknowledged. Each
//! service in turn is killed with SIGKILL and started again on the same address. After the
//! load, every guarantee is checked: every acknowledged call is in intake once; no team was
//! ever actively assigned to two incidents at once (intervals [assigned_at, end_time) from
//! routing's record, both ends from routing's clock); intake's view (routing state and team)
//! agrees with routing's record for every incident; and nothing is stuck (no call PENDING or
//! QUEUED once the teams have had time to take them).

use std::time::{Duration, Instant};

use relay_tests::{
    chaos::{Load, Verdict, metric_sum},
    suite::Suite,
};

const FENCED: &str = "relay_routing_claims_refused_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_service_in_turn_under_load_loses_nothing_and_never_double_dispatches() {
    let began = Instant::now();
    let mut suite = Suite::start(&[("RELAY_ROUTING__RECONCILE_GRACE_SECONDS", "1")]).await;
    let mut load = Load::on(&suite).await;
    let mut refused = (0.0, 0.0);
    for name in ["availability", "routing", "intake", "directory"] {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if name == "routing" {
            // Its counters die with it: read them first.
            let text = suite.scrape("routing").await;
            refused.0 += metric_sum(&text, FENCED, "STALE_FENCING_TOKEN");
            refused.1 += metric_sum(&text, FENCED, "TEAM_BUSY");
        }
        let acknowledged = load.acknowledged_so_far();
        suite.kill(name);
        tokio::time::sleep(Duration::from_secs(1)).await;
        suite.revive(name, &[]).await;
        eprintln!(
            "{:>5.1}s killed {name} with SIGKILL and started it again ({acknowledged} calls acknowledged by then)",
            began.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let verdict = Verdict::after(&mut load, suite.database().url(), Duration::from_secs(120)).await;
    let text = suite.scrape("routing").await;
    refused.0 += metric_sum(&text, FENCED, "STALE_FENCING_TOKEN");
    refused.1 += metric_sum(&text, FENCED, "TEAM_BUSY");
    verdict.report_and_check(
        "kill -9 of each service under load",
        began.elapsed().as_secs_f64(),
        refused.0,
        refused.1,
    );
    suite.clean_up().await;
}
