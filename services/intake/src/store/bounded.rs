//! The store every RPC and worker of the service uses, each operation under the
//! database's [`QueryBound`](relay_runtime::storage::QueryBound) (`database.query_timeout_ms`), so that a partitioned database
//! fails a call `UNAVAILABLE` within the bound instead of holding it for its whole deadline.
//! The bulk reads and deletes (the retention purges, a program report's scan) are not
//! bounded: over months of incidents they may rightly take longer than one statement should.

use relay_proto::intake::{Incident, IncidentEvent};
use relay_runtime::{audit::AuditRecord, idempotency::RequestRecord, storage::Bounded};

use super::{
    Change, ChangeOutcome, Consumed, CreateOutcome, IncidentStore, ListFilter, Observation,
    OutboxItem, Sequenced, StoreError, StoredIncident,
};

#[tonic::async_trait]
impl<S: IncidentStore> IncidentStore for Bounded<S> {
    async fn create_audited(
        &self,
        incident: &StoredIncident,
        events: Vec<IncidentEvent>,
        outbox: Vec<OutboxItem>,
        now: i64,
        audit: Option<&AuditRecord>,
    ) -> Result<CreateOutcome, StoreError> {
        self.bound()
            .run(
                self.inner()
                    .create_audited(incident, events, outbox, now, audit),
            )
            .await
    }
    async fn get_incident(&self, incident_id: &str) -> Result<Option<StoredIncident>, StoreError> {
        self.bound()
            .run(self.inner().get_incident(incident_id))
            .await
    }
    async fn get_by_cad(
        &self,
        cad_system: &str,
        cad_incident_id: &str,
    ) -> Result<Option<StoredIncident>, StoreError> {
        self.bound()
            .run(self.inner().get_by_cad(cad_system, cad_incident_id))
            .await
    }
    async fn list_incidents(&self, filter: &ListFilter) -> Result<Vec<StoredIncident>, StoreError> {
        self.bound().run(self.inner().list_incidents(filter)).await
    }
    async fn incident_for_team(&self, team_id: &str) -> Result<Option<StoredIncident>, StoreError> {
        self.bound()
            .run(self.inner().incident_for_team(team_id))
            .await
    }
    async fn assigned_to_team(&self, team_id: &str) -> Result<Vec<StoredIncident>, StoreError> {
        self.bound()
            .run(self.inner().assigned_to_team(team_id))
            .await
    }
    async fn observations(&self, incident_id: &str) -> Result<Vec<Observation>, StoreError> {
        self.bound()
            .run(self.inner().observations(incident_id))
            .await
    }
    async fn apply_change(&self, change: Change) -> Result<ChangeOutcome, StoreError> {
        self.bound().run(self.inner().apply_change(change)).await
    }
    async fn find_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.bound()
            .run(self.inner().find_request(request_id))
            .await
    }
    async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.bound()
            .run(self.inner().claim_outbox(now, lease_until, limit))
            .await
    }
    async fn reschedule_outbox(
        &self,
        outbox_id: &str,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.bound()
            .run(
                self.inner()
                    .reschedule_outbox(outbox_id, next_attempt_at, error),
            )
            .await
    }
    async fn pending_outbox(&self) -> Result<i64, StoreError> {
        self.bound().run(self.inner().pending_outbox()).await
    }
    async fn outbox_backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.bound().run(self.inner().outbox_backlog()).await
    }
    async fn sequence_events(&self, limit: i64) -> Result<Sequenced, StoreError> {
        self.bound().run(self.inner().sequence_events(limit)).await
    }
    async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError> {
        self.bound().run(self.inner().pending_events()).await
    }
    async fn events_after(
        &self,
        cad_system: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<IncidentEvent>, StoreError> {
        self.bound()
            .run(self.inner().events_after(cad_system, after, limit))
            .await
    }
    async fn sequence_bounds(&self, cad_system: &str) -> Result<(i64, Option<i64>), StoreError> {
        self.bound()
            .run(self.inner().sequence_bounds(cad_system))
            .await
    }
    async fn stream_cursor(
        &self,
        source: &str,
        region: &str,
    ) -> Result<Option<String>, StoreError> {
        self.bound()
            .run(self.inner().stream_cursor(source, region))
            .await
    }
    async fn record_consumed(&self, consumed: &Consumed, now: i64) -> Result<bool, StoreError> {
        self.bound()
            .run(self.inner().record_consumed(consumed, now))
            .await
    }
    async fn purge_personal_data(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        self.inner().purge_personal_data(before, now).await
    }
    async fn purge_history(&self, before: i64) -> Result<u64, StoreError> {
        self.inner().purge_history(before).await
    }
    async fn scan_received(
        &self,
        from: i64,
        to: i64,
        region: &str,
        visit: &mut (dyn FnMut(Incident) + Send),
    ) -> Result<u64, StoreError> {
        self.inner().scan_received(from, to, region, visit).await
    }
}
