//! The record as the engine uses it, each operation under the database's
//! [`QueryBound`](relay_runtime::storage::QueryBound) (`database.query_timeout_ms`), so that a partitioned database fails a call
//! `UNAVAILABLE` (RECORD_UNAVAILABLE) within the bound instead of holding it for its whole
//! deadline. Pruning old events is not bounded: it may rightly take longer.

use chrono::{DateTime, Utc};
use relay_proto::routing::{Assignment, AssignmentEvent};
use relay_runtime::storage::Bounded;

use super::{IncidentRecord, Lookup, QueueCursor, RequestRecord, Store, StoreError, Write};

#[tonic::async_trait]
impl<S: Store> Store for Bounded<S> {
    async fn incident(&self, incident_id: &str) -> Result<Option<IncidentRecord>, StoreError> {
        self.bound().run(self.inner().incident(incident_id)).await
    }
    async fn assignment(&self, assignment_id: &str) -> Result<Option<Assignment>, StoreError> {
        self.bound()
            .run(self.inner().assignment(assignment_id))
            .await
    }
    async fn active_assignment_of_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        self.bound()
            .run(self.inner().active_assignment_of_incident(incident_id))
            .await
    }
    async fn latest_assignment_of_incident(
        &self,
        incident_id: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        self.bound()
            .run(self.inner().latest_assignment_of_incident(incident_id))
            .await
    }
    async fn active_assignment_of_team(
        &self,
        team_id: &str,
    ) -> Result<Option<Assignment>, StoreError> {
        self.bound()
            .run(self.inner().active_assignment_of_team(team_id))
            .await
    }
    async fn active_assignments(&self, region: &str) -> Result<Vec<Assignment>, StoreError> {
        self.bound()
            .run(self.inner().active_assignments(region))
            .await
    }
    async fn queue(
        &self,
        region: &str,
        after: Option<&QueueCursor>,
        limit: usize,
    ) -> Result<Vec<IncidentRecord>, StoreError> {
        self.bound()
            .run(self.inner().queue(region, after, limit))
            .await
    }
    async fn due_escalations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<IncidentRecord>, StoreError> {
        self.bound()
            .run(self.inner().due_escalations(now, limit))
            .await
    }
    async fn regions(&self) -> Result<Vec<String>, StoreError> {
        self.bound().run(self.inner().regions()).await
    }
    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.bound().run(self.inner().request(request_id)).await
    }
    async fn lookup(&self, request_id: &str, incident_id: &str) -> Result<Lookup, StoreError> {
        self.bound()
            .run(self.inner().lookup(request_id, incident_id))
            .await
    }
    async fn lookup_assignment(
        &self,
        request_id: &str,
        assignment_id: &str,
    ) -> Result<Lookup, StoreError> {
        self.bound()
            .run(self.inner().lookup_assignment(request_id, assignment_id))
            .await
    }
    async fn write(&self, write: Write) -> Result<(), StoreError> {
        self.bound().run(self.inner().write(write)).await
    }
    async fn sequence_events(&self) -> Result<usize, StoreError> {
        self.bound().run(self.inner().sequence_events()).await
    }
    async fn pending_events(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        self.bound().run(self.inner().pending_events()).await
    }
    async fn events(
        &self,
        region: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, AssignmentEvent)>, StoreError> {
        self.bound()
            .run(self.inner().events(region, after, limit))
            .await
    }
    async fn event_bounds(&self, region: &str) -> Result<(i64, i64), StoreError> {
        self.bound().run(self.inner().event_bounds(region)).await
    }
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner().prune(before).await
    }
}
