//! The CAD's commands: submit, update, cancel and close. Each reads the incident, lets
//! [`domain`](super::domain) decide the change, and applies it with its idempotency record in
//! one store transaction (recomputing after a concurrent change).

use std::sync::Arc;

use prost::Message;
use relay_proto::intake::{CancelIncidentResponse, CloseIncidentResponse, UpdateIncidentResponse};
use relay_runtime::{
    audit::AuditRecord,
    idempotency::{RequestRecord, replay},
};

use super::{
    IncidentUpdate, Intake, IntakeError, MAX_CONFLICTS, NewIncident, Submitted,
    domain::{self, Decided, Rules},
};
use crate::{
    settings::IntakeSettings,
    store::{ChangeOutcome, CreateOutcome, StoredIncident},
};

/// A command on one incident: its idempotency key, the request's fingerprint, the RPC name,
/// and the audit record committed with its change.
struct Command<'a> {
    request_id: &'a str,
    fingerprint: &'a str,
    rpc: &'a str,
    incident_id: &'a str,
    audit: Option<AuditRecord>,
}

impl Intake {
    /// The rules decisions depend on.
    pub(crate) fn rules(&self) -> Rules<'_> {
        Rules {
            protocol: &self.protocol,
            programs: &self.programs,
        }
    }

    /// Accepts an incident (see `SubmitIncident`).
    ///
    /// # Errors
    /// When storage fails.
    pub async fn submit(self: &Arc<Self>, new: NewIncident) -> Result<Submitted, IntakeError> {
        self.submit_audited(new, None).await
    }

    /// [`Self::submit`], committing `audit` (the record of the call, to which the new
    /// incident's id is added) with the incident. A submission that finds its incident
    /// already there changes nothing and records nothing.
    ///
    /// # Errors
    /// When storage fails.
    pub async fn submit_audited(
        self: &Arc<Self>,
        new: NewIncident,
        mut audit: Option<AuditRecord>,
    ) -> Result<Submitted, IntakeError> {
        self.watch_region(&new.region);
        let now = self.now();
        let accepted = domain::plan_submit(new, &self.rules(), now);
        let mut assign = accepted.assign;
        if let Some(item) = &mut assign {
            // The submitting call delivers at once; the lease keeps the worker away meanwhile.
            item.next_attempt_at = now + self.lease_micros();
        }
        let stored = accepted.stored;
        let outbox = assign.iter().cloned().collect();
        if let Some(record) = &mut audit {
            record
                .resources
                .push(format!("incident:{}", stored.incident.incident_id));
        }
        match self
            .store
            .create_audited(&stored, accepted.events, outbox, now, audit.as_ref())
            .await?
        {
            CreateOutcome::Existing(existing) => Ok(Submitted {
                incident: existing.incident,
                created: false,
            }),
            CreateOutcome::Created => {
                self.events_queued();
                tracing::info!(
                    incident_id = %stored.incident.incident_id,
                    cad_system = %stored.incident.cad_system,
                    disposition = accepted.disposition.as_str_name(),
                    "incident accepted"
                );
                let incident = match assign {
                    Some(item) => self.route_now(item, stored).await?,
                    None => stored.incident,
                };
                Ok(Submitted {
                    incident,
                    created: true,
                })
            }
        }
    }

    /// Delivers a new incident's AssignTeam at once, waiting up to `submit_wait_ms` for
    /// routing's answer: the incident as it is then (or as created, when routing is slower;
    /// the event stream brings the answer).
    async fn route_now(
        self: &Arc<Self>,
        item: crate::store::OutboxItem,
        stored: StoredIncident,
    ) -> Result<relay_proto::intake::Incident, IntakeError> {
        let intake = Arc::clone(self);
        let incident_id = stored.incident.incident_id.clone();
        let known = stored.clone();
        // The delivery runs on its own task: a caller that gives up does not stop it.
        let delivery = tokio::spawn(async move { intake.deliver_known(item, Some(known)).await });
        let wait = IntakeSettings::ms(self.settings.submit_wait_ms);
        match tokio::time::timeout(wait, delivery).await {
            Ok(Ok(Some(current))) => return Ok(current.incident),
            Ok(_) => {
                if let Some(current) = self.store.get_incident(&incident_id).await? {
                    return Ok(current.incident);
                }
            }
            Err(_) => {}
        }
        Ok(stored.incident)
    }

    /// One incident by id.
    ///
    /// # Errors
    /// NotFound, or storage failure.
    pub async fn get(&self, incident_id: &str) -> Result<StoredIncident, IntakeError> {
        self.store
            .get_incident(incident_id)
            .await?
            .ok_or_else(|| IntakeError::NotFound(incident_id.to_owned()))
    }

    /// Runs `command` once per request_id: replays a remembered answer; otherwise reads the
    /// incident, lets `decide` plan the change, and commits it with the request's record,
    /// again on a concurrent change. Returns the answer (and whether it was just committed).
    async fn run<R: Message + Default>(
        &self,
        command: &Command<'_>,
        decide: impl Fn(&StoredIncident, i64) -> Result<Decided<R>, IntakeError>,
    ) -> Result<(R, bool), IntakeError> {
        let Command {
            request_id,
            fingerprint,
            rpc,
            incident_id,
            ..
        } = *command;
        if let Some(record) = self.store.find_request(request_id).await? {
            return Ok((replay(&record, fingerprint)?, false));
        }
        for _ in 0..MAX_CONFLICTS {
            let stored = self.get(incident_id).await?;
            let (mut change, response) = match decide(&stored, self.now())? {
                Decided::Unchanged(response) => return Ok((response, false)),
                Decided::Changed(change, response) => (*change, response),
            };
            change.request = Some(RequestRecord::new(request_id, rpc, fingerprint, &response));
            change.audit.clone_from(&command.audit);
            match self.store.apply_change(change).await? {
                ChangeOutcome::Applied(_) => {
                    self.events_queued();
                    self.outbox_wake.notify_one();
                    return Ok((response, true));
                }
                ChangeOutcome::RequestExists(record) => {
                    return Ok((replay(&record, fingerprint)?, false));
                }
                _ => {}
            }
        }
        Err(IntakeError::Contended)
    }

    /// Applies an update (see `UpdateIncident`).
    ///
    /// # Errors
    /// See the contract.
    pub async fn update(
        &self,
        update: IncidentUpdate,
        audit: Option<AuditRecord>,
    ) -> Result<UpdateIncidentResponse, IntakeError> {
        let command = Command {
            request_id: &update.request_id,
            fingerprint: &update.fingerprint,
            rpc: "UpdateIncident",
            incident_id: &update.incident_id,
            audit,
        };
        let rules = self.rules();
        let (response, applied) = self
            .run(&command, |before, now| {
                domain::plan_update(before, &update, &rules, now)
            })
            .await?;
        if applied && let Some(after) = &response.incident {
            tracing::info!(
                incident_id = %after.incident_id,
                revision = after.revision,
                safety_alert = response.safety_alert_raised,
                "incident updated"
            );
        }
        Ok(response)
    }

    /// Cancels an incident (see `CancelIncident`).
    ///
    /// # Errors
    /// See the contract.
    pub async fn cancel(
        &self,
        request_id: &str,
        fingerprint: &str,
        incident_id: &str,
        reason: &str,
        audit: Option<AuditRecord>,
    ) -> Result<CancelIncidentResponse, IntakeError> {
        let command = Command {
            request_id,
            fingerprint,
            rpc: "CancelIncident",
            incident_id,
            audit,
        };
        let (response, applied) = self
            .run(&command, |before, now| {
                domain::plan_cancel(before, reason, now)
            })
            .await?;
        if applied {
            tracing::info!(incident_id = %incident_id, "incident cancelled");
        }
        Ok(response)
    }

    /// Closes an incident (see `CloseIncident`).
    ///
    /// # Errors
    /// See the contract.
    // The request's fields as the domain takes them, and the call's audit record.
    #[allow(clippy::too_many_arguments)]
    pub async fn close(
        &self,
        request_id: &str,
        fingerprint: &str,
        incident_id: &str,
        outcome: i32,
        referral_ids: Vec<String>,
        notes: String,
        audit: Option<AuditRecord>,
    ) -> Result<CloseIncidentResponse, IntakeError> {
        let command = Command {
            request_id,
            fingerprint,
            rpc: "CloseIncident",
            incident_id,
            audit,
        };
        let (response, applied) = self
            .run(&command, |before, now| {
                domain::plan_close(before, outcome, &referral_ids, &notes, now)
            })
            .await?;
        if applied {
            tracing::info!(incident_id = %incident_id, "incident closed");
        }
        Ok(response)
    }
}
