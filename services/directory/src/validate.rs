//! Validation of every DirectoryService request, before it reaches the domain or the store:
//! each bad field is named in a google.rpc.BadRequest (INVALID_ARGUMENT). The fuzz target
//! `validators` feeds these arbitrary requests (through `handler`, which re-exports them).

use chrono::{DateTime, Duration, Utc};
use relay_proto::directory::{
    CreateReferralRequest, GetServiceRequest, ListReferralsRequest, ReferralStatus,
    SearchServicesRequest, Service, ServiceLocation, ServiceStatus, UpdateCapacityRequest,
    UpdateReferralRequest, UpsertServiceRequest,
};
use relay_runtime::{error::ApiError, validate::Violations};

use crate::schedule::{self, Hours};

/// Longest free-text query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// Largest search radius, in meters.
pub const MAX_RADIUS_METERS: f64 = 500_000.0;
/// Longest referral notes, in bytes.
pub const MAX_NOTES_BYTES: usize = 4096;
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 256;

fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && tag.len() <= 35
}

fn is_taxonomy_code(code: &str) -> bool {
    !code.is_empty()
        && code.chars().count() <= 64
        && code.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

fn is_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && url.len() <= 2048
        && !url.chars().any(char::is_whitespace)
}

fn is_email(email: &str) -> bool {
    email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(char::is_whitespace)
}

fn check_name(v: &mut Violations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else if value.chars().count() > MAX_NAME_CHARS {
        v.add(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        );
    }
}

/// The checked parameters of a SearchServices request.
#[derive(Debug, Clone, Copy)]
pub struct SearchChecked {
    /// The point searched around (latitude, longitude), if any.
    pub point: Option<(f64, f64)>,
    /// The radius in meters (0: none).
    pub radius: f64,
    /// The instant to check opening hours at, if any.
    pub open_at: Option<DateTime<Utc>>,
    /// The effective page size.
    pub page_size: usize,
}

/// Checks a SearchServices request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_search(request: &SearchServicesRequest) -> Result<SearchChecked, ApiError> {
    let mut v = Violations::new();
    if request.query.chars().count() > MAX_QUERY_CHARS {
        v.add(
            "query",
            format!("must be at most {MAX_QUERY_CHARS} characters"),
        );
    }
    let point = request
        .location
        .as_ref()
        .and_then(|p| v.geo_point("location", Some(p)))
        .map(|p| (p.latitude, p.longitude));
    let radius = request.radius_meters;
    if !radius.is_finite() || !(0.0..=MAX_RADIUS_METERS).contains(&radius) {
        v.add(
            "radius_meters",
            format!("must be from 0 to {MAX_RADIUS_METERS} meters"),
        );
    } else if radius > 0.0 && request.location.is_none() {
        v.add("radius_meters", "requires location");
    }
    for (i, code) in request.taxonomy_codes.iter().enumerate() {
        if !is_taxonomy_code(code) {
            v.add(
                format!("taxonomy_codes[{i}]"),
                "must be 1..64 characters without spaces",
            );
        }
    }
    for (i, language) in request.languages.iter().enumerate() {
        if !is_language_tag(language) {
            v.add(
                format!("languages[{i}]"),
                "must be a BCP-47 tag or ISO 639 code such as \"es\"",
            );
        }
    }
    let open_at = v.timestamp("open_at", request.open_at.as_ref());
    let page_size = v.page_size("page_size", request.page_size);
    v.finish()?;
    Ok(SearchChecked {
        point,
        radius,
        open_at,
        page_size,
    })
}

/// Checks an UpsertService request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_upsert_service(request: &UpsertServiceRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    validate_service(&mut v, request.service.as_ref());
    v.finish()
}

/// Checks an UpdateCapacity request, `now` being the server's clock.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_update_capacity(
    request: &UpdateCapacityRequest,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("service_id", &request.service_id);
    v.id("location_id", &request.location_id);
    if request.total < 0 {
        v.add("total", "must not be negative");
    }
    if request.available < 0 || request.available > request.total.max(0) {
        v.add("available", "must be from 0 to total");
    }
    match v.timestamp("as_of_time", request.as_of_time.as_ref()) {
        None if request.as_of_time.is_none() => v.add("as_of_time", "is required"),
        Some(time) if time > now + Duration::seconds(60) => {
            v.add(
                "as_of_time",
                "must not be more than 60 seconds ahead of the server's clock",
            );
        }
        _ => {}
    }
    v.finish()
}

/// Checks a CreateReferral request.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_create_referral(request: &CreateReferralRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("incident_id", &request.incident_id);
    v.id("service_id", &request.service_id);
    v.optional_id("location_id", &request.location_id);
    if request.notes.len() > MAX_NOTES_BYTES {
        v.add("notes", format!("must be at most {MAX_NOTES_BYTES} bytes"));
    }
    v.finish()
}

/// Checks an UpdateReferral request: the new status (UNSPECIFIED: unchanged).
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_update_referral(request: &UpdateReferralRequest) -> Result<ReferralStatus, ApiError> {
    let mut v = Violations::new();
    v.id("request_id", &request.request_id);
    v.id("referral_id", &request.referral_id);
    let status_value = if request.status == 0 {
        Some(ReferralStatus::Unspecified)
    } else {
        v.enum_value::<ReferralStatus>("status", request.status)
    };
    if request
        .notes
        .as_ref()
        .is_some_and(|n| n.len() > MAX_NOTES_BYTES)
    {
        v.add("notes", format!("must be at most {MAX_NOTES_BYTES} bytes"));
    }
    v.finish()?;
    Ok(status_value.unwrap_or(ReferralStatus::Unspecified))
}

