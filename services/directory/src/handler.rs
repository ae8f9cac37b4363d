//! The gRPC handlers of `relay.directory.v1.DirectoryService`: validation first, then the
//! store. The store filters, ranks (relevance, distance, name, ids; see
//! [`crate::store::RankKey`]) and pages; opening hours are checked here.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use prost::Message;
use relay_proto::directory::{
    CreateReferralRequest, CreateReferralResponse, GetServiceRequest, GetServiceResponse,
    ListReferralsRequest, ListReferralsResponse, Referral, ReferralStatus, SearchResult,
    SearchServicesRequest, SearchServicesResponse, Service, ServiceLocation, ServiceStatus,
    UpdateCapacityRequest, UpdateCapacityResponse, UpdateReferralRequest, UpdateReferralResponse,
    UpsertServiceRequest, UpsertServiceResponse, directory_service_server::DirectoryService,
};
use relay_proto::intake::{GetIncidentRequest, intake_service_client::IntakeServiceClient};
use relay_runtime::geo;
use relay_runtime::{
    client::TracePropagation,
    error::ApiError,
    paging::PageTokens,
    validate::{Violations, to_timestamp},
};
use tonic::{Request, Response, Status};

use crate::{
    DOMAIN,
    error::{DirectoryError, REQUEST_ID_REUSED},
    schedule::{self, Hours},
    store::{
        Candidate, CandidateFilter, DirectoryStore, Idem, LocationHours, RankKey, ReferralFilter,
    },
};
use relay_runtime::clock::{Clock, SystemClock};

/// Longest free-text query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// Largest search radius, in meters.
pub const MAX_RADIUS_METERS: f64 = 500_000.0;
/// Longest referral notes, in bytes.
pub const MAX_NOTES_BYTES: usize = 4096;
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
pub use relay_runtime::geo::EARTH_RADIUS_METERS;

/// Handles `relay.directory.v1.DirectoryService` calls on a store.
#[derive(Debug, Clone)]
pub struct DirectoryServiceHandler<S> {
    store: S,
    tokens: PageTokens,
    clock: Arc<dyn Clock>,
    intake: Option<IntakeClient>,
}

/// A client of intake, for checking that a referral's incident exists.
pub type IntakeClient = IntakeServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TracePropagation>,
>;

/// What intake said about an incident.
fn incident_check(incident_id: &str, answer: Result<(), Status>) -> Result<bool, DirectoryError> {
    match answer {
        Ok(()) => Ok(true),
        Err(status) if status.code() == tonic::Code::NotFound => {
            Err(DirectoryError::IncidentNotFound(incident_id.to_owned()))
        }
        // Down, slow, or refusing us: a referral is never lost to intake; it is recorded
        // unchecked and the answer says so.
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "intake did not confirm the incident; recording the referral unchecked");
            Ok(false)
        }
    }
}

impl<S: DirectoryStore> DirectoryServiceHandler<S> {
    /// A handler on `store`, signing page tokens with `tokens`, on the system clock.
    pub fn new(store: S, tokens: PageTokens) -> Self {
        Self::with_clock(store, tokens, Arc::new(SystemClock))
    }

    /// A handler whose mutations are stamped with `clock`'s time.
    pub fn with_clock(store: S, tokens: PageTokens, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            tokens,
            clock,
            intake: None,
        }
    }

    /// Checks each new referral's incident with intake first (see CreateReferral).
    #[must_use]
    pub fn with_intake(mut self, intake: IntakeClient) -> Self {
        self.intake = Some(intake);
        self
    }

    /// Whether intake confirmed `incident_id`: `Ok(false)` when not checked (no intake
    /// configured, or intake did not answer).
    async fn check_incident(&self, incident_id: &str) -> Result<bool, DirectoryError> {
        let Some(mut intake) = self.intake.clone() else {
            return Ok(false);
        };
        let answer = intake
            .get_incident(GetIncidentRequest {
                incident_id: incident_id.to_owned(),
                ..GetIncidentRequest::default()
            })
            .await
            .map(|_| ());
        incident_check(incident_id, answer)
    }
}

fn status(error: DirectoryError) -> Status {
    if let DirectoryError::ReferralExists(id) = &error
        && !id.is_empty()
    {
        return relay_runtime::error::status(
            tonic::Code::AlreadyExists,
            DOMAIN,
            crate::error::REFERRAL_ALREADY_EXISTS,
            error.to_string(),
            HashMap::from([("referral_id".to_owned(), id.clone())]),
        );
    }
    ApiError::from(error).into_status(DOMAIN)
}

fn api(error: ApiError) -> Status {
    error.into_status(DOMAIN)
}

