//! The store every RPC and worker of the service uses, each operation under the
//! database's [`QueryBound`](relay_runtime::storage::QueryBound) (`database.query_timeout_ms`), so that a partitioned database
//! fails a call `UNAVAILABLE` within the bound instead of holding it for its whole deadline.
//! The bulk reads and deletes (the retention purges, a program report's scan) are not
//! bounded: over months of incidents they may rightly take longer than one statement should.

use relay_proto::intake::{Incident, IncidentEvent};
use relay_runtime::{audit::AuditRecord, idempotency::RequestRecord};

use super::{
    Change, ChangeOutcome, Consumed, CreateOutcome, IncidentStore, ListFilter, Observation,
    OutboxItem, Sequenced, StoreError, StoredIncident,
};

relay_runtime::bounded_store! {
    #[tonic::async_trait]
    impl IncidentStore {
        async fn create_audited(
            &self,
            incident: &StoredIncident,
            events: Vec<IncidentEvent>,
            outbox: Vec<OutboxItem>,
            now: i64,
            audit: Option<&AuditRecord>,
        ) -> Result<CreateOutcome, StoreError>;
        async fn get_incident(
            &self,
            incident_id: &str,
        ) -> Result<Option<StoredIncident>, StoreError>;
        async fn get_by_cad(
            &self,
            cad_system: &str,
            cad_incident_id: &str,
        ) -> Result<Option<StoredIncident>, StoreError>;
        async fn list_incidents(
            &self,
            filter: &ListFilter,
        ) -> Result<Vec<StoredIncident>, StoreError>;
        async fn incident_for_team(
            &self,
            team_id: &str,
        ) -> Result<Option<StoredIncident>, StoreError>;
        async fn assigned_to_team(&self, team_id: &str) -> Result<Vec<StoredIncident>, StoreError>;
        async fn observations(&self, incident_id: &str) -> Result<Vec<Observation>, StoreError>;
        async fn apply_change(&self, change: Change) -> Result<ChangeOutcome, StoreError>;
        async fn find_request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
        async fn claim_outbox(
            &self,
            now: i64,
            lease_until: i64,
            limit: i64,
        ) -> Result<Vec<OutboxItem>, StoreError>;
        async fn reschedule_outbox(
            &self,
            outbox_id: &str,
            next_attempt_at: i64,
            error: &str,
        ) -> Result<(), StoreError>;
        async fn pending_outbox(&self) -> Result<i64, StoreError>;
        async fn outbox_backlog(&self) -> Result<(i64, Option<i64>), StoreError>;
        async fn sequence_events(&self, limit: i64) -> Result<Sequenced, StoreError>;
        async fn pending_events(&self) -> Result<(i64, Option<i64>), StoreError>;
        async fn events_after(
            &self,
            cad_system: &str,
            after: i64,
            limit: i64,
        ) -> Result<Vec<IncidentEvent>, StoreError>;
        async fn sequence_bounds(&self, cad_system: &str) -> Result<(i64, Option<i64>), StoreError>;
        async fn stream_cursor(
            &self,
            source: &str,
            region: &str,
        ) -> Result<Option<String>, StoreError>;
        async fn record_consumed(&self, consumed: &Consumed, now: i64) -> Result<bool, StoreError>;
        #[unbounded]
        async fn purge_personal_data(&self, before: i64, now: i64) -> Result<u64, StoreError>;
        #[unbounded]
        async fn purge_history(&self, before: i64) -> Result<u64, StoreError>;
        #[unbounded]
        async fn scan_received(
            &self,
            from: i64,
            to: i64,
            region: &str,
            visit: &mut (dyn FnMut(Incident) + Send),
        ) -> Result<u64, StoreError>;
    }
}
