//! Intake's EIDO HTTP port (`POST /EIDO`, `GET /EIDO/{IncidentId}`) behind the same boundary
//! as its gRPC port (issue 14), against the real binary: TLS with the gRPC certificate, the
//! bearer token or client certificate of the SubmitEido and GetEido RPCs with their scopes,
//! the CAD-system binding, caller details withheld, the per-principal rate limit shared with
//! gRPC calls and the limit on refused credentials; every refusal a JSON body naming its
//! reason.

mod secure;

use std::time::Duration;

use relay_runtime::security::pki::{TokenClaims, all_scopes};
use relay_tests::status::reason;
use secure::{HttpAnswer, Pki, https, intake_client, start_intake_http, tls_channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;

/// NENA's sample EIDO, whose `issuingElementIdentification` (its CAD) is `idx.state.pa.us`.
fn sample() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/eido/sample-call-transfer.json");
    std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error} (the shared/ folder beside the repository)",
            path.display()
        )
    })
}

const SAMPLE_CAD: &str = "idx.state.pa.us";

/// Every scope but `scope`.
fn all_but(scope: &str) -> Vec<String> {
    all_scopes().into_iter().filter(|s| s != scope).collect()
}

fn bound(cad: &str) -> TokenClaims {
    TokenClaims {
        cad_system: Some(cad.to_owned()),
        ..TokenClaims::default()
    }
}

type Exchange<'a> = (&'a str, &'a str, Option<&'a str>, &'a str);

fn post<'a>(eido: &'a str, token: Option<&'a str>) -> Exchange<'a> {
    ("POST", "/EIDO", token, eido)
}

fn get<'a>(path: &'a str, token: Option<&'a str>) -> Exchange<'a> {
    ("GET", path, token, "")
}