/// Great-circle distance in meters between two (latitude, longitude) pairs, in the one
/// geometry of `relay_runtime::geo`.
#[must_use]
pub fn distance_meters(a: (f64, f64), b: (f64, f64)) -> f64 {
    geo::distance_meters(geo::Point::new(a.0, a.1), geo::Point::new(b.0, b.1))
}

/// A (min latitude, max latitude, min longitude, max longitude) box that contains every point
/// within `radius` meters of `center`.
pub(crate) fn bounding_box(center: (f64, f64), radius: f64) -> (f64, f64, f64, f64) {
    let b = geo::bounding_box(geo::Point::new(center.0, center.1), radius);
    (
        b.min_latitude,
        b.max_latitude,
        b.min_longitude,
        b.max_longitude,
    )
}

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
    let mut seen = std::collections::HashSet::new();
    for (i, location) in service.locations.iter().enumerate() {
        let field = format!("service.locations[{i}]");
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
}

/// A result before its service is loaded; the key is also the page token's cursor.
struct Hit {
    key: RankKey,
    relevance: f64,
    distance: f64,
}

impl From<RankKey> for Hit {
    fn from(key: RankKey) -> Self {
        Self {
            relevance: -key.r,
            distance: key.d,
            key,
        }
    }
}

/// Parsed opening hours of one location.
fn parse_hours(hours: &LocationHours) -> (Tz, Vec<Hours>) {
    let tz = schedule::parse_time_zone(&hours.time_zone).unwrap_or(Tz::UTC);
    (
        tz,
        hours
            .schedules
            .iter()
            .filter_map(|s| Hours::parse(s).ok())
            .collect(),
    )
}

fn location_hours(location: &ServiceLocation) -> (Tz, Vec<Hours>) {
    parse_hours(&LocationHours {
        time_zone: location.time_zone.clone(),
        schedules: location.schedules.clone(),
    })
}

impl<S: DirectoryStore> DirectoryServiceHandler<S> {
    /// The original response of a request already recorded under `request_id`, or `None`.
    async fn replay<R: Message + Default>(&self, idem: &Idem) -> Result<Option<R>, Status> {
        let Some(stored) = self
            .store
            .lookup_request(&idem.request_id)
            .await
            .map_err(status)?
        else {
            return Ok(None);
        };
        if stored.rpc != idem.rpc || stored.fingerprint != idem.fingerprint {
            return Err(api(ApiError::invalid_with_reason(
                REQUEST_ID_REUSED,
                "request_id",
                "was already used for a different request",
            )));
        }
        R::decode(stored.response.as_slice())
            .map(Some)
            .map_err(|e| status(DirectoryError::Corrupt(e.to_string())))
    }

    /// Runs a mutation once per request_id: replays the recorded response on a retry, and
    /// after losing a race with a concurrent retry.
    async fn once<R, F, Fut>(&self, idem: Idem, run: F) -> Result<Response<R>, Status>
    where
        R: Message + Default,
        F: FnOnce(Idem) -> Fut,
        Fut: Future<Output = Result<R, DirectoryError>>,
    {
        if let Some(response) = self.replay::<R>(&idem).await? {
            return Ok(Response::new(response));
        }
        match run(idem.clone()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(DirectoryError::RequestRace(_)) => match self.replay::<R>(&idem).await? {
                Some(response) => Ok(Response::new(response)),
                None => Err(Status::aborted("concurrent request; retry")),
            },
            Err(error) => Err(status(error)),
        }
    }

