//! Reports of a team's status and position: who may report for a team, and the batches of
//! StreamLocations applied together.

use super::*;

impl AvailabilityServiceHandler {
    /// Tenancy of a report for `team_id` (status, position): a team-bound principal reports
    /// for its own team only (TEAM_NOT_ALLOWED), a region-bound one for the teams of its
    /// regions only (REGION_NOT_ALLOWED, which reads the team's region; an unknown team is
    /// TEAM_NOT_FOUND as it would be anyway).
    pub(super) async fn require_reporter(
        &self,
        principal: &Principal,
        team_id: &str,
    ) -> Result<(), Status> {
        principal.require_team(team_id)?;
        if principal.is_region_bound() {
            let team = self.domain.get(team_id).await.map_err(api)?;
            principal.require_region(&team.region)?;
        }
        Ok(())
    }

    /// Why a StreamLocations report for `team_id` is refused by tenancy, if it is: the
    /// rejection's reason and description. `regions` caches the teams' regions for the
    /// stream; an unknown team is left to the batch (TEAM_NOT_FOUND).
    pub(super) async fn refusal_of(
        &self,
        principal: &Principal,
        team_id: &str,
        regions: &mut std::collections::HashMap<String, Option<String>>,
    ) -> Result<Option<(&'static str, &'static str)>, Status> {
        if principal.require_team(team_id).is_err() {
            return Ok(Some((
                TEAM_NOT_ALLOWED,
                "the credential is bound to another team",
            )));
        }
        if !principal.is_region_bound() {
            return Ok(None);
        }
        if !regions.contains_key(team_id) {
            let region = match self.domain.get(team_id).await {
                Ok(team) => Some(team.region),
                Err(AvailabilityError::TeamNotFound) => None,
                Err(error) => return Err(api(error)),
            };
            regions.insert(team_id.to_owned(), region);
        }
        Ok(match regions.get(team_id).cloned().flatten() {
            Some(region) if !principal.allows_region(&region) => Some((
                REGION_NOT_ALLOWED,
                "the credential is limited to other regions",
            )),
            _ => None,
        })
    }

    /// Records `record`, naming `teams`, before a report changes them. The live store is
    /// in Redis, so the report cannot commit with its record: it is recorded first, and when
    /// the record cannot be written the report is not applied (UNAVAILABLE,
    /// `STORE_UNAVAILABLE`): no change without its record. A report that then fails is
    /// recorded a second time, with its code, by the audit layer.
    pub(super) async fn audit_report<'a>(
        &self,
        record: AuditRecord,
        teams: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Status> {
        let Some(sink) = &self.audit else {
            return Ok(());
        };
        let teams: std::collections::BTreeSet<&str> = teams.into_iter().collect();
        let record = AuditRecord {
            time: relay_runtime::audit::now_micros(),
            resources: teams.into_iter().map(|id| format!("team:{id}")).collect(),
            ..record
        };
        sink.append_alone(&[record]).await.map_err(|error| {
            tracing::warn!(%error, "report refused: its audit record failed");
            status(ApiError::unavailable(
                STORE_UNAVAILABLE,
                "the audit trail is unreachable, so the report is not applied",
            ))
        })
    }

    /// Applies the reports of `batch` together, recorded first as one record of the stream's
    /// call (`audit`) naming their teams.
    pub(super) async fn apply_batch(
        &self,
        audit: &AuditRecord,
        batch: &mut Vec<(i64, LocationReport)>,
        summary: &mut StreamLocationsResponse,
    ) -> Result<(), Status> {
        if batch.is_empty() {
            summary.rejections.sort_by_key(|r| r.index);
            summary.rejections.truncate(MAX_REJECTIONS);
            return Ok(());
        }
        self.audit_report(
            audit.clone(),
            batch.iter().map(|(_, report)| report.team_id.as_str()),
        )
        .await?;
        let reports: Vec<LocationReport> = batch.iter().map(|(_, r)| r.clone()).collect();
        let outcomes = self.domain.report(&reports).await.map_err(api)?;
        for ((index, report), outcome) in batch.drain(..).zip(outcomes) {
            match outcome {
                LocationOutcome::Accepted { .. } => summary.accepted_count += 1,
                LocationOutcome::Stale { .. } => summary.stale_count += 1,
                LocationOutcome::NotFound => reject(
                    summary,
                    index,
                    report.team_id,
                    "team_id",
                    TEAM_NOT_FOUND,
                    "no team has this team_id",
                ),
            }
        }
        // Field rejections were recorded before the batch ran: restore stream order.
        summary.rejections.sort_by_key(|r| r.index);
        summary.rejections.truncate(MAX_REJECTIONS);
        Ok(())
    }
}
