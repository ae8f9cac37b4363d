//! The gRPC handlers of `relay.directory.v1.DirectoryService`: each validates its request
//! ([`crate::validate`]), translates it, lets the domain decide ([`crate::search`],
//! [`crate::referral`]) and the store persist, and runs mutations once per request_id.

use std::{collections::HashMap, sync::Arc};

use prost::Message;
use relay_proto::directory::{
    CreateReferralRequest, CreateReferralResponse, GetServiceRequest, GetServiceResponse,
    ListReferralsRequest, ListReferralsResponse, Referral, ReferralStatus, SearchServicesRequest,
    SearchServicesResponse, Service, UpdateCapacityRequest, UpdateCapacityResponse,
    UpdateReferralRequest, UpdateReferralResponse, UpsertServiceRequest, UpsertServiceResponse,
    directory_service_server::DirectoryService,
};
use relay_proto::intake::{GetIncidentRequest, intake_service_client::IntakeServiceClient};
use relay_runtime::geo::{self, Point};
use relay_runtime::{
    audit::AuditRecord,
    client::TracePropagation,
    error::ApiError,
    idempotency::{self, ReplayError},
    paging::PageTokens,
};
use tonic::{Request, Response, Status};

use crate::{
    DOMAIN,
    error::{DirectoryError, REQUEST_ID_REUSED},
    search::{self, CandidateFilter, Pager, RankKey},
    store::{DirectoryStore, Idem, ReferralFilter},
};
// The validators stay reachable where the fuzz target and docs/fuzzing.md name them, as in
// the other services (`relay_<service>::handler::check_*`).
pub use crate::validate::{
    SearchChecked, check_create_referral, check_get_service, check_list_referrals, check_search,
    check_update_capacity, check_update_referral, check_upsert_service,
};
use relay_runtime::clock::{Clock, SystemClock};

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
        match idempotency::replay_stored(
            &stored.rpc,
            &stored.fingerprint,
            &stored.response,
            &idem.fingerprint,
        ) {
            Ok(response) => Ok(Some(response)),
            Err(ReplayError::Reused) => Err(api(ApiError::invalid_with_reason(
                REQUEST_ID_REUSED,
                "request_id",
                "was already used for a different request",
            ))),
            Err(ReplayError::Corrupt(e)) => Err(status(DirectoryError::Corrupt(e.to_string()))),
        }
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
            fingerprint: idempotency::fingerprint(rpc, request),
            now: self.clock.now_micros(),
            audit: None,
        }
    }

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
        let point = point.map(|(latitude, longitude)| Point::new(latitude, longitude));
        let filter = CandidateFilter {
            text: (!query.is_empty()).then(|| query.to_owned()),
            point,
            radius,
            bounding_box: point
                .filter(|_| radius > 0.0)
                .map(|p| geo::bounding_box(p, radius)),
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
        let at = open_at.unwrap_or_else(|| self.clock.now());
        let mut pager = Pager::new(filter, open_at, page_size);
        while let Some(filter) = pager.next() {
            let candidates = self.store.search_candidates(filter).await.map_err(status)?;
            let missing = pager.missing_hours(&candidates);
            let read = if missing.is_empty() {
                HashMap::new()
            } else {
                self.store.hours(&missing).await.map_err(status)?
            };
            pager.take(candidates, &read);
        }
        let (hits, more) = pager.finish();
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
        Ok(SearchServicesResponse {
            results: search::results(hits, &services, at),
            next_page_token,
        })
    }
}

/// The audit record of a write, committed with its change (see [`Idem::audit`]).
struct Audited(AuditRecord);

impl Audited {
    /// `idem` carrying this record.
    fn of(self, idem: Idem) -> Idem {
        Idem {
            audit: Some(self.0),
            ..idem
        }
    }
}

/// The record of a call to the directory's `method`, naming the resources `resources` lists.
fn audited<T>(
    request: &Request<T>,
    method: &str,
    resources: impl Fn(&T) -> Vec<String>,
) -> Audited {
    Audited(AuditRecord::of_call(
        request,
        &format!("/relay.directory.v1.DirectoryService/{method}"),
        resources(request.get_ref()),
    ))
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
        let audit = audited(&request, "UpsertService", |r| {
            vec![format!(
                "service:{}",
                r.service.as_ref().map_or("", |s| s.id.as_str())
            )]
        });
        let request = request.into_inner();
        check_upsert_service(&request).map_err(api)?;
        let idem = audit.of(self.idem("UpsertService", &request.request_id, &request));
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
        let audit = audited(&request, "UpdateCapacity", |r| {
            vec![
                format!("service:{}", r.service_id),
                format!("location:{}", r.location_id),
            ]
        });
        let request = request.into_inner();
        check_update_capacity(&request, self.clock.now()).map_err(api)?;
        let idem = audit.of(self.idem("UpdateCapacity", &request.request_id, &request));
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
        let mut audit = audited(&request, "CreateReferral", |r| {
            vec![
                format!("incident:{}", r.incident_id),
                format!("service:{}", r.service_id),
            ]
        });
        let request = request.into_inner();
        check_create_referral(&request).map_err(api)?;
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
        audit
            .0
            .resources
            .push(format!("referral:{}", referral.referral_id));
        let idem = audit.of(self.idem("CreateReferral", &request.request_id, &request));
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
        let audit = audited(&request, "UpdateReferral", |r| {
            vec![format!("referral:{}", r.referral_id)]
        });
        let request = request.into_inner();
        let new_status = check_update_referral(&request).map_err(api)?;
        let idem = audit.of(self.idem("UpdateReferral", &request.request_id, &request));
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
