//! The security boundary (DESIGN.md guarantee 9, issue 14), against the real service
//! binaries over TLS: every RPC of every service, from the descriptors' scope table, refuses
//! a call without a valid credential (UNAUTHENTICATED) or without its scope
//! (PERMISSION_DENIED) and lets the right scope through; a client that does not trust the
//! CA, or presents a certificate from another CA, fails at the handshake; a rotated server
//! certificate is served without a restart; and no token reaches a log line. Every refusal of
//! the table is recorded in its service's audit trail, which stays a valid chain.
//!
//! Keys, certificates and tokens are made for each run (no committed private key), by the
//! module `secure` this file shares with eido_http.rs.

mod secure;

use std::{path::Path, time::Duration};

use relay_runtime::security::pki::{Authority, CertifiedKey, TokenClaims, TokenSigner, all_scopes};
use relay_tests::{ServiceProcess, raw::RawCodec, status::reason};
use secure::{
    AUDIENCE, Authed, Bearer, CLIENT_IDENTITY, ISSUER, KID, Pki, Stderr, intake_client, start,
    start_intake, start_without, tls_channel,
    trail::{self, Refusal},
    write,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// Whether a new TLS connection trusting `ca_pem` (with `identity`) gets a health answer:
/// `false` when the handshake fails, whichever side refuses it.
async fn handshake_ok(
    process: &ServiceProcess,
    ca_pem: &str,
    identity: Option<&CertifiedKey>,
) -> bool {
    match tls_channel(process, ca_pem, identity).await {
        Err(_) => false,
        Ok(channel) => call(&channel, "/grpc.health.v1.Health/Check", None)
            .await
            .is_ok(),
    }
}

/// Calls the method at `path` with an empty request and `token`; `Ok` when the call got
/// past the auth layer (an answer, a stream, or any error from the service itself).
async fn call(channel: &Channel, path: &str, token: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let mut request = tonic::Request::new(futures_once());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("path");
    // Streaming both ways fits every RPC kind on the wire; a refusal is trailers-only and
    // arrives at once, so a call still running after the wait got past the layer.
    match tokio::time::timeout(
        Duration::from_secs(3),
        grpc.streaming(request, path, RawCodec),
    )
    .await
    {
        Ok(Ok(_)) | Err(_) => Ok(()),
        Ok(Err(status)) => Err(status),
    }
}

fn futures_once() -> tokio_stream::Once<Vec<u8>> {
    tokio_stream::once(Vec::new())
}

/// Whether a call got past the auth layer: answered, or refused by the service itself (an
/// empty request is rarely valid), not UNAUTHENTICATED nor short of a scope.
fn past_auth(result: Result<(), Status>) -> bool {
    match result {
        Ok(()) => true,
        Err(status) => status.code() != Code::Unauthenticated && reason(&status) != "SCOPE_MISSING",
    }
}

fn assert_refused(result: Result<(), Status>, code: Code, why: &str, path: &str, case: &str) {
    let status = result.expect_err(&format!("{case}: {path} must be refused"));
    assert_eq!(status.code(), code, "{case}: {path}: {status:?}");
    assert_eq!(reason(&status), why, "{case}: {path}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_needs_a_valid_credential_with_its_scope() {
    let pki = Pki::new();
    let processes = [
        ("relay-intake", start(&pki, "relay-intake", &[])),
        ("relay-availability", start(&pki, "relay-availability", &[])),
        ("relay-routing", start(&pki, "relay-routing", &[])),
        ("relay-directory", start(&pki, "relay-directory", &[])),
    ];
    let served = |binary: &str, path: &str| match binary {
        "relay-intake" => path.starts_with("/relay.intake.") || path.starts_with("/relay.reports."),
        "relay-availability" => path.starts_with("/relay.availability."),
        "relay-routing" => path.starts_with("/relay.routing."),
        _ => path.starts_with("/relay.directory."),
    };
    let all = all_scopes();
    let stranger = TokenSigner::generate(KID).expect("another key, same kid");
    let expired = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all.clone(), -600, -300);
    let not_yet = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all.clone(), 600, 900);
    let forged = pki.token_from(&stranger, ISSUER, AUDIENCE, all.clone(), 0, 300);
    let other_issuer = pki.token_from(&pki.signer, "https://other", AUDIENCE, all.clone(), 0, 300);
    let other_audience = pki.token_from(&pki.signer, ISSUER, "other", all.clone(), 0, 300);
    let mut checked = 0;
    let mut refused = Vec::new();
    for (binary, process) in &processes {
        // Each refusal below is recorded in the service's audit trail (checked at the end).
        let mut refusals: Vec<Refusal> = Vec::new();
        let channel = tls_channel(process, pki.authority.cert_pem(), None)
            .await
            .unwrap_or_else(|error| panic!("{binary}: {error:?}"));
        // Health stays open for probes; reflection needs a credential.
        call(&channel, "/grpc.health.v1.Health/Check", None)
            .await
            .unwrap_or_else(|status| panic!("{binary}: health refused: {status:?}"));
        assert_refused(
            call(
                &channel,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
            )
            .await,
            Code::Unauthenticated,
            "CREDENTIALS_MISSING",
            "reflection",
            binary,
        );
        for (path, scope) in relay_proto::scopes::METHOD_SCOPES {
            if !served(binary, path) {
                continue;
            }
            checked += 1;
            let recorded =
                |outcome, reason, principal| (path.to_string(), outcome, reason, principal);
            refusals.push(recorded(
                "UNAUTHENTICATED",
                "CREDENTIALS_MISSING",
                "anonymous",
            ));
            refusals.push(recorded("PERMISSION_DENIED", "SCOPE_MISSING", "tester"));
            assert_refused(
                call(&channel, path, None).await,
                Code::Unauthenticated,
                "CREDENTIALS_MISSING",
                path,
                "no credential",
            );
            for (case, token) in [
                ("expired", &expired),
                ("not yet valid", &not_yet),
                ("wrong signature", &forged),
                ("wrong issuer", &other_issuer),
                ("wrong audience", &other_audience),
                ("not a JWT", &String::from("not.a.jwt")),
            ] {
                refusals.push(recorded(
                    "UNAUTHENTICATED",
                    "CREDENTIALS_INVALID",
                    "anonymous",
                ));
                assert_refused(
                    call(&channel, path, Some(token)).await,
                    Code::Unauthenticated,
                    "CREDENTIALS_INVALID",
                    path,
                    case,
                );
            }
            let without: Vec<String> = all.iter().filter(|s| *s != scope).cloned().collect();
            let status = call(&channel, path, Some(&pki.token(without)))
                .await
                .expect_err("every scope but its own");
            assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
            assert_eq!(reason(&status), "SCOPE_MISSING", "{path}");
            let info = status
                .get_error_details()
                .error_info()
                .cloned()
                .expect("info");
            assert_eq!(info.metadata.get("scope").map(String::as_str), Some(*scope));
            assert!(
                path[1..].starts_with(&info.domain),
                "{path}: domain {}",
                info.domain
            );

            // With its scope alone, the call reaches the service (whose answer to an empty
            // request is its own business).
            let only = pki.token(vec![(*scope).to_owned()]);
            let result = call(&channel, path, Some(&only)).await;
            assert!(
                past_auth(result.clone()),
                "{path} with its scope `{scope}`: {result:?}"
            );
        }
        refused.push((trail::trail(&pki, binary), refusals));
    }
    assert_eq!(
        checked,
        relay_proto::scopes::METHOD_SCOPES.len(),
        "every RPC is served by one of the four binaries"
    );
    for (trail, refusals) in &refused {
        trail::wait_for(trail, refusals, Duration::from_secs(15)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_strangers_and_picks_up_a_rotated_certificate() {
    let pki = Pki::new();
    let process = start(&pki, "relay-directory", &[]);
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let upsert = "/relay.directory.v1.DirectoryService/UpsertService";

    // A client that does not trust the server's CA fails.
    let other = Authority::new("another CA").expect("CA");
    assert!(
        !handshake_ok(&process, other.cert_pem(), None).await,
        "a client that does not trust the CA got through"
    );

    // A client certificate from another CA is refused at the handshake: even health, which
    // needs no credential, fails.
    let foreign = other.client(CLIENT_IDENTITY).expect("foreign client cert");
    assert!(
        !handshake_ok(&process, pki.authority.cert_pem(), Some(&foreign)).await,
        "a certificate from another CA passed the handshake"
    );

    // A certificate from the trusted CA identifies its holder: mapped to directory.read.
    let trusted = pki.authority.client(CLIENT_IDENTITY).expect("client cert");
    let channel = tls_channel(&process, pki.authority.cert_pem(), Some(&trusted))
        .await
        .expect("mTLS");
    call(&channel, search, None)
        .await
        .expect("the certificate's scope lets it search");
    let status = call(&channel, upsert, None)
        .await
        .expect_err("no directory.write for this identity");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "SCOPE_MISSING");
    // An unknown identity from the trusted CA is someone, with no scope.
    let unknown = pki.authority.client("someone-else").expect("client cert");
    let channel_unknown = tls_channel(&process, pki.authority.cert_pem(), Some(&unknown))
        .await
        .expect("mTLS");
    let status = call(&channel_unknown, search, None)
        .await
        .expect_err("no scope");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Rotation: a certificate from a new CA replaces the files; the process keeps running,
    // the connection made before keeps working, and new connections get the new one.
    let before = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("old CA");
    let rotated = Authority::new("rotated CA").expect("CA");
    let mut stderr = Stderr::default();
    stderr.read(&process);
    let reloads = |lines: &[String]| {
        lines
            .iter()
            .filter(|line| line.contains("tls certificate reloaded"))
            .count()
    };
    pki.write_server_cert(&rotated);
    // The watcher logs each reload; the one after the certificate (written last) serves it.
    stderr
        .wait_for(&process, Duration::from_secs(15), "a reload", |lines| {
            reloads(lines) >= 1
        })
        .await;
    if !handshake_ok(&process, rotated.cert_pem(), None).await {
        // The key alone was picked up first: the certificate's reload follows.
        stderr
            .wait_for(
                &process,
                Duration::from_secs(15),
                "a second reload",
                |lines| reloads(lines) >= 2,
            )
            .await;
        assert!(
            handshake_ok(&process, rotated.cert_pem(), None).await,
            "the rotated certificate is not served after its reload: {:?}",
            stderr.lines
        );
    }
    call(&before, "/grpc.health.v1.Health/Check", None)
        .await
        .expect("the connection made before the rotation still works");
    assert!(
        !handshake_ok(&process, pki.authority.cert_pem(), None).await,
        "new connections still get the old certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_any_log_line_even_at_trace() {
    let pki = Pki::new();
    let process = start(&pki, "relay-directory", &[("RELAY_LOG", "trace")]);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let good = pki.token(all_scopes());
    let expired = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all_scopes(), -600, -300);
    let wrong = pki.token_from(&pki.signer, ISSUER, "other", vec![], 0, 300);
    for token in [&good, &expired, &wrong] {
        let _ = call(
            &channel,
            "/relay.directory.v1.DirectoryService/SearchServices",
            Some(token),
        )
        .await;
    }
    // The two refusals are logged (so the check below looks at real output); then the
    // process stops, and its last line ends what it wrote.
    let mut stderr = Stderr::default();
    stderr
        .wait_for(
            &process,
            Duration::from_secs(20),
            "two refusals logged",
            |lines| {
                lines
                    .iter()
                    .filter(|line| line.contains("call refused"))
                    .count()
                    >= 2
            },
        )
        .await;
    process.signal("TERM");
    let mut process = process;
    let _ = process.wait_timeout(Duration::from_secs(20));
    stderr
        .wait_for(&process, Duration::from_secs(20), "stopped", |lines| {
            lines.iter().any(|line| line.contains("stopped"))
        })
        .await;
    let lines = &stderr.lines;
    for token in [&good, &expired, &wrong] {
        // The signature part alone is enough to replay nothing, but neither it nor the
        // claims may appear.
        let (signed, signature) = token.rsplit_once('.').expect("a JWT");
        for line in lines {
            assert!(!line.contains(signature), "a token signature in: {line}");
            assert!(!line.contains(signed), "token claims in: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_is_the_default_and_insecure_needs_a_development_setup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("d.db").display());
    let run = |extra: &[(&str, &str)]| {
        std::process::Command::new(relay_tests::binary_path("relay-directory"))
            .env_clear()
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RELAY_DATABASE_URL", &database)
            .env("RELAY_PAGE_TOKEN_SECRET", "secret")
            .envs(extra.iter().copied())
            .output()
            .expect("run relay-directory")
    };
    // Nothing configured: no start, one line naming the variables, exit 2.
    let output = run(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RELAY_TLS_CERT"), "{stderr}");
    // Asking for plaintext outside a development setup is refused the same way.
    let output = run(&[
        ("RELAY_INSECURE_PLAINTEXT", "true"),
        ("RELAY_INSECURE_NO_AUTH", "true"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("RELAY_INSECURE_DEV"), "{stderr}");
    // With it, the service starts plaintext and says so at WARN.
    let process = ServiceProcess::start(
        "relay-directory",
        &[
            ("RELAY_DATABASE_URL", &database),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
            ("RELAY_INSECURE_PLAINTEXT", "true"),
            ("RELAY_INSECURE_NO_AUTH", "true"),
        ],
    );
    Stderr::default()
        .wait_for(
            &process,
            Duration::from_secs(20),
            "a warning that it serves plaintext",
            |lines| {
                lines
                    .iter()
                    .any(|line| line.contains("WARN") && line.contains("plaintext"))
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_token_issue_makes_tokens_the_services_accept() {
    let pki = Pki::new();
    let process = start(&pki, "relay-directory", &[]);
    let key = pki.path("signing-key.pem");
    write(&key, pki.signer.key_pem());
    let issue = |scopes: &[&str]| {
        let mut command = std::process::Command::new(relay_tests::binary_path("relay"));
        command
            .args(["token", "issue", "--signing-key"])
            .arg(&key)
            .args(["--kid", KID, "--issuer", ISSUER, "--audience", AUDIENCE]);
        for scope in scopes {
            command.args(["--scope", scope]);
        }
        let output = command.output().expect("run relay token issue");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let upsert = "/relay.directory.v1.DirectoryService/UpsertService";
    let reader = issue(&["directory.read"]);
    assert!(
        past_auth(call(&channel, search, Some(&reader)).await),
        "directory.read searches"
    );
    let status = call(&channel, upsert, Some(&reader))
        .await
        .expect_err("directory.read does not write");
    assert_eq!(reason(&status), "SCOPE_MISSING");
    assert!(
        past_auth(call(&channel, upsert, Some(&issue(&["all"]))).await),
        "`all` holds every scope"
    );
}

// ---------------------------------------------------------------------------------------
// Tenancy and caller details (issue 14): the bindings of a credential (cad_system, team,
// regions) are enforced by the handlers, and caller details need `caller.details.read`.

fn availability_client(
    channel: &Channel,
    token: &str,
) -> relay_proto::availability::availability_service_client::AvailabilityServiceClient<Authed> {
    relay_proto::availability::availability_service_client::AvailabilityServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(token),
    )
}

fn routing_client(
    channel: &Channel,
    token: &str,
) -> relay_proto::routing::routing_service_client::RoutingServiceClient<Authed> {
    relay_proto::routing::routing_service_client::RoutingServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(token),
    )
}

/// Asserts `result` is PERMISSION_DENIED with `why`, for the table's `case`.
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>, why: &str, case: &str) -> Status {
    let status = result.expect_err(&format!("{case}: must be refused"));
    assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
    assert_eq!(reason(&status), why, "{case}: {status:?}");
    status
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn submission(
    cad_system: &str,
    cad_incident_id: &str,
) -> relay_proto::intake::SubmitIncidentRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    relay_proto::intake::SubmitIncidentRequest {
        cad_system: cad_system.into(),
        cad_incident_id: cad_incident_id.into(),
        incident_type: "WELFARE".into(),
        priority: 3,
        location: Some(relay_proto::common::GeoPoint {
            latitude: 44.05,
            longitude: -123.09,
        }),
        address: "1 Main St".into(),
        region: "north".into(),
        narrative: "caller worried about her brother".into(),
        received_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(now).expect("seconds"),
            nanos: 0,
        }),
        caller: Some(relay_proto::intake::CallerContact {
            name: "Ada Caller".into(),
            phone: "+15415550100".into(),
            callback_number: None,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cad_bound_credential_acts_only_on_its_own_cads_incidents() {
    use relay_proto::intake::{
        CancelIncidentRequest, CloseIncidentRequest, CloseOutcome, GetEidoRequest,
        GetIncidentRequest, IncidentState, ListIncidentsRequest, SubmitEidoRequest,
        UpdateIncidentRequest, WatchIncidentEventsRequest, watch_incident_events_response::Kind,
    };

    let pki = Pki::new();
    let process = start_intake(&pki);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let mut admin = intake_client(&channel, &pki.token(all_scopes()));
    let bound_to = |cad: &str| TokenClaims {
        cad_system: Some(cad.to_owned()),
        ..TokenClaims::default()
    };
    let cad_scopes = ["incidents.submit", "incidents.read", "incidents.watch"];
    let mut cad_a = intake_client(&channel, &pki.bound_token(&cad_scopes, bound_to("cad-a")));

    // Another CAD's incident, made by an unbound credential.
    let theirs = admin
        .submit_incident(submission("cad-b", "B-1"))
        .await
        .expect("unbound submits for any CAD")
        .into_inner()
        .incident
        .expect("incident");
    let before = theirs.revision;

    // Its own: submit, get (by id and by the CAD's id), list, watch.
    let ours = cad_a
        .submit_incident(submission("cad-a", "A-1"))
        .await
        .expect("its own CAD")
        .into_inner()
        .incident
        .expect("incident");
    let got = cad_a
        .get_incident(GetIncidentRequest {
            incident_id: ours.incident_id.clone(),
            ..Default::default()
        })
        .await
        .expect("get its own")
        .into_inner();
    assert_eq!(got.incident.expect("incident").cad_system, "cad-a");
    cad_a
        .get_incident(GetIncidentRequest {
            cad_system: "cad-a".into(),
            cad_incident_id: "A-1".into(),
            ..Default::default()
        })
        .await
        .expect("get its own by the CAD's id");
    let listed = cad_a
        .list_incidents(ListIncidentsRequest::default())
        .await
        .expect("an empty filter lists its own")
        .into_inner();
    assert_eq!(
        listed
            .incidents
            .iter()
            .map(|i| i.cad_system.as_str())
            .collect::<Vec<_>>(),
        vec!["cad-a"],
        "a bound credential lists only its own CAD's incidents"
    );
    let mut stream = cad_a
        .watch_incident_events(WatchIncidentEventsRequest {
            cad_system: "cad-a".into(),
            after_sequence: 0,
        })
        .await
        .expect("watch its own")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("first message in time")
        .expect("a message")
        .expect("not the end");
    assert!(matches!(first.kind, Some(Kind::Heartbeat(_))), "{first:?}");

    // Another CAD's, on every RPC: CAD_SYSTEM_NOT_ALLOWED.
    let other = theirs.incident_id.clone();
    let unknown = id();
    let case = "submit for another CAD";
    assert_denied(
        cad_a.submit_incident(submission("cad-b", "B-2")).await,
        "CAD_SYSTEM_NOT_ALLOWED",
        case,
    );
    let by_other = assert_denied(
        cad_a
            .get_incident(GetIncidentRequest {
                incident_id: other.clone(),
                ..Default::default()
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "get another CAD's incident",
    );
    // An id that names no incident gets the very same answer: existence is not revealed.
    let by_unknown = assert_denied(
        cad_a
            .get_incident(GetIncidentRequest {
                incident_id: unknown.clone(),
                ..Default::default()
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "get an unknown incident",
    );
    assert_eq!(by_other.message(), by_unknown.message());
    assert_eq!(by_other.details(), by_unknown.details());
    assert_denied(
        cad_a
            .get_incident(GetIncidentRequest {
                cad_system: "cad-b".into(),
                cad_incident_id: "B-1".into(),
                ..Default::default()
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "get by another CAD's id",
    );
    assert_denied(
        cad_a
            .list_incidents(ListIncidentsRequest {
                cad_system: "cad-b".into(),
                ..Default::default()
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "list another CAD",
    );
    assert_denied(
        cad_a
            .watch_incident_events(WatchIncidentEventsRequest {
                cad_system: "cad-b".into(),
                after_sequence: 0,
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "watch another CAD",
    );
    assert_denied(
        cad_a
            .update_incident(UpdateIncidentRequest {
                request_id: id(),
                incident_id: other.clone(),
                priority: Some(1),
                notes: Some("moved up".into()),
                ..Default::default()
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "update another CAD's incident",
    );
    assert_denied(
        cad_a
            .cancel_incident(CancelIncidentRequest {
                request_id: id(),
                incident_id: other.clone(),
                reason: "duplicate".into(),
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "cancel another CAD's incident",
    );
    assert_denied(
        cad_a
            .close_incident(CloseIncidentRequest {
                request_id: id(),
                incident_id: other.clone(),
                outcome: CloseOutcome::ResolvedOnScene as i32,
                ..Default::default()
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "close another CAD's incident",
    );
    assert_denied(
        cad_a
            .get_eido(GetEidoRequest {
                incident_id: other.clone(),
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "EIDO of another CAD's incident",
    );
    let eido = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/eido/sample-call-transfer.json"),
    )
    .expect("the shared NENA sample");
    assert_denied(
        cad_a
            .submit_eido(SubmitEidoRequest {
                request_id: String::new(),
                eido_json: eido,
            })
            .await,
        "CAD_SYSTEM_NOT_ALLOWED",
        "an EIDO issued by another CAD",
    );

    // The refusals changed nothing: the other CAD's incident is as it was, and the EIDO
    // wrote no incident.
    let after = admin
        .get_incident(GetIncidentRequest {
            incident_id: other.clone(),
            ..Default::default()
        })
        .await
        .expect("admin reads it")
        .into_inner()
        .incident
        .expect("incident");
    assert_eq!(after.revision, before, "no refused write changed it");
    assert_eq!(after.state, IncidentState::Open as i32);
    assert!(after.notes.is_empty());
    let all = admin
        .list_incidents(ListIncidentsRequest::default())
        .await
        .expect("admin lists")
        .into_inner();
    assert_eq!(
        all.incidents.len(),
        2,
        "only the two submitted incidents exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_details_are_withheld_without_their_scope() {
    use relay_proto::intake::{GetEidoRequest, GetIncidentRequest, ListIncidentsRequest};

    let pki = Pki::new();
    let process = start_intake(&pki);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let mut writer = intake_client(&channel, &pki.token(vec!["incidents.submit".into()]));
    let mut reader = intake_client(&channel, &pki.token(vec!["incidents.read".into()]));
    let mut details_reader = intake_client(
        &channel,
        &pki.token(vec!["incidents.read".into(), "caller.details.read".into()]),
    );

    // Even the submitter's own answer withholds them without the scope.
    let submitted = writer
        .submit_incident(submission("cad-a", "A-1"))
        .await
        .expect("submit")
        .into_inner()
        .incident
        .expect("incident");
    assert!(submitted.caller_details_withheld);
    assert!(submitted.caller.is_none() && submitted.narrative.is_empty());
    let get = GetIncidentRequest {
        incident_id: submitted.incident_id.clone(),
        ..Default::default()
    };

    for (case, client, shown) in [
        ("without caller.details.read", &mut reader, false),
        ("with caller.details.read", &mut details_reader, true),
    ] {
        let incident = client
            .get_incident(get.clone())
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"))
            .into_inner()
            .incident
            .expect("incident");
        let listed = client
            .list_incidents(ListIncidentsRequest::default())
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"))
            .into_inner()
            .incidents;
        let eido = client
            .get_eido(GetEidoRequest {
                incident_id: submitted.incident_id.clone(),
            })
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"))
            .into_inner()
            .eido_json;
        for incident in std::iter::once(&incident).chain(listed.iter()) {
            assert_eq!(incident.caller_details_withheld, !shown, "{case}");
            assert_eq!(incident.caller.is_some(), shown, "{case}");
            assert_eq!(!incident.narrative.is_empty(), shown, "{case}");
            // The rest of the incident is there either way.
            assert_eq!(incident.address, "1 Main St", "{case}");
        }
        if shown {
            let caller = incident.caller.expect("caller");
            assert_eq!(caller.name, "Ada Caller");
            assert_eq!(caller.phone, "+15415550100");
        }
        assert_eq!(eido.contains("Ada Caller"), shown, "{case}: {eido}");
        assert_eq!(eido.contains("+15415550100"), shown, "{case}: {eido}");
        assert_eq!(eido.contains("worried about her brother"), shown, "{case}");
        assert_eq!(eido.contains("caller-details-withheld"), !shown, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_and_region_bound_credentials_report_and_read_only_their_own() {
    use relay_proto::{
        availability::{
            FindAvailableTeamsRequest, GetTeamRequest, ListTeamsRequest, ReportLocationRequest,
            SetTeamStatusRequest, StreamLocationsRequest, UpsertTeamRequest,
        },
        common::{GeoPoint, TeamStatus},
        routing::{ListQueueRequest, RestoreAssignmentRequest},
    };

    let pki = Pki::new();
    let availability = start(&pki, "relay-availability", &[]);
    let routing = start(&pki, "relay-routing", &[]);
    let channel = tls_channel(&availability, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let routing_channel = tls_channel(&routing, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let mut admin = availability_client(&channel, &pki.token(all_scopes()));
    for (team, region) in [("t-north", "north"), ("t-south", "south")] {
        admin
            .upsert_team(UpsertTeamRequest {
                request_id: id(),
                team_id: team.into(),
                display_name: team.into(),
                region: region.into(),
                ..Default::default()
            })
            .await
            .expect("upsert");
    }
    let device_scopes = ["teams.report", "teams.read", "assignments.write"];
    let mut device = availability_client(
        &channel,
        &pki.bound_token(
            &device_scopes,
            TokenClaims {
                team_id: Some("t-north".into()),
                ..TokenClaims::default()
            },
        ),
    );
    let mut north = availability_client(
        &channel,
        &pki.bound_token(
            &device_scopes,
            TokenClaims {
                regions: vec!["north".into()],
                ..TokenClaims::default()
            },
        ),
    );
    let now = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        prost_types::Timestamp {
            seconds: i64::try_from(now.as_secs()).expect("seconds"),
            nanos: 0,
        }
    };
    let status = |team: &str| SetTeamStatusRequest {
        request_id: id(),
        team_id: team.into(),
        status: TeamStatus::Available as i32,
        ..Default::default()
    };
    let position = |team: &str| ReportLocationRequest {
        team_id: team.into(),
        location: Some(GeoPoint {
            latitude: 44.05,
            longitude: -123.09,
        }),
        recorded_at: Some(now()),
        ..Default::default()
    };

    // A team-bound device: its own team, and no other.
    device
        .set_team_status(status("t-north"))
        .await
        .expect("own status");
    device
        .report_location(position("t-north"))
        .await
        .expect("own position");
    assert_denied(
        device.set_team_status(status("t-south")).await,
        "TEAM_NOT_ALLOWED",
        "status of another team",
    );
    assert_denied(
        device.report_location(position("t-south")).await,
        "TEAM_NOT_ALLOWED",
        "position of another team",
    );
    let reports = ["t-north", "t-south"].map(|team| {
        let p = position(team);
        StreamLocationsRequest {
            team_id: p.team_id,
            location: p.location,
            recorded_at: Some(prost_types::Timestamp {
                seconds: now().seconds + 1,
                nanos: 0,
            }),
            ..Default::default()
        }
    });
    let summary = device
        .stream_locations(tokio_stream::iter(reports))
        .await
        .expect("the stream goes on past a refused report")
        .into_inner();
    assert_eq!(
        (summary.accepted_count, summary.rejected_count),
        (1, 1),
        "{summary:?}"
    );
    let rejection = &summary.rejections[0];
    assert_eq!(
        (
            rejection.index,
            rejection.team_id.as_str(),
            rejection.field.as_str(),
            rejection.reason.as_str()
        ),
        (1, "t-south", "team_id", "TEAM_NOT_ALLOWED")
    );
    assert_denied(
        routing_client(
            &routing_channel,
            &pki.bound_token(
                &device_scopes,
                TokenClaims {
                    team_id: Some("t-north".into()),
                    ..TokenClaims::default()
                },
            ),
        )
        .restore_assignment(RestoreAssignmentRequest {
            request_id: id(),
            incident_id: id(),
            team_id: "t-south".into(),
        })
        .await,
        "TEAM_NOT_ALLOWED",
        "restore another team's call",
    );
    // A device does not route: AssignTeam and CancelRouting are a dispatcher's or a CAD's.
    let mut device_routing = routing_client(
        &routing_channel,
        &pki.bound_token(
            &device_scopes,
            TokenClaims {
                team_id: Some("t-north".into()),
                ..TokenClaims::default()
            },
        ),
    );
    assert_denied(
        device_routing
            .assign_team(relay_proto::routing::AssignTeamRequest {
                request_id: id(),
                incident_id: id(),
                region: "north".into(),
                cad_system: "cad-a".into(),
                ..Default::default()
            })
            .await,
        "TEAM_NOT_ALLOWED",
        "a device routes a call",
    );
    assert_denied(
        device_routing
            .cancel_routing(relay_proto::routing::CancelRoutingRequest {
                request_id: id(),
                incident_id: id(),
                ..Default::default()
            })
            .await,
        "TEAM_NOT_ALLOWED",
        "a device cancels routing",
    );

    // A region-bound credential: reads filtered or refused, writes refused.
    let listed = north
        .list_teams(ListTeamsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed
            .teams
            .iter()
            .map(|t| t.team_id.as_str())
            .collect::<Vec<_>>(),
        vec!["t-north"]
    );
    north
        .get_team(GetTeamRequest {
            team_id: "t-north".into(),
        })
        .await
        .expect("a team of its region");
    for (case, result) in [
        (
            "get a team of another region",
            north
                .get_team(GetTeamRequest {
                    team_id: "t-south".into(),
                })
                .await
                .map(|_| ()),
        ),
        (
            "list another region",
            north
                .list_teams(ListTeamsRequest {
                    region: "south".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "find in another region",
            north
                .find_available_teams(FindAvailableTeamsRequest {
                    region: "south".into(),
                    location: Some(GeoPoint {
                        latitude: 44.05,
                        longitude: -123.09,
                    }),
                    radius_meters: 1000.0,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "status of a team of another region",
            north.set_team_status(status("t-south")).await.map(|_| ()),
        ),
        (
            "position of a team of another region",
            north.report_location(position("t-south")).await.map(|_| ()),
        ),
        (
            "queue of another region",
            routing_client(
                &routing_channel,
                &pki.bound_token(
                    &["assignments.read"],
                    TokenClaims {
                        regions: vec!["north".into()],
                        ..TokenClaims::default()
                    },
                ),
            )
            .list_queue(ListQueueRequest {
                region: "south".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        ),
    ] {
        assert_denied(result, "REGION_NOT_ALLOWED", case);
    }

    // The refusals changed nothing: the other team is still OFF_DUTY, without a position.
    let south = admin
        .get_team(GetTeamRequest {
            team_id: "t-south".into(),
        })
        .await
        .expect("admin reads it")
        .into_inner()
        .team
        .expect("team");
    assert_eq!(south.status, TeamStatus::OffDuty as i32);
    assert!(south.location.is_none(), "{south:?}");
    assert_eq!(south.revision, 1, "{south:?}");
}

/// The directory over TLS with a rate of one per second and a burst of three (the two
/// settings given), its admin port on a known address: the process, a channel, that address.
async fn limited_directory(
    pki: &Pki,
    rate: (&str, &str),
    burst: (&str, &str),
) -> (ServiceProcess, Channel, std::net::SocketAddr) {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], relay_tests::free_port()));
    let admin_listen = admin.to_string();
    let process = start(
        pki,
        "relay-directory",
        &[rate, burst, ("RELAY_ADMIN_LISTEN", &admin_listen)],
    );
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    (process, channel, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_rate_limit_is_told_when_to_retry_while_others_are_served() {
    let pki = Pki::new();
    let (_process, channel, admin) = limited_directory(
        &pki,
        ("RELAY_SECURITY__LIMITS__REQUESTS_PER_SECOND", "1"),
        ("RELAY_SECURITY__LIMITS__BURST", "3"),
    )
    .await;
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let busy = Pki::token_for(&pki.signer, "cad-busy");
    let calm = Pki::token_for(&pki.signer, "cad-calm");

    // The burst goes through, then the busy principal is refused with when to retry.
    let mut served = 0;
    let status = loop {
        match call(&channel, search, Some(&busy)).await {
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            result => {
                assert!(past_auth(result.clone()), "{result:?}");
                served += 1;
                assert!(served <= 6, "never limited after {served} calls");
            }
        }
    };
    assert!(served >= 3, "the burst of 3 is served first, got {served}");
    assert_eq!(reason(&status), "RATE_LIMITED", "{status:?}");
    let delay = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "one request per second: the next within a second, got {delay:?}"
    );

    // Another principal has a bucket of its own; health is never limited.
    let result = call(&channel, search, Some(&calm)).await;
    assert!(
        served_past_limits(&result),
        "another principal is still served: {result:?}"
    );
    call(&channel, "/grpc.health.v1.Health/Check", None)
        .await
        .expect("health is not limited");

    // After the delay it was given, the busy principal is served again.
    let deadline = std::time::Instant::now() + delay + Duration::from_secs(3);
    loop {
        let result = call(&channel, search, Some(&busy)).await;
        if served_past_limits(&result) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after its retry delay: {result:?}"
        );
        tokio::time::sleep(delay.min(Duration::from_millis(200))).await;
    }

    // Refusals are counted by class, never by who.
    let (code, metrics) = relay_tests::admin_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let line = metrics
        .lines()
        .find(|line| line.starts_with("relay_rate_limited_total{"))
        .unwrap_or_else(|| panic!("no relay_rate_limited_total in:\n{metrics}"));
    assert!(line.contains("class=\"principal\""), "{line}");
    assert!(!line.contains("cad-busy"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_credentials_from_one_address_is_told_to_back_off() {
    let pki = Pki::new();
    let (_process, channel, admin) = limited_directory(
        &pki,
        ("RELAY_SECURITY__LIMITS__REFUSALS_PER_SECOND", "1"),
        ("RELAY_SECURITY__LIMITS__REFUSALS_BURST", "3"),
    )
    .await;
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let expired = pki.token_from(&pki.signer, ISSUER, AUDIENCE, all_scopes(), -600, -300);

    // Refusals alternate between no token and a bad one: both count, against the address.
    let mut refused = 0;
    let status = loop {
        let token = (refused % 2 == 1).then_some(expired.as_str());
        match call(&channel, search, token).await {
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            result => {
                let status = result.expect_err("no valid credential");
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                refused += 1;
                assert!(refused <= 6, "never limited after {refused} refusals");
            }
        }
    };
    assert!(
        refused >= 3,
        "the burst of 3 is refused first, got {refused}"
    );
    assert_eq!(reason(&status), "RATE_LIMITED", "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("error info");
    assert_eq!(
        info.metadata.get("class").map(String::as_str),
        Some("refused")
    );
    assert_eq!(info.domain, "relay.directory.v1");
    let delay = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "one refusal per second: {delay:?}"
    );

    // A valid credential from the same address is served; health stays open.
    let valid = pki.token(all_scopes());
    let result = call(&channel, search, Some(&valid)).await;
    assert!(served_past_limits(&result), "a valid token: {result:?}");
    call(&channel, "/grpc.health.v1.Health/Check", None)
        .await
        .expect("health is not limited");

    let (code, metrics) = relay_tests::admin_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("relay_rate_limited_total{")
                && line.contains("class=\"refused\"")),
        "no refused class in relay_rate_limited_total:\n{metrics}"
    );
}

/// Whether a call got past authentication and the rate limit.
fn served_past_limits(result: &Result<(), Status>) -> bool {
    past_auth(result.clone())
        && result
            .as_ref()
            .err()
            .is_none_or(|status| status.code() != Code::ResourceExhausted)
}

/// An HTTPS server of the test's own serving a JWKS (or an error), counting its fetches.
struct JwksServer {
    addr: std::net::SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(authority: &Authority) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = authority
            .server("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = std::sync::Arc::new(std::sync::Mutex::new((503, String::new())));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let answer = std::sync::Arc::clone(&answer);
            let fetches = std::sync::Arc::clone(&fetches);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let answer = std::sync::Arc::clone(&answer);
                    let fetches = std::sync::Arc::clone(&fetches);
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let mut request = Vec::new();
                        let mut buffer = [0_u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buffer[..n]),
                            }
                        }
                        fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let (code, body) = answer.lock().expect("answer").clone();
                        let response = format!(
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            })
        };
        Self {
            addr,
            answer,
            fetches,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/realms/relay/certs", self.addr.port())
    }

    /// Serves the public keys of `signers`.
    fn serve(&self, signers: &[&TokenSigner]) {
        let keys: Vec<serde_json::Value> = signers
            .iter()
            .flat_map(|signer| {
                let set = serde_json::to_value(signer.jwks().expect("jwks")).expect("json");
                set["keys"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        *self.answer.lock().expect("answer") =
            (200, serde_json::json!({ "keys": keys }).to_string());
    }

    /// Answers every fetch with a server error.
    fn fail(&self) {
        *self.answer.lock().expect("answer") = (500, String::from("{}"));
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether health answers SERVING on `channel`.
async fn serving(channel: &Channel) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|answer| answer.into_inner().status == ServingStatus::Serving as i32)
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_refetched_for_a_new_key_and_refreshed_when_keys_are_retired() {
    let pki = Pki::new();
    let jwks = JwksServer::start(&pki.authority).await;
    let first = TokenSigner::generate("key-1").expect("key");
    let second = TokenSigner::generate("key-2").expect("key");
    let unknown = TokenSigner::generate("key-3").expect("key");
    let search = "/relay.directory.v1.DirectoryService/SearchServices";
    let url = jwks.url();
    let ca = pki.path("client-ca.pem").display().to_string();
    let settings = |refresh: &'static str| {
        vec![
            ("RELAY_AUTH_JWKS_URL", url.clone()),
            ("RELAY_SECURITY__AUTH_JWKS_CA", ca.clone()),
            (
                "RELAY_SECURITY__AUTH_JWKS_REFRESH_SECONDS",
                refresh.to_owned(),
            ),
            (
                "RELAY_SECURITY__AUTH_JWKS_REFETCH_MIN_SECONDS",
                String::from("1"),
            ),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", String::from("100")),
        ]
    };

    // The provider is down at start: the service starts, NOT_SERVING, and a token is told
    // to retry (UNAVAILABLE), not that it is invalid. Once the set is served, it serves.
    jwks.fail();
    let env = settings("300");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = start_without(&pki, "relay-directory", &env, &["RELAY_AUTH_JWKS"]);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let status = call(&channel, search, Some(&Pki::token_for(&first, "cad")))
        .await
        .expect_err("no keys yet");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "KEYS_UNAVAILABLE");
    jwks.serve(&[&first]);
    let on = &channel;
    eventually(
        Duration::from_secs(15),
        "SERVING once the JWKS is fetched",
        move || serving(on),
    )
    .await;
    assert!(past_auth(
        call(&channel, search, Some(&Pki::token_for(&first, "cad"))).await
    ));

    // The provider rotates to a new key: a token signed with it names a kid the cached set
    // lacks, so the set is fetched again at once (the periodic refresh is 5 minutes away).
    jwks.serve(&[&first, &second]);
    let new_token = Pki::token_for(&second, "cad");
    let token = &new_token;
    eventually(
        Duration::from_secs(10),
        "a token of the new key accepted",
        move || async move { past_auth(call(on, search, Some(token)).await) },
    )
    .await;

    // Made-up kids do not make it hammer the provider: at most one fetch per second.
    let before = jwks.fetches();
    let started = std::time::Instant::now();
    let forged = Pki::token_for(&unknown, "cad");
    for _ in 0..20 {
        let status = call(&channel, search, Some(&forged))
            .await
            .expect_err("an unknown key");
        assert_eq!(reason(&status), "CREDENTIALS_INVALID");
    }
    let seconds = started.elapsed().as_secs();
    let fetched = jwks.fetches() - before;
    assert!(
        fetched <= usize::try_from(seconds).expect("small") + 1,
        "{fetched} fetches in {seconds}s for 20 unknown kids"
    );
    drop(process);

    // Periodic refresh (every second here): a fetch that fails keeps the last good set; a
    // key the provider retires stops verifying tokens without a restart.
    let env = settings("1");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = start_without(&pki, "relay-directory", &env, &["RELAY_AUTH_JWKS"]);
    let channel = tls_channel(&process, pki.authority.cert_pem(), None)
        .await
        .expect("tls");
    let on = &channel;
    eventually(Duration::from_secs(15), "SERVING", move || serving(on)).await;
    let old_token = Pki::token_for(&first, "cad");
    assert!(past_auth(call(&channel, search, Some(&old_token)).await));
    jwks.fail();
    let failed_from = jwks.fetches();
    let server = &jwks;
    eventually(
        Duration::from_secs(10),
        "two failed refreshes",
        move || async move { server.fetches() >= failed_from + 2 },
    )
    .await;
    assert!(
        past_auth(call(&channel, search, Some(&old_token)).await),
        "the last good set is kept while the provider fails"
    );
    jwks.serve(&[&second]);
    let retired = &old_token;
    eventually(
        Duration::from_secs(10),
        "the retired key refused",
        move || async move {
            call(on, search, Some(retired))
                .await
                .is_err_and(|status| reason(&status) == "CREDENTIALS_INVALID")
        },
    )
    .await;
    assert!(past_auth(call(&channel, search, Some(&new_token)).await));
}
