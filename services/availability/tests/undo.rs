//! Issue 18, defect 2: an UpsertTeam whose roster commit fails after the live store changed
//! records nothing. The roster here commits nothing when told to fail (as PostgreSQL going
//! away between the live write and the commit does); the team the request created is removed
//! from the live store with its idempotency record, and the retry creates it whole.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use relay_availability::{
    Availability,
    roster::{RosterEntry, RosterError, RosterStore, RosterWrite},
};
use relay_fleet::{MemoryTeamStore, Recorded, RequestRecord, TeamStore, model::TeamDefinition};
use relay_runtime::clock::SystemClock;

/// A roster in memory whose commit fails while `fail` is set.
#[derive(Default)]
struct FlakyRoster {
    rows: Arc<Mutex<Vec<RosterEntry>>>,
    fail: Arc<AtomicBool>,
}

struct FlakyWrite {
    saved: Vec<RosterEntry>,
    rows: Arc<Mutex<Vec<RosterEntry>>>,
    fail: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl RosterWrite for FlakyWrite {
    async fn save(&mut self, entry: &RosterEntry) -> Result<(), RosterError> {
        self.saved.push(entry.clone());
        Ok(())
    }

    async fn audit(&mut self, _: &relay_runtime::audit::AuditRecord) -> Result<(), RosterError> {
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), RosterError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(RosterError::from(sqlx::Error::PoolTimedOut));
        }
        let mut rows = self.rows.lock().expect("rows");
        for entry in self.saved {
            rows.retain(|r| r.definition.team_id != entry.definition.team_id);
            rows.push(entry);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RosterStore for FlakyRoster {
    async fn begin(&self) -> Result<Box<dyn RosterWrite>, RosterError> {
        Ok(Box::new(FlakyWrite {
            saved: Vec::new(),
            rows: self.rows.clone(),
            fail: self.fail.clone(),
        }))
    }

    async fn load_all(&self) -> Result<Vec<RosterEntry>, RosterError> {
        Ok(self.rows.lock().expect("rows").clone())
    }
}

#[tokio::test]
async fn a_creation_whose_roster_commit_fails_leaves_nothing_and_the_retry_creates_it() {
    let store = Arc::new(MemoryTeamStore::new(std::time::Duration::from_secs(3600)));
    let roster = Arc::new(FlakyRoster::default());
    let domain = Availability::new(store.clone(), roster.clone(), Arc::new(SystemClock));
    let definition = TeamDefinition {
        team_id: "t1".into(),
        display_name: "Unit 1".into(),
        region: "north".into(),
        capabilities: vec!["clinician".into()],
        shift_ends_at: None,
    };
    let request = RequestRecord {
        rpc: "UpsertTeam",
        request_id: "r-1",
        fingerprint: "f",
        ttl: std::time::Duration::from_secs(60),
    };

    roster.fail.store(true, Ordering::SeqCst);
    let failed = domain.upsert(&definition, None, &request).await;
    assert!(failed.is_err(), "the commit failed: {failed:?}");
    assert_eq!(
        store.get_team("t1").await.expect("read"),
        None,
        "nothing in the live store"
    );
    assert!(
        roster.load_all().await.expect("roster").is_empty(),
        "nothing in the roster"
    );

    // The CAD retries with the same request id: the team is created whole, not replayed.
    roster.fail.store(false, Ordering::SeqCst);
    let retried = domain
        .upsert(&definition, None, &request)
        .await
        .expect("retry");
    let Recorded::Applied(outcome) = retried else {
        panic!("the retry applies: {retried:?}");
    };
    assert!(outcome.created);
    let team = store.get_team("t1").await.expect("read").expect("team");
    let rows = roster.load_all().await.expect("roster");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].revision, team.revision,
        "roster and live store agree"
    );
}