/// Checks a ListReferrals request: the effective page size.
///
/// # Errors
/// INVALID_ARGUMENT naming each bad field.
pub fn check_list_referrals(request: &ListReferralsRequest) -> Result<usize, ApiError> {
    let mut v = Violations::new();
    v.optional_id("incident_id", &request.incident_id);
    v.optional_id("service_id", &request.service_id);
    if request.status != 0 {
        v.enum_value::<ReferralStatus>("status", request.status);
    }
    let page_size = v.page_size("page_size", request.page_size);
    v.finish()?;
    Ok(page_size)
}

/// Checks a GetService request.
///
/// # Errors
/// INVALID_ARGUMENT naming the bad field.
pub fn check_get_service(request: &GetServiceRequest) -> Result<(), ApiError> {
    let mut v = Violations::new();
    v.id("service_id", &request.service_id);
    v.finish()
}

/// Checks a service for UpsertService, naming each bad field under `service.`.
fn validate_service(v: &mut Violations, service: Option<&Service>) {
    let Some(service) = service else {
        v.add("service", "is required");
        return;
    };
    v.id("service.id", &service.id);
    check_name(v, "service.name", &service.name);
    v.enum_value::<ServiceStatus>("service.status", service.status);
    match &service.organization {
        None => v.add("service.organization", "is required"),
        Some(org) => {
            v.id("service.organization.id", &org.id);
            check_name(v, "service.organization.name", &org.name);
            if !org.url.is_empty() && !is_url(&org.url) {
                v.add(
                    "service.organization.url",
                    "must be an absolute http(s) URL",
                );
            }
            if !org.email.is_empty() && !is_email(&org.email) {
                v.add("service.organization.email", "must be an email address");
            }
        }
    }
    if !service.url.is_empty() && !is_url(&service.url) {
        v.add("service.url", "must be an absolute http(s) URL");
    }
    if !service.email.is_empty() && !is_email(&service.email) {
        v.add("service.email", "must be an email address");
    }
    validate_lists(v, service);
    let mut seen = std::collections::HashSet::new();
    for (i, location) in service.locations.iter().enumerate() {
        validate_location(v, &format!("service.locations[{i}]"), location, &mut seen);
    }
}

/// Checks a service's taxonomy terms, languages and phones.
fn validate_lists(v: &mut Violations, service: &Service) {
    for (i, term) in service.taxonomy_terms.iter().enumerate() {
        v.id(&format!("service.taxonomy_terms[{i}].id"), &term.id);
        if !is_taxonomy_code(&term.code) {
            v.add(
                format!("service.taxonomy_terms[{i}].code"),
                "is required: 1..64 characters without spaces",
            );
        }
        v.optional_id(
            &format!("service.taxonomy_terms[{i}].parent_id"),
            &term.parent_id,
        );
    }
    for (i, language) in service.languages.iter().enumerate() {
        if !is_language_tag(language) {
            v.add(
                format!("service.languages[{i}]"),
                "must be a BCP-47 tag or ISO 639 code such as \"es\" or \"zh-Hant\"",
            );
        }
    }
    for (i, phone) in service.phones.iter().enumerate() {
        if phone.number.trim().is_empty() || phone.number.len() > 64 {
            v.add(
                format!("service.phones[{i}].number"),
                "is required, at most 64 characters",
            );
        }
        if !phone.extension.bytes().all(|b| b.is_ascii_digit()) || phone.extension.len() > 16 {
            v.add(
                format!("service.phones[{i}].extension"),
                "must be digits only",
            );
        }
    }
}

/// Checks one location of a service, named `field`; `seen` holds the location ids before it.
fn validate_location<'a>(
    v: &mut Violations,
    field: &str,
    location: &'a ServiceLocation,
    seen: &mut std::collections::HashSet<&'a str>,
) {
    v.id(&format!("{field}.location_id"), &location.location_id);
    if !location.location_id.is_empty() && !seen.insert(location.location_id.as_str()) {
        v.add(
            format!("{field}.location_id"),
            "is a duplicate: location ids are unique within a service",
        );
    }
    if let Some(point) = &location.point {
        v.geo_point(&format!("{field}.point"), Some(point));
    }
    if location.time_zone.is_empty() {
        if !location.schedules.is_empty() {
            v.add(
                format!("{field}.time_zone"),
                "is required when the location has schedules",
            );
        }
    } else if schedule::parse_time_zone(&location.time_zone).is_none() {
        v.add(
            format!("{field}.time_zone"),
            "must be an IANA time zone name such as \"America/Los_Angeles\"",
        );
    }
    if let Some(address) = &location.address
        && address.address_1.trim().is_empty()
    {
        v.add(
            format!("{field}.address.address_1"),
            "is required when an address is given",
        );
    }
    for (j, s) in location.schedules.iter().enumerate() {
        if let Err(problems) = Hours::parse(s) {
            for (name, description) in problems {
                v.add(format!("{field}.schedules[{j}].{name}"), description);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_codes_urls_and_emails() {
        assert!(is_language_tag("es"));
        assert!(is_language_tag("zh-Hant"));
        assert!(!is_language_tag("spanish"));
        assert!(!is_language_tag("e s"));
        assert!(is_taxonomy_code("BH-1800.8500"));
        assert!(!is_taxonomy_code("a b"));
        assert!(is_url("https://example.org/x"));
        assert!(!is_url("example.org"));
        assert!(is_email("a@example.org"));
        assert!(!is_email("a@b"));
    }
}
