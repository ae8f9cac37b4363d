use super::*;

#[test]
fn defaults_follow_the_operator_table() {
    let config = Config::builder("routing")
        .build()
        .expect("defaults are valid");
    assert_eq!(config.settings.listen.to_string(), "0.0.0.0:50053");
    assert_eq!(config.settings.intake_endpoint, "http://127.0.0.1:50051");
    assert_eq!(config.settings.directory_endpoint, "http://127.0.0.1:50054");
    assert_eq!(config.settings.log, "info");
    assert!(config.settings.database_url.is_none());
}

#[test]
fn listen_accepts_port_only_forms() {
    let config = Config::builder("intake")
        .set("listen", ":6000")
        .build()
        .expect("valid");
    assert_eq!(config.settings.listen.to_string(), "0.0.0.0:6000");
    let config = Config::builder("intake")
        .set("listen", 6001)
        .build()
        .expect("valid");
    assert_eq!(config.settings.listen.to_string(), "0.0.0.0:6001");
}

#[test]
fn a_bad_value_names_its_key() {
    let error = Config::builder("intake")
        .set("listen", "not-an-address")
        .build()
        .expect_err("invalid listen address");
    let message = error.to_string();
    assert!(message.contains("`listen`"), "{message}");
    assert!(message.contains("not-an-address"), "{message}");

    let error = Config::builder("intake")
        .set("server.request_timeout_ms", "soon")
        .build()
        .expect_err("invalid timeout");
    assert!(
        error.to_string().contains("server.request_timeout_ms"),
        "{error}"
    );

    let error = Config::builder("intake")
        .set("server.request_timeout_ms", 0)
        .build()
        .expect_err("zero timeout");
    assert!(
        error.to_string().contains("server.request_timeout_ms"),
        "{error}"
    );
}

#[test]
fn later_layers_win_and_sections_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nlog = \"debug\"\n[demo]\nlimit = 7\n",
    )
    .expect("write");
    let config = Config::builder("intake")
        .file(&file)
        .expect("file exists")
        .set("log", "warn")
        .build()
        .expect("valid");
    assert_eq!(config.settings.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(config.settings.log, "warn");

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Demo {
        limit: u32,
    }
    assert_eq!(
        config.section::<Demo>("demo").expect("valid"),
        Demo { limit: 7 }
    );
    assert_eq!(
        config.section::<Demo>("absent").expect("valid"),
        Demo::default()
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let error = Config::builder("intake")
        .file(Path::new("/nonexistent/relay.toml"))
        .expect_err("missing file");
    assert!(error.to_string().contains("/nonexistent/relay.toml"));
}

#[test]
fn a_simulated_clock_needs_insecure_dev() {
    let config = Config::builder("routing").build().expect("valid");
    let wall = config.settings.clock().expect("the wall clock");
    assert!((wall.speed() - 1.0).abs() < f64::EPSILON);

    let simulated = || {
        Config::builder("routing")
            .set("clock.speed", 120.0)
            .set("clock.origin", "2020-01-06T08:00:00Z")
    };
    let error = simulated()
        .build()
        .expect("valid values")
        .settings
        .clock()
        .expect_err("refused outside development");
    assert!(error.to_string().contains("RELAY_INSECURE_DEV"), "{error}");

    let config = simulated()
        .set("insecure_dev", true)
        .build()
        .expect("valid");
    let clock = config.settings.clock().expect("simulated");
    assert!((clock.speed() - 120.0).abs() < f64::EPSILON);
    // Anchored at the origin, which is in the past: simulated time is far ahead.
    assert!(clock.now() > chrono::Utc::now() + chrono::TimeDelta::days(30));

    let error = Config::builder("routing")
        .set("clock.speed", 0.0)
        .build()
        .expect_err("zero speed");
    assert!(error.to_string().contains("clock.speed"), "{error}");
}

#[test]
fn security_reads_the_operator_names_and_its_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "[security]\ntls_cert = \"/certs/tls.crt\"\nreflection = \"off\"\n\
         [security.identities.\"spiffe://relay/intake\"]\nscopes = [\"assignments.write\"]\n",
    )
    .expect("write");
    let config = Config::builder("routing")
        .file(&file)
        .expect("file exists")
        .build()
        .expect("valid");
    let security = &config.settings.security;
    assert_eq!(
        security.tls_cert.as_deref(),
        Some(Path::new("/certs/tls.crt"))
    );
    assert_eq!(security.reflection, crate::security::Reflection::Off);
    assert_eq!(
        security.identities["spiffe://relay/intake"].scopes,
        ["assignments.write"]
    );
    let error = Config::builder("routing")
        .set("security.tls_certificate", "x")
        .build()
        .expect_err("unknown key");
    assert!(error.to_string().contains("tls_certificate"), "{error}");
}

