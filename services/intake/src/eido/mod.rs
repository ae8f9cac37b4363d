//! NENA EIDO (NENA-STA-021, the JSON Emergency Incident Data Object) in and out.
//!
//! In: [`submission`] reads an EIDO document, checks what Relay relies on (each problem named
//! by its JSON path, for example `locationComponent[0].locationByValue`), and maps it onto a
//! [`SubmitIncidentRequest`], which then goes through the same validation and the same
//! [`Intake::submit`] as SubmitIncident. Out: [`render`] writes an [`Incident`] as an EIDO.
//! docs/intake.md has the field-by-field mapping.
//!
//! Caller names and numbers pass through here; nothing in this module logs them.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use relay_proto::{
    common::GeoPoint,
    intake::{
        CallerContact, CloseOutcome, Disposition, Incident, IncidentState, RiskFlag, RoutingState,
        StepTime, SubmitIncidentRequest,
    },
};
use relay_runtime::error::{ApiError, FieldViolation};
use serde_json::{Map, Value, json};

use crate::{
    apco,
    core::{Intake, Submitted},
    store::timestamp_of,
    validate::{MAX_ADDRESS, MAX_NARRATIVE_BYTES},
};

mod reader;
use reader::*;
mod submission;
pub use submission::*;
mod render;
pub use render::*;

/// Largest EIDO document accepted, in bytes.
pub const MAX_EIDO_BYTES: usize = 1024 * 1024;

/// The incident type given to an EIDO without an incident component: not an APCO code, so
/// triage decides NEEDS_REVIEW and a dispatcher decides.
pub const NO_INCIDENT_TYPE: &str = "UNKNOWN";

/// The priority of an EIDO that gives none (the middle of 1..5).
pub const DEFAULT_PRIORITY: i32 = 3;

/// The agency id Relay signs the EIDOs it writes with.
pub const RELAY_AGENCY: &str = "relay.community-response";

/// Where each Relay field came from in the EIDO, so that a violation found by the common
/// SubmitIncident validation still names a JSON path.
#[derive(Debug, Default, Clone)]
pub struct Origins {
    fields: Vec<(&'static str, String)>,
}

impl Origins {
    fn set(&mut self, field: &'static str, path: impl Into<String>) {
        self.fields.push((field, path.into()));
    }

    /// The JSON path a Relay field came from (the field itself when unknown).
    #[must_use]
    pub fn path_of(&self, field: &str) -> String {
        self.fields
            .iter()
            .rev()
            .find(|(f, _)| field == *f || field.starts_with(&format!("{f}.")))
            .map_or_else(|| field.to_owned(), |(_, path)| path.clone())
    }
}

/// The region EIDO incidents go to: `[intake] eido_region`, else the first configured
/// region, else "default".
fn region(intake: &Intake) -> String {
    intake
        .settings
        .eido_region
        .clone()
        .or_else(|| intake.settings.regions.first().cloned())
        .unwrap_or_else(|| "default".to_owned())
}

/// Accepts an EIDO: maps it, validates it as SubmitIncident does, and submits it.
///
/// # Errors
/// INVALID_ARGUMENT naming JSON paths; the errors of SubmitIncident otherwise.
pub async fn submit(intake: &Arc<Intake>, text: &str) -> Result<Submitted, ApiError> {
    let new = prepare(intake, text)?;
    intake.submit(new).await.map_err(crate::handler::api_error)
}

/// Maps an EIDO and validates it as SubmitIncident does: the incident to submit, so that the
/// gRPC handler can check the credential's CAD and region before anything is written.
///
/// # Errors
/// INVALID_ARGUMENT naming JSON paths.
pub fn prepare(intake: &Arc<Intake>, text: &str) -> Result<crate::core::NewIncident, ApiError> {
    let defaults = EidoDefaults {
        region: region(intake),
        now_micros: intake.clock().now_micros(),
    };
    let (request, origins) = submission(text, &defaults)?;
    crate::validate::validate_submit(intake, request).map_err(|error| match error {
        ApiError::InvalidArgument { reason, violations } => ApiError::InvalidArgument {
            reason,
            violations: violations
                .into_iter()
                .map(|v| FieldViolation::new(origins.path_of(&v.field), v.description))
                .collect(),
        },
        other => other,
    })
}

/// One incident as an EIDO JSON document.
///
/// # Errors
/// NOT_FOUND when no incident has the id; INVALID_ARGUMENT when it is malformed.
pub async fn get(intake: &Intake, incident_id: &str) -> Result<String, ApiError> {
    check_id(incident_id)?;
    let stored = intake
        .get(incident_id)
        .await
        .map_err(crate::handler::api_error)?;
    Ok(render(&stored.incident).to_string())
}

/// Checks the incident_id of a GetEido request.
///
/// # Errors
/// INVALID_ARGUMENT when it is missing or malformed.
pub fn check_id(incident_id: &str) -> Result<(), ApiError> {
    let mut v = relay_runtime::validate::Violations::new();
    v.id("incident_id", incident_id);
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_gml_point_and_a_civic_address() {
        let xml = "<presence><gp:location-info><gml:Point><gml:pos>44.05 -123.09</gml:pos></gml:Point><civicAddress><country>US</country><A1>OR</A1><A3>Eugene</A3><RD>Main</RD><STS>St</STS><HNO>1234</HNO></civicAddress></gp:location-info></presence>";
        let point = pidf_point(xml).expect("a valid pos").expect("a point");
        assert!((point.latitude - 44.05).abs() < 1e-9);
        assert!((point.longitude + 123.09).abs() < 1e-9);
        assert_eq!(
            pidf_civic_address(xml).as_deref(),
            Some("1234 Main St, Eugene OR, US")
        );
        assert!(pidf_point("<gml:pos>91 0</gml:pos>").is_err());
        assert!(pidf_point("<gml:pos>north</gml:pos>").is_err());
    }

    #[test]
    fn origins_name_the_json_path() {
        let mut origins = Origins::default();
        origins.set("location", "locationComponent[1].locationByValue");
        assert_eq!(
            origins.path_of("location.latitude"),
            "locationComponent[1].locationByValue"
        );
        assert_eq!(origins.path_of("region"), "region");
    }
}
