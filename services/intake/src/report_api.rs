//! The gRPC surface of program reports: `relay.reports.v1.ReportService`, served by intake
//! beside `IntakeService`. It validates the request and hands it to [`crate::report`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use relay_proto::reports::{
    GetProgramReportRequest, GetProgramReportResponse, report_service_server::ReportService,
};
use relay_runtime::{error::ApiError, validate::Violations};
use tonic::{Request, Response, Status};

use crate::{
    core::Intake,
    report::{self, MAX_PERIOD_DAYS, ReportRequest},
    store::StoreError,
};

/// The error domain of ReportService: its proto package.
pub const DOMAIN: &str = "relay.reports.v1";

/// Serves `relay.reports.v1.ReportService` from intake's store.
#[derive(Debug, Clone)]
pub struct ReportServiceHandler {
    intake: Arc<Intake>,
}

impl ReportServiceHandler {
    /// A handler reading `intake`'s store and settings.
    #[must_use]
    pub fn new(intake: Arc<Intake>) -> Self {
        Self { intake }
    }
}

/// Checks a GetProgramReport request against the deployment's regions and program time
/// zones, and turns it into a [`ReportRequest`].
///
/// # Errors
/// `INVALID_ARGUMENT` naming each bad field (`REGION_UNKNOWN` for a region not served).
pub fn validate(
    request: &GetProgramReportRequest,
    intake: &Intake,
) -> Result<ReportRequest, ApiError> {
    let mut v = Violations::new();
    let time = |v: &mut Violations, field: &str, value: Option<&prost_types::Timestamp>| {
        if value.is_none() {
            v.add(field, "is required");
        }
        v.timestamp(field, value)
    };
    let from = time(&mut v, "from_time", request.from_time.as_ref());
    let to = time(&mut v, "to_time", request.to_time.as_ref());
    if let (Some(from), Some(to)) = (from, to) {
        check_period(&mut v, from, to);
    }
    v.optional_id("region", &request.region);
    v.finish()?;
    if !request.region.is_empty() && !intake.region_known(&request.region) {
        return Err(ApiError::invalid_with_reason(
            "REGION_UNKNOWN",
            "region",
            "is not a region this deployment serves",
        ));
    }
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::invalid("from_time", "is required"));
    };
    Ok(ReportRequest {
        from,
        to,
        region: request.region.clone(),
        time_zone: report::report_time_zone(&intake.settings.programs, &request.region),
    })
}

/// The period rules shared by the API and `relay report`: `from` before `to`, at most
/// [`MAX_PERIOD_DAYS`] apart. Violations name `to_time`.
pub fn check_period(v: &mut Violations, from: DateTime<Utc>, to: DateTime<Utc>) {
    if from >= to {
        v.add("to_time", "must be after from_time");
    } else if to - from > chrono::Duration::days(MAX_PERIOD_DAYS) {
        v.add(
            "to_time",
            format!("must be at most {MAX_PERIOD_DAYS} days after from_time"),
        );
    }
}

#[tonic::async_trait]
impl ReportService for ReportServiceHandler {
    async fn get_program_report(
        &self,
        request: Request<GetProgramReportRequest>,
    ) -> Result<Response<GetProgramReportResponse>, Status> {
        let principal = relay_runtime::security::auth::Principal::of_call(&request, DOMAIN)?;
        let mut request = request.into_inner();
        let mut query = validate(&request, &self.intake).map_err(|e| e.into_status(DOMAIN))?;
        // A region-bound credential reads its own region's report: an empty region is filled
        // in when it has one, another region is refused.
        let region = principal.region_filter(&request.region)?;
        if region != request.region {
            request.region = region;
            query = validate(&request, &self.intake).map_err(|e| e.into_status(DOMAIN))?;
        }
        let now = DateTime::<Utc>::from_timestamp_micros(self.intake.clock.now_micros())
            .unwrap_or_default();
        let report = report::compute(self.intake.store.as_ref(), query, now)
            .await
            .map_err(|error| store_error(error).into_status(DOMAIN))?;
        Ok(Response::new(GetProgramReportResponse {
            report: Some(report.to_proto()),
        }))
    }
}

fn store_error(error: StoreError) -> ApiError {
    crate::api_error(crate::core::IntakeError::Store(error))
}