    fn idem(&self, rpc: &'static str, request_id: &str, request: &impl Message) -> Idem {
        Idem {
            request_id: request_id.to_owned(),
            rpc,
            fingerprint: request.encode_to_vec(),
            now: self.clock.now_micros(),
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn search(
        &self,
        request: SearchServicesRequest,
    ) -> Result<SearchServicesResponse, Status> {
        let SearchChecked {
            point,
            radius,
            open_at,
            page_size,
        } = check_search(&request).map_err(api)?;

        let scope = format!(
            "search\u{1}{}\u{1}{:?}\u{1}{}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{}",
            request.query,
            point,
            radius,
            request.taxonomy_codes,
            open_at.map(|t| t.timestamp_micros()),
            request.languages,
            request.accepting_only
        );
        let cursor: Option<RankKey> = self
            .tokens
            .decode("page_token", &scope, &request.page_token)
            .map_err(api)?;
        let query = request.query.trim();
        if !query.is_empty() && !query.chars().any(char::is_alphanumeric) {
            return Ok(SearchServicesResponse::default());
        }
        let at = open_at.unwrap_or_else(|| self.clock.now());
        let mut filter = CandidateFilter {
            text: (!query.is_empty()).then(|| query.to_owned()),
            point,
            radius,
            bounding_box: point
                .filter(|_| radius > 0.0)
                .map(|p| bounding_box(p, radius)),
            taxonomy_codes: request.taxonomy_codes.clone(),
            languages: request
                .languages
                .iter()
                .map(|l| l.to_ascii_lowercase())
                .collect(),
            accepting_only: request.accepting_only,
            after: cursor,
            limit: 0,
        };
        let want = page_size + 1;
        // The store ranks and pages; only opening hours are checked here, so with open_at
        // read ahead in batches until a page is full.
        let batch = if open_at.is_some() {
            (want * 2).max(100)
        } else {
            want
        };
        filter.limit = i64::try_from(batch).unwrap_or(500);
        let mut hits: Vec<Hit> = Vec::new();
        loop {
            let candidates = self
                .store
                .search_candidates(&filter)
                .await
                .map_err(status)?;
            let exhausted = candidates.len() < batch;
            if let Some(last) = candidates.last() {
                filter.after = Some(last.key.clone());
            }
            if open_at.is_some() {
                hits.extend(self.keep_open(candidates, at).await?);
            } else {
                hits.extend(candidates.into_iter().map(|c| Hit::from(c.key)));
            }
            if hits.len() >= want || exhausted {
                break;
            }
        }
        let more = hits.len() > page_size;
        hits.truncate(page_size);
        let next_page_token = match (more, hits.last()) {
            (true, Some(last)) => self.tokens.encode(&scope, &last.key),
            _ => String::new(),
        };
        let mut ids: Vec<String> = hits.iter().map(|h| h.key.s.clone()).collect();
        ids.sort();
        ids.dedup();
        let services: HashMap<String, Service> = self
            .store
            .get_services(&ids)
            .await
            .map_err(status)?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let results = hits
            .into_iter()
            .filter_map(|hit| {
                let service = services.get(&hit.key.s)?.clone();
                let location = service
                    .locations
                    .iter()
                    .find(|l| l.location_id == hit.key.l);
                let (open_now, next_open_time, capacity) = match location {
                    Some(location) => {
                        let (tz, hours) = location_hours(location);
                        let open = schedule::is_open(tz, &hours, at);
                        let next = if open {
                            None
                        } else {
                            schedule::next_open(tz, &hours, at).map(to_timestamp)
                        };
                        (open, next, location.capacity)
                    }
                    None => (false, None, None),
                };
                Some(SearchResult {
                    service: Some(service),
                    location_id: hit.key.l,
                    distance_meters: hit.distance,
                    open_now,
                    next_open_time,
                    capacity,
                    relevance: hit.relevance,
                })
            })
            .collect();
        Ok(SearchServicesResponse {
            results,
            next_page_token,
        })
    }

    /// The candidates whose location is open at `at`, as hits. Hours the store did not
    /// return with the candidates are read in one more query.
    async fn keep_open(
        &self,
        candidates: Vec<Candidate>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Hit>, Status> {
        let missing: Vec<(String, String)> = candidates
            .iter()
            .filter(|c| c.hours.is_none() && !c.key.l.is_empty())
            .map(|c| (c.key.s.clone(), c.key.l.clone()))
            .collect();
        let read = if missing.is_empty() {
            HashMap::new()
        } else {
            self.store.hours(&missing).await.map_err(status)?
        };
        Ok(candidates
            .into_iter()
            .filter(|c| {
                if c.key.l.is_empty() {
                    return false;
                }
                let hours = match &c.hours {
                    Some(hours) => Some(hours),
                    None => read.get(&(c.key.s.clone(), c.key.l.clone())),
                };
                hours.is_some_and(|hours| {
                    let (tz, parsed) = parse_hours(hours);
                    schedule::is_open(tz, &parsed, at)
                })
            })
            .map(|c| Hit::from(c.key))
            .collect())
    }
}

#[tonic::async_trait]
impl<S: DirectoryStore> DirectoryService for DirectoryServiceHandler<S> {
    async fn search_services(
        &self,
        request: Request<SearchServicesRequest>,
    ) -> Result<Response<SearchServicesResponse>, Status> {
        self.search(request.into_inner()).await.map(Response::new)
    }

    async fn get_service(
        &self,
        request: Request<GetServiceRequest>,
    ) -> Result<Response<GetServiceResponse>, Status> {
        let request = request.into_inner();
        check_get_service(&request).map_err(api)?;
        let service = self
            .store
            .get_services(std::slice::from_ref(&request.service_id))
            .await
            .map_err(status)?
            .pop()
            .ok_or_else(|| status(DirectoryError::ServiceNotFound(request.service_id.clone())))?;
        Ok(Response::new(GetServiceResponse {
            service: Some(service),
        }))
    }

    async fn upsert_service(
        &self,
        request: Request<UpsertServiceRequest>,
    ) -> Result<Response<UpsertServiceResponse>, Status> {
        let request = request.into_inner();
        check_upsert_service(&request).map_err(api)?;
        let idem = self.idem("UpsertService", &request.request_id, &request);
        let mut service = request.service.unwrap_or_default();
        for location in &mut service.locations {
            location.capacity = None;
        }
        service.create_time = None;
        service.update_time = None;
        tracing::info!(service_id = %service.id, "upserting service");
        self.once(idem, |idem| async move {
            self.store.upsert_service(&service, &idem).await
        })
        .await
    }

    async fn update_capacity(
        &self,
        request: Request<UpdateCapacityRequest>,
    ) -> Result<Response<UpdateCapacityResponse>, Status> {
        let request = request.into_inner();
        check_update_capacity(&request, self.clock.now()).map_err(api)?;
        let idem = self.idem("UpdateCapacity", &request.request_id, &request);
        let capacity = relay_proto::directory::Capacity {
            available: request.available,
            total: request.total,
            as_of_time: request.as_of_time,
        };
        self.once(idem, |idem| async move {
            self.store
                .update_capacity(&request.service_id, &request.location_id, &capacity, &idem)
                .await
        })
        .await
    }

    async fn create_referral(
        &self,
        request: Request<CreateReferralRequest>,
    ) -> Result<Response<CreateReferralResponse>, Status> {
        let request = request.into_inner();
        check_create_referral(&request).map_err(api)?;
        let idem = self.idem("CreateReferral", &request.request_id, &request);
        let referral = Referral {
            referral_id: uuid::Uuid::now_v7().to_string(),
            incident_id: request.incident_id.clone(),
            service_id: request.service_id.clone(),
            location_id: request.location_id.clone(),
            status: ReferralStatus::Pending as i32,
            notes: request.notes.clone(),
            create_time: None,
            update_time: None,
            incident_checked: false,
        };
        tracing::info!(referral_id = %referral.referral_id, service_id = %referral.service_id, "creating referral");
        self.once(idem, |idem| async move {
            let mut referral = referral;
            referral.incident_checked = self.check_incident(&referral.incident_id).await?;
            self.store.create_referral(&referral, &idem).await
        })
        .await
    }

    async fn update_referral(
        &self,
        request: Request<UpdateReferralRequest>,
    ) -> Result<Response<UpdateReferralResponse>, Status> {
        let request = request.into_inner();
        let new_status = check_update_referral(&request).map_err(api)?;
        let idem = self.idem("UpdateReferral", &request.request_id, &request);
        self.once(idem, |idem| async move {
            self.store
                .update_referral(
                    &request.referral_id,
                    new_status,
                    request.notes.as_deref(),
                    &idem,
                )
                .await
        })
        .await
    }

    async fn list_referrals(
        &self,
        request: Request<ListReferralsRequest>,
    ) -> Result<Response<ListReferralsResponse>, Status> {
        let request = request.into_inner();
        let page_size = check_list_referrals(&request).map_err(api)?;
        let scope = format!(
            "referrals\u{1}{}\u{1}{}\u{1}{}",
            request.incident_id, request.service_id, request.status
        );
        let after: Option<(i64, String)> = self
            .tokens
            .decode("page_token", &scope, &request.page_token)
            .map_err(api)?;
        let mut referrals = self
            .store
            .list_referrals(&ReferralFilter {
                incident_id: request.incident_id,
                service_id: request.service_id,
                status: request.status,
                after,
                limit: i64::try_from(page_size + 1).unwrap_or(501),
            })
            .await
            .map_err(status)?;
        let more = referrals.len() > page_size;
        referrals.truncate(page_size);
        let next_page_token = match (more, referrals.last()) {
            (true, Some(last)) => self.tokens.encode(
                &scope,
                &(
                    last.create_time
                        .as_ref()
                        .map_or(0, crate::timestamp_to_micros),
                    last.referral_id.clone(),
                ),
            ),
            _ => String::new(),
        };
        Ok(Response::new(ListReferralsResponse {
            referrals,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_boxes_agree() {
        let portland = (45.5152, -122.6784);
        let eugene = (44.0521, -123.0868);
        let d = distance_meters(portland, eugene);
        assert!((d - 165_000.0).abs() < 3_000.0, "{d}");
        let (min_lat, max_lat, min_lon, max_lon) = bounding_box(portland, d);
        assert!((min_lat..=max_lat).contains(&eugene.0));
        assert!((min_lon..=max_lon).contains(&eugene.1));
    }

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
