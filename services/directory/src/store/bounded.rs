//! The store the gRPC handler and the retention job use, each operation under
//! the database's [`QueryBound`](relay_runtime::storage::QueryBound) (`database.query_timeout_ms`), so that a partitioned database
//! fails a call `UNAVAILABLE` within the bound instead of holding it for its whole deadline.
//! The bulk operations (an import's write session, an export's dumps, the retention job's
//! erasure) are not bounded: they may rightly take longer than one statement should.

use std::collections::HashMap;

use relay_proto::directory::{
    Capacity, CreateReferralResponse, Referral, ReferralStatus, Service, UpdateCapacityResponse,
    UpdateReferralResponse, UpsertServiceResponse,
};
use relay_runtime::storage::Bounded;

use super::{
    Candidate, CandidateFilter, DirectoryStore, Dump, Idem, LocationHours, ReferralFilter, Row,
    StoreResult, StoredRequest,
};

impl<S: DirectoryStore> DirectoryStore for Bounded<S> {
    type Session = S::Session;

    async fn begin(&self) -> StoreResult<S::Session> {
        self.inner().begin().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.bound().run(self.inner().ping()).await
    }
    async fn lookup_request(&self, request_id: &str) -> StoreResult<Option<StoredRequest>> {
        self.bound()
            .run(self.inner().lookup_request(request_id))
            .await
    }
    async fn upsert_service(
        &self,
        service: &Service,
        idem: &Idem,
    ) -> StoreResult<UpsertServiceResponse> {
        self.bound()
            .run(self.inner().upsert_service(service, idem))
            .await
    }
    async fn get_services(&self, ids: &[String]) -> StoreResult<Vec<Service>> {
        self.bound().run(self.inner().get_services(ids)).await
    }
    async fn search_candidates(&self, filter: &CandidateFilter) -> StoreResult<Vec<Candidate>> {
        self.bound()
            .run(self.inner().search_candidates(filter))
            .await
    }
    async fn hours(
        &self,
        pairs: &[(String, String)],
    ) -> StoreResult<HashMap<(String, String), LocationHours>> {
        self.bound().run(self.inner().hours(pairs)).await
    }
    async fn update_capacity(
        &self,
        service_id: &str,
        location_id: &str,
        capacity: &Capacity,
        idem: &Idem,
    ) -> StoreResult<UpdateCapacityResponse> {
        self.bound()
            .run(
                self.inner()
                    .update_capacity(service_id, location_id, capacity, idem),
            )
            .await
    }
    async fn create_referral(
        &self,
        referral: &Referral,
        idem: &Idem,
    ) -> StoreResult<CreateReferralResponse> {
        self.bound()
            .run(self.inner().create_referral(referral, idem))
            .await
    }
    async fn update_referral(
        &self,
        referral_id: &str,
        status: ReferralStatus,
        notes: Option<&str>,
        idem: &Idem,
    ) -> StoreResult<UpdateReferralResponse> {
        self.bound()
            .run(
                self.inner()
                    .update_referral(referral_id, status, notes, idem),
            )
            .await
    }
    async fn dump(&self, table: Dump) -> StoreResult<Vec<Row>> {
        self.inner().dump(table).await
    }
    async fn erase_referral_notes(
        &self,
        created_before: i64,
        requests_before: i64,
    ) -> StoreResult<(u64, u64)> {
        self.inner()
            .erase_referral_notes(created_before, requests_before)
            .await
    }
    async fn list_referrals(&self, filter: &ReferralFilter) -> StoreResult<Vec<Referral>> {
        self.bound().run(self.inner().list_referrals(filter)).await
    }
}
