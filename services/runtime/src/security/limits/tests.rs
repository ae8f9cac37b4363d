//! The limits' unit tests.

use governor::clock::FakeRelativeClock;

use super::*;

fn settings(per_second: u32, burst: u32) -> LimitSettings {
    LimitSettings {
        requests_per_second: per_second,
        burst,
        service_requests_per_second: per_second * 10,
        service_burst: burst * 10,
        service_subjects: vec![String::from("intake-service")],
        ..LimitSettings::default()
    }
}

fn token(subject: &str) -> Principal {
    Principal::for_tests(subject, CredentialKind::Token)
}

#[test]
fn a_principal_over_its_burst_waits_for_its_next_token_and_others_do_not() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(&settings(2, 3), clock.clone());
    let (a, class) = limits.key_of(Some(&token("cad-a")), None);
    let (b, _) = limits.key_of(Some(&token("cad-b")), None);
    for _ in 0..3 {
        limits.check(&a, class).expect("within the burst");
    }
    let wait = limits.check(&a, class).expect_err("over the burst");
    // Two per second: the next token in half a second at most.
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    limits
        .check(&b, class)
        .expect("another principal has its own bucket");
    clock.advance(wait);
    limits
        .check(&a, class)
        .expect("a token came back after the wait");
    assert!(limits.check(&a, class).is_err(), "and only one");
}

#[test]
fn services_have_their_own_class_and_anonymous_callers_are_keyed_by_host() {
    let limits = RateLimits::with_clock(&settings(1, 1), FakeRelativeClock::default());
    let certificate = Principal::for_tests("spiffe://relay/intake", CredentialKind::Certificate);
    assert_eq!(limits.key_of(Some(&certificate), None).1, Class::Service);
    assert_eq!(
        limits.key_of(Some(&token("intake-service")), None).1,
        Class::Service
    );
    assert_eq!(
        limits.key_of(Some(&token("cad-a")), None).1,
        Class::Principal
    );
    let (service, class) = limits.key_of(Some(&certificate), None);
    for _ in 0..10 {
        limits
            .check(&service, class)
            .expect("the service burst is ten");
    }
    let development = Principal::development();
    let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
    let same_host: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
    assert_eq!(
        limits.key_of(Some(&development), Some(one)).0,
        limits.key_of(None, Some(same_host)).0,
        "one /64 is one host"
    );
    let v4: IpAddr = "10.1.2.3".parse().expect("ip");
    assert_eq!(limits.key_of(None, Some(v4)).0, "ip:10.1.2.3");
}

#[test]
fn idle_buckets_are_pruned() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(&settings(10, 2), clock.clone());
    for n in 0..50 {
        let (key, class) = limits.key_of(Some(&token(&format!("device-{n}"))), None);
        limits.check(&key, class).expect("first call");
    }
    assert_eq!(limits.tracked(), 50);
    clock.advance(Duration::from_secs(1));
    limits.prune();
    assert_eq!(limits.tracked(), 0, "every bucket is full again");
}

#[test]
fn refused_credentials_from_one_address_are_limited_and_valid_calls_are_not() {
    let clock = FakeRelativeClock::default();
    let limits = RateLimits::with_clock(
        &LimitSettings {
            refusals_per_second: 1,
            refusals_burst: 2,
            ..settings(100, 100)
        },
        clock.clone(),
    );
    let path = "/relay.intake.v1.IntakeService/GetIncident";
    let flooder: IpAddr = "10.0.0.1".parse().expect("ip");
    let other: IpAddr = "10.0.0.2".parse().expect("ip");
    let unauthenticated = || Status::unauthenticated("bad token");
    for _ in 0..2 {
        let status = limits.limit_refusal(path, Some(flooder), unauthenticated());
        assert_eq!(status.code(), Code::Unauthenticated, "within the burst");
    }
    let status = limits.limit_refusal(path, Some(flooder), unauthenticated());
    assert_eq!(status.code(), Code::ResourceExhausted);
    let details = status.get_error_details();
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, RATE_LIMITED);
    assert_eq!(info.domain, "relay.intake.v1");
    assert_eq!(
        info.metadata.get("class").map(String::as_str),
        Some("refused")
    );
    let wait = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("retry info");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // Another address, and other refusals (a valid credential without its scope), are
    // not counted against it.
    let status = limits.limit_refusal(path, Some(other), unauthenticated());
    assert_eq!(status.code(), Code::Unauthenticated);
    let denied = limits.limit_refusal(path, Some(flooder), Status::permission_denied("x"));
    assert_eq!(denied.code(), Code::PermissionDenied);
    let (key, class) = limits.key_of(Some(&token("cad-a")), Some(flooder));
    limits
        .check(&key, class)
        .expect("a valid credential passes");
    clock.advance(wait);
    let status = limits.limit_refusal(path, Some(flooder), unauthenticated());
    assert_eq!(status.code(), Code::Unauthenticated, "after the wait");
}

#[test]
fn the_refusal_carries_retry_info_and_its_reason() {
    let status = refusal(
        "relay.intake.v1",
        Class::Principal,
        Duration::from_micros(1_500),
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    let details = status.get_error_details();
    assert_eq!(
        details.retry_info().and_then(|info| info.retry_delay),
        Some(Duration::from_millis(2))
    );
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, RATE_LIMITED);
    assert_eq!(info.domain, "relay.intake.v1");
}

#[test]
fn limits_are_on_unless_no_credential_is_asked_and_zero_is_refused() {
    let defaults = LimitSettings::default();
    assert!(defaults.active(false));
    assert!(!defaults.active(true));
    let forced = LimitSettings {
        enabled: Some(true),
        ..LimitSettings::default()
    };
    assert!(forced.active(true));
    let error = LimitSettings {
        burst: 0,
        ..LimitSettings::default()
    }
    .validate()
    .expect_err("zero");
    assert!(
        error.to_string().contains("security.limits.burst"),
        "{error}"
    );
}