/// Asserts a JSON refusal: the status, the reason, and the error's shape.
fn assert_refusal(answer: &HttpAnswer, status: u16, why: &str, case: &str) {
    assert_eq!(answer.status, status, "{case}: {answer:?}");
    assert_eq!(answer.reason(), why, "{case}: {answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{case}"
    );
    let error = &answer.json()["error"];
    assert_eq!(error["domain"], "relay.intake.v1", "{case}: {answer:?}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eido_over_http_asks_the_credential_scope_and_cad_of_the_rpcs() {
    let pki = Pki::new();
    let (process, http) = start_intake_http(&pki, &[]);
    let ca = pki.authority.cert_pem();
    let eido = sample();
    let post = |token| post(&eido, token);

    // Plain HTTP gets no answer: the port speaks TLS only.
    let mut plain = tokio::net::TcpStream::connect(http).await.expect("connect");
    plain
        .write_all(b"GET /EIDO/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut raw)).await;
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&raw)
    );

    // No credential, a bad one, a valid one without the scope: refused, nothing written.
    let answer = https(http, ca, None, post(None)).await.expect("https");
    assert_refusal(&answer, 401, "CREDENTIALS_MISSING", "no token");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    let answer = https(http, ca, None, post(Some("not.a.jwt")))
        .await
        .expect("https");
    assert_refusal(&answer, 401, "CREDENTIALS_INVALID", "not a JWT");
    let admin_token = Pki::token_for(&pki.signer, "tester");
    let expired_token = pki.token_from(
        &pki.signer,
        secure::ISSUER,
        secure::AUDIENCE,
        all_scopes(),
        -600,
        -300,
    );
    let answer = https(http, ca, None, post(Some(&expired_token)))
        .await
        .expect("https");
    assert_refusal(&answer, 401, "CREDENTIALS_INVALID", "expired");
    let no_submit = pki.token(all_but("incidents.submit"));
    let answer = https(http, ca, None, post(Some(&no_submit)))
        .await
        .expect("https");
    assert_refusal(&answer, 403, "SCOPE_MISSING", "without incidents.submit");
    // A client certificate is a credential here too: its identity has directory.read only.
    let desk = pki
        .authority
        .client(secure::CLIENT_IDENTITY)
        .expect("client cert");
    let answer = https(http, ca, Some(&desk), post(None))
        .await
        .expect("https");
    assert_refusal(&answer, 403, "SCOPE_MISSING", "client certificate");
    // A token bound to another CAD may not post this CAD's EIDO.
    let other_cad = pki.bound_token(&["incidents.submit"], bound("cad-other"));
    let answer = https(http, ca, None, post(Some(&other_cad)))
        .await
        .expect("https");
    assert_refusal(&answer, 403, "CAD_SYSTEM_NOT_ALLOWED", "another CAD");
    let channel = tls_channel(&process, ca, None).await.expect("tls");
    let mut admin = intake_client(&channel, &admin_token);
    let listed = admin
        .list_incidents(relay_proto::intake::ListIncidentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert!(listed.is_empty(), "a refused EIDO wrote {listed:?}");

    // The CAD's own token with the scope posts it.
    let own = pki.bound_token(&["incidents.submit"], bound(SAMPLE_CAD));
    let answer = https(http, ca, None, post(Some(&own)))
        .await
        .expect("https");
    assert_eq!(answer.status, 201, "{answer:?}");
    let id = answer.json()["incidentId"]
        .as_str()
        .expect("incidentId")
        .to_owned();
    let path = format!("/EIDO/{id}");
    let get = |token| get(&path, token);

    // Reading it back needs incidents.read, the same CAD, and caller.details.read for the
    // caller's details.
    let answer = https(http, ca, None, get(None)).await.expect("https");
    assert_refusal(&answer, 401, "CREDENTIALS_MISSING", "read without token");
    let answer = https(http, ca, None, get(Some(&own))).await.expect("https");
    assert_refusal(&answer, 403, "SCOPE_MISSING", "read without incidents.read");
    let other_reader = pki.bound_token(&["incidents.read"], bound("cad-other"));
    let answer = https(http, ca, None, get(Some(&other_reader)))
        .await
        .expect("https");
    assert_refusal(&answer, 403, "CAD_SYSTEM_NOT_ALLOWED", "another CAD reads");
    let reader = pki.bound_token(&["incidents.read"], bound(SAMPLE_CAD));
    let answer = https(http, ca, None, get(Some(&reader)))
        .await
        .expect("https");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.body.contains("relay:caller-details-withheld"),
        "caller details are withheld without their scope: {}",
        answer.body
    );
    let full = pki.token(all_scopes());
    let answer = https(http, ca, None, get(Some(&full)))
        .await
        .expect("https");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(!answer.body.contains("relay:caller-details-withheld"));

    // The port's refusals are in intake's audit trail, as the gRPC port's are, and every
    // record of a call over HTTP names its peer and request id.
    let submit = String::from("/relay.intake.v1.IntakeService/SubmitEido");
    let read = String::from("/relay.intake.v1.IntakeService/GetEido");
    let trail = secure::trail::trail(&pki, "relay-intake");
    secure::trail::wait_for(
        &trail,
        &[
            (
                submit.clone(),
                "UNAUTHENTICATED",
                "CREDENTIALS_MISSING",
                "anonymous",
            ),
            (
                submit.clone(),
                "UNAUTHENTICATED",
                "CREDENTIALS_INVALID",
                "anonymous",
            ),
            (
                submit.clone(),
                "UNAUTHENTICATED",
                "CREDENTIALS_INVALID",
                "anonymous",
            ),
            (
                submit.clone(),
                "PERMISSION_DENIED",
                "SCOPE_MISSING",
                "tester",
            ),
            (
                submit.clone(),
                "PERMISSION_DENIED",
                "CAD_SYSTEM_NOT_ALLOWED",
                "tester",
            ),
            (submit.clone(), "OK", "", "tester"),
            (
                read.clone(),
                "UNAUTHENTICATED",
                "CREDENTIALS_MISSING",
                "anonymous",
            ),
            (read.clone(), "PERMISSION_DENIED", "SCOPE_MISSING", "tester"),
            (
                read.clone(),
                "PERMISSION_DENIED",
                "CAD_SYSTEM_NOT_ALLOWED",
                "tester",
            ),
        ],
        Duration::from_secs(15),
    )
    .await;
    let mut over_http = 0;
    trail
        .walk(
            0,
            (i64::MIN, i64::MAX),
            |entry| -> Result<(), sqlx::Error> {
                let record = &entry.record;
                if record.rpc == submit || record.rpc == read {
                    over_http += 1;
                    assert!(
                        record.peer.starts_with("127.0.0.1:") && !record.request_id.is_empty(),
                        "a record of a call over HTTP without its peer or request id: {record:?}"
                    );
                }
                Ok(())
            },
        )
        .await
        .expect("read the trail");
    assert!(over_http >= 9, "{over_http} records of calls over HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eido_over_http_shares_the_rate_limit_and_limits_refused_credentials() {
    let pki = Pki::new();
    let (process, http) = start_intake_http(
        &pki,
        &[
            ("RELAY_SECURITY__LIMITS__REQUESTS_PER_SECOND", "1"),
            ("RELAY_SECURITY__LIMITS__BURST", "3"),
            ("RELAY_SECURITY__LIMITS__REFUSALS_PER_SECOND", "1"),
            ("RELAY_SECURITY__LIMITS__REFUSALS_BURST", "3"),
        ],
    );
    let ca = pki.authority.cert_pem();
    let busy = Pki::token_for(&pki.signer, "cad-busy");
    let unknown = format!("/EIDO/{}", uuid::Uuid::new_v4());

    // The busy principal spends its burst over HTTP, then is told when to retry.
    let mut served = 0;
    let answer = loop {
        let answer = https(http, ca, None, ("GET", &unknown, Some(&busy), ""))
            .await
            .expect("https");
        if answer.status == 429 {
            break answer;
        }
        assert_eq!(answer.status, 404, "{answer:?}");
        served += 1;
        assert!(served <= 6, "never limited after {served} calls");
    };
    assert!(served >= 3, "the burst of 3 is served first, got {served}");
    assert_refusal(&answer, 429, "RATE_LIMITED", "over the limit");
    let retry: u64 = answer
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .expect("Retry-After in seconds");
    assert_eq!(retry, 1, "one per second, rounded up to a whole second");
    // Its gRPC calls draw on the same bucket.
    let channel = tls_channel(&process, ca, None).await.expect("tls");
    let refused = intake_client(&channel, &busy)
        .get_incident(relay_proto::intake::GetIncidentRequest {
            incident_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .expect_err("the same principal's budget");
    if refused.code() == Code::ResourceExhausted {
        assert_eq!(reason(&refused), "RATE_LIMITED");
        assert!(refused.get_error_details().retry_info().is_some());
    } else {
        // A token came back meanwhile (a slow machine): then it is spent, not limited.
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    }

    // Bad tokens from one address: a burst of 401s, then 429 with when to retry.
    let mut unauthorized = 0;
    let answer = loop {
        let answer = https(http, ca, None, ("GET", &unknown, Some("not.a.jwt"), ""))
            .await
            .expect("https");
        if answer.status == 429 {
            break answer;
        }
        assert_refusal(&answer, 401, "CREDENTIALS_INVALID", "bad token");
        unauthorized += 1;
        assert!(unauthorized <= 6, "never limited after {unauthorized}");
    };
    assert!(
        unauthorized >= 3,
        "the burst of 3 first, got {unauthorized}"
    );
    assert_refusal(&answer, 429, "RATE_LIMITED", "refusals over the limit");
    assert_eq!(answer.json()["error"]["code"], "ResourceExhausted");
    assert!(answer.header("retry-after").is_some(), "{answer:?}");
    // A valid credential from the same address is not affected.
    let calm = Pki::token_for(&pki.signer, "cad-calm");
    let answer = https(http, ca, None, ("GET", &unknown, Some(&calm), ""))
        .await
        .expect("https");
    assert_eq!(answer.status, 404, "{answer:?}");
}
