//! The record as the engine uses it, each operation under the database's
//! [`QueryBound`](relay_runtime::storage::QueryBound) (`database.query_timeout_ms`), so that a partitioned database fails a call
//! `UNAVAILABLE` (RECORD_UNAVAILABLE) within the bound instead of holding it for its whole
//! deadline. Pruning old events is not bounded: it may rightly take longer.

use chrono::{DateTime, Utc};
use relay_proto::routing::{Assignment, AssignmentEvent};

use super::{IncidentRecord, Lookup, QueueCursor, RequestRecord, Store, StoreError, Write};

relay_runtime::bounded_store! {
    #[tonic::async_trait]
    impl Store {
        async fn incident(&self, incident_id: &str) -> Result<Option<IncidentRecord>, StoreError>;
        async fn assignment(&self, assignment_id: &str) -> Result<Option<Assignment>, StoreError>;
        async fn active_assignment_of_incident(
            &self,
            incident_id: &str,
        ) -> Result<Option<Assignment>, StoreError>;
        async fn latest_assignment_of_incident(
            &self,
            incident_id: &str,
        ) -> Result<Option<Assignment>, StoreError>;
        async fn active_assignment_of_team(
            &self,
            team_id: &str,
        ) -> Result<Option<Assignment>, StoreError>;
        async fn active_assignments(&self, region: &str) -> Result<Vec<Assignment>, StoreError>;
        async fn queue(
            &self,
            region: &str,
            after: Option<&QueueCursor>,
            limit: usize,
        ) -> Result<Vec<IncidentRecord>, StoreError>;
        async fn due_escalations(
            &self,
            now: DateTime<Utc>,
            limit: usize,
        ) -> Result<Vec<IncidentRecord>, StoreError>;
        async fn regions(&self) -> Result<Vec<String>, StoreError>;
        async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;
        async fn lookup(&self, request_id: &str, incident_id: &str) -> Result<Lookup, StoreError>;
        async fn lookup_assignment(
            &self,
            request_id: &str,
            assignment_id: &str,
        ) -> Result<Lookup, StoreError>;
        async fn write(&self, write: Write) -> Result<(), StoreError>;
        async fn sequence_events(&self) -> Result<usize, StoreError>;
        async fn pending_events(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError>;
        async fn events(
            &self,
            region: &str,
            after: i64,
            limit: usize,
        ) -> Result<Vec<(i64, AssignmentEvent)>, StoreError>;
        async fn event_bounds(&self, region: &str) -> Result<(i64, i64), StoreError>;
        #[unbounded]
        async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    }
}