#[test]
fn the_database_block_defaults_and_names_its_keys() {
    let config = Config::builder("intake").build().expect("valid");
    assert_eq!(config.settings.database, DatabaseSettings::default());
    assert_eq!(
        config.settings.database.query_timeout(),
        Duration::from_secs(3)
    );
    let config = Config::builder("intake")
        .set("database.max_connections", 7)
        .set("database.migrate_on_start", true)
        .set("database.query_timeout_ms", 1500)
        .build()
        .expect("valid");
    assert_eq!(
        config.settings.database,
        DatabaseSettings {
            max_connections: Some(7),
            migrate_on_start: Some(true),
            query_timeout_ms: 1500,
        }
    );
    for (key, value) in [
        ("database.query_timeout_ms", 0),
        ("database.max_connections", 0),
    ] {
        let error = Config::builder("intake")
            .set(key, value)
            .build()
            .expect_err("zero");
        assert!(error.to_string().contains(key), "{error}");
    }
    let error = Config::builder("intake")
        .set("database.pool_size", 3)
        .build()
        .expect_err("unknown key");
    assert!(error.to_string().contains("pool_size"), "{error}");
}

#[test]
fn required_urls_name_their_variable() {
    let config = Config::builder("routing").build().expect("valid");
    let error = config.redis_url().expect_err("not set");
    assert!(error.to_string().contains("RELAY_REDIS_URL"));
    let error = config.database_url().expect_err("not set");
    assert!(error.to_string().contains("RELAY_DATABASE_URL"));
}

#[test]
fn redis_tls_files_are_checked_and_name_their_keys() {
    let ca = std::env::temp_dir().join(format!("relay-config-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
    // A CA for a plaintext URL is a mistake, not a silent downgrade.
    let config = Config::builder("routing")
        .set("redis_url", "redis://127.0.0.1:6379")
        .set("redis_ca_file", ca.to_str().expect("utf-8"))
        .build()
        .expect("valid");
    let error = config.redis_target().expect_err("CA with redis://");
    assert!(error.to_string().contains("not rediss://"), "{error}");
    // A certificate without its key names the missing key.
    let config = Config::builder("routing")
        .set("redis_url", "rediss://127.0.0.1:6380")
        .set("redis_cert_file", ca.to_str().expect("utf-8"))
        .build()
        .expect("valid");
    let error = config.redis_target().expect_err("cert without key");
    assert!(
        error.to_string().contains("RELAY_REDIS_KEY_FILE"),
        "{error}"
    );
    // An unreadable file names its key.
    let config = Config::builder("routing")
        .set("redis_url", "rediss://127.0.0.1:6380")
        .set("redis_ca_file", "/nonexistent/ca.pem")
        .build()
        .expect("valid");
    let error = config.redis_target().expect_err("missing file");
    assert!(error.to_string().contains("`redis_ca_file`"), "{error}");
    // A password in the URL never reaches an error message.
    let config = Config::builder("routing")
        .set("redis_url", "redis://relay:hunter2@127.0.0.1:6379")
        .set("redis_ca_file", ca.to_str().expect("utf-8"))
        .build()
        .expect("valid");
    let error = config.redis_target().expect_err("CA with redis://");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    let _ = std::fs::remove_file(ca);
}
