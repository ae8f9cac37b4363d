//! `relay dev` runs the whole suite on embedded storage, over TLS with a local CA and bearer
//! tokens, and `relay simulate` drives it through the public API with the CA and the token
//! `relay dev` printed: calls are triaged, teams are assigned and calls are closed, and the
//! same seed gives the same counts. A call without the token is refused.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use relay_tests::{binary_path, wait_until_serving_on};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Kills `relay dev` when the test ends, however it ends.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `relay dev` printed for its clients.
struct Credentials {
    ca_file: String,
    token: String,
}

fn simulate(base: u16, credentials: &Credentials) -> String {
    let output = Command::new(binary_path("relay"))
        .args([
            "simulate",
            "--no-progress",
            "--seed",
            "7",
            "--minutes",
            "90",
            "--speed",
            "900",
        ])
        .args(["--intake", &format!("https://127.0.0.1:{base}")])
        .args(["--availability", &format!("https://127.0.0.1:{}", base + 1)])
        .args(["--directory", &format!("https://127.0.0.1:{}", base + 3)])
        .env("RELAY_CA_FILE", &credentials.ca_file)
        .env("RELAY_TOKEN", &credentials.token)
        .output()
        .expect("run relay simulate");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "relay simulate failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("failed calls"), "{stdout}");
    stdout
}

fn count(report: &str, name: &str) -> u64 {
    let counts = report
        .lines()
        .find_map(|line| line.strip_prefix("counts: "))
        .expect("a counts line");
    counts
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {counts}"))
}

#[test]
fn relay_dev_serves_the_whole_call_lifecycle_and_simulations_repeat() {
    // Fixed ports must stay clear of the ones the OS hands out to other tests (the ephemeral
    // range, 32768..=60999 on Linux): pick four from above it, and try another four when
    // something holds them anyway.
    let mut attempt = 0_u16;
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (base, dev, lines_rx) = loop {
        let slot =
            u16::try_from((std::process::id() + u32::from(attempt) * 97) % 1_100).expect("small");
        let base = 61_000 + slot * 4;
        let mut child = Command::new(binary_path("relay"))
            .args(["dev", "--port-base", &base.to_string()])
            .env("RELAY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relay dev");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::clone(&logged);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                log.lock().expect("log").push(line);
            }
        });
        let dev = Dev(child);
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        match lines_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(first) => {
                let (again_tx, again_rx) = std::sync::mpsc::channel();
                again_tx.send(first).expect("requeue");
                std::thread::spawn(move || {
                    for line in lines_rx {
                        if again_tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                break (base, dev, again_rx);
            }
            // relay dev exited without a line: its ports were taken.
            Err(_) if attempt < 5 => attempt += 1,
            Err(error) => panic!("relay dev did not start: {error}"),
        }
    };
    let mut listening = Vec::new();
    let (mut ca_file, mut token) = (None, None);
    while listening.len() < 4 {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("relay dev prints its endpoints");
        if line.contains(" listening on ") {
            listening.push(line);
        } else if let Some(path) = line.strip_prefix("export RELAY_CA_FILE=") {
            ca_file = Some(path.to_owned());
        } else if let Some(value) = line.strip_prefix("export RELAY_TOKEN=") {
            token = Some(value.to_owned());
        }
    }
    assert_eq!(
        listening,
        [
            format!("intake listening on https://127.0.0.1:{base}"),
            format!("availability listening on https://127.0.0.1:{}", base + 1),
            format!("routing listening on https://127.0.0.1:{}", base + 2),
            format!("directory listening on https://127.0.0.1:{}", base + 3),
        ]
    );
    let credentials = Credentials {
        ca_file: ca_file.expect("relay dev prints `export RELAY_CA_FILE=...` before its endpoints"),
        token: token.expect("relay dev prints `export RELAY_TOKEN=...` before its endpoints"),
    };
    let ca_pem = std::fs::read_to_string(&credentials.ca_file).expect("the CA file");
    let channel = |port: u16| {
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("endpoint")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
            .expect("tls")
            .connect_lazy()
    };

    // A clean start is quiet at WARN: once all four are SERVING (start-up done, readiness
    // passed), look.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Lazy channels spawn their connection on the runtime they are made in.
    let _entered = runtime.enter();
    for port in base..base + 4 {
        runtime
            .block_on(wait_until_serving_on(
                channel(port),
                Duration::from_secs(60),
            ))
            .unwrap_or_else(|last| panic!("port {port} never became SERVING (last {last})"));
    }
    // TLS alone is no credential: a call without the token is refused.
    let status = runtime
        .block_on(
            relay_proto::directory::directory_service_client::DirectoryServiceClient::new(channel(
                base + 3,
            ))
            .search_services(relay_proto::directory::SearchServicesRequest::default()),
        )
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let warnings: Vec<String> = logged
        .lock()
        .expect("log")
        .iter()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .cloned()
        .collect();
    assert!(warnings.is_empty(), "a clean start warned: {warnings:?}");

    let first = simulate(base, &credentials);
    assert!(count(&first, "submitted") >= 10, "{first}");
    assert!(count(&first, "assigned") >= 1, "{first}");
    assert!(count(&first, "closed") >= 1, "{first}");
    assert!(first.contains("time to assign"), "{first}");
    // The same seed again, in the same deployment (the run id keeps the runs apart).
    let second = simulate(base, &credentials);
    let counts = |report: &str| {
        report
            .lines()
            .find(|line| line.starts_with("counts: "))
            .map(str::to_owned)
    };
    assert_eq!(counts(&first), counts(&second), "{first}\n{second}");
    drop(dev);
}
