//! SubmitIncident with TLS and token checks on against plaintext without authentication, in
//! the same run: two intake services in process, each on a PostgreSQL database of its own,
//! both routing through the same fake routing server (plaintext, answering at once), one
//! serving TLS with `relay dev`'s kind of files and checking a bearer token on every call
//! (the JWT's ES256 signature, issuer, audience, expiry, the scope from the descriptors, the
//! per-principal rate limit), the other plaintext with authentication off. The load is the
//! main benchmark's open loop (200 calls/s). Five runs alternate which goes first; each
//! prints both p50/p99 and the p99 ratio, then their median and spread. Goal: p99 ratio at
//! most 1.3. Only the inbound boundary differs: intake's own call to routing is plaintext in
//! both.

use std::{sync::Arc, time::Duration};

use relay_proto::intake::intake_service_client::IntakeServiceClient;
use relay_runtime::{
    client::{AuthChannel, Credentials},
    security::pki::DevFiles,
};
use relay_tests::{
    TestDatabase,
    bench::{report_ratios, report_run},
};
use tokio_util::sync::CancellationToken;

use super::{
    RATE, open_loop,
    support::{FakeRouting, config, submission},
};

/// Calls per run and setup (5 s at [`RATE`]).
const CALLS: u64 = 1_000;
/// Runs (each measures both setups, in alternating order).
const RUNS: usize = 5;

/// An intake in process; `secure`: TLS and tokens with those files.
async fn start(
    database: &TestDatabase,
    routing: &FakeRouting,
    secure: Option<(&DevFiles, &Credentials)>,
) -> (IntakeServiceClient<AuthChannel>, CancellationToken) {
    let mut builder = config(database.url(), routing, None);
    if let Some((files, _)) = secure {
        builder = files.configure_server(builder, &["bench"]);
    }
    let app = relay_intake::Application::build(builder.build().expect("config"))
        .await
        .expect("intake builds");
    let plain = Credentials::default();
    let credentials = secure.map_or(&plain, |(_, credentials)| credentials);
    let mut endpoint = tonic::transport::Channel::from_shared(
        credentials.uri(&format!("http://{}", app.local_addr())),
    )
    .expect("endpoint");
    if let Some(tls) = credentials.tls() {
        endpoint = endpoint.tls_config(tls).expect("tls");
    }
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        app.run_until_stopped(token.cancelled_owned())
            .await
            .expect("intake runs");
    });
    let channel = endpoint.connect().await.expect("connect");
    (
        IntakeServiceClient::new(credentials.intercept(channel)),
        stop,
    )
}

async fn submit(client: &IntakeServiceClient<AuthChannel>, tag: &str, calls: u64) -> Vec<Duration> {
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let latencies = open_loop(calls, |n| {
        let mut client = client.clone();
        let failures = Arc::clone(&failures);
        let request = submission(&format!("{tag}-{n}"), "WELFARE");
        async move {
            if client.submit_incident(request).await.is_err() {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await;
    let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "{tag}: {failed} submissions failed");
    latencies
}

/// The comparison `-- security` runs.
pub async fn compare() {
    let secure_db = TestDatabase::new().await;
    let plain_db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DevFiles::ensure(dir.path()).expect("certificates and keys");
    let token = files.token("bench", 3600).expect("token");
    let ca = std::fs::read(&files.ca).expect("CA");
    let bearer = Credentials::new(Some(ca), Some(token)).expect("credentials");
    let (secure, secure_stop) = start(&secure_db, &routing, Some((&files, &bearer))).await;
    let (plain, plain_stop) = start(&plain_db, &routing, None).await;
    // Warm up both: connections, pools, the first token check.
    submit(&secure, "warm-s", 50).await;
    submit(&plain, "warm-p", 50).await;

    let mut ratios = Vec::with_capacity(RUNS);
    for run in 1..=RUNS {
        let (s_tag, p_tag) = (format!("s{run}"), format!("p{run}"));
        let (mut with, mut without) = if run % 2 == 1 {
            let with = submit(&secure, &s_tag, CALLS).await;
            (with, submit(&plain, &p_tag, CALLS).await)
        } else {
            let without = submit(&plain, &p_tag, CALLS).await;
            (submit(&secure, &s_tag, CALLS).await, without)
        };
        ratios.push(report_run(
            run,
            &format!("SubmitIncident, {RATE} calls/s"),
            ("TLS + token", &mut with),
            ("plaintext", &mut without),
        ));
    }
    report_ratios("SubmitIncident, TLS + token / plaintext", ratios, 1.3);
    secure_stop.cancel();
    plain_stop.cancel();
}
