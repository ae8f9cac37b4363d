//! One conformance suite for every team store backend: each scenario is a public function of
//! `relay_fleet::conformance` (the `testing` feature) over `&dyn FleetStore`, and the
//! `conformance!` macro instantiates it unchanged for the Redis backend (the machine's real
//! server, a unique key prefix per test, deleted afterwards), a Redis Cluster, and the
//! in-process backend.

use std::{sync::Arc, time::Duration};

use relay_fleet::{
    FleetStore, Keyspace, MemoryTeamStore, RedisTeamStore, conformance::*, model::EventId,
};

/// A store for one test, and what to clean up afterwards.
struct Backend {
    store: Arc<dyn FleetStore>,
    prefix: Option<String>,
}

impl Backend {
    fn memory() -> Self {
        Self {
            store: Arc::new(MemoryTeamStore::new(Duration::from_secs(3600))),
            prefix: None,
        }
    }

    fn redis() -> Self {
        let prefix = relay_tests::unique_name("conf");
        let client = redis::Client::open(relay_tests::redis_url()).expect("redis url");
        let store = RedisTeamStore::new(
            client,
            Keyspace::new(prefix.clone()),
            Duration::from_secs(3600),
        )
        .expect("store");
        Self {
            store: Arc::new(store),
            prefix: Some(prefix),
        }
    }

    /// The Redis backend on a Redis Cluster of the test's own (a unique prefix per scenario:
    /// the scenarios share one cluster).
    fn cluster(cluster: &relay_tests::redis_cluster::RedisCluster) -> Self {
        let target = relay_runtime::redis_link::RedisTarget::open(&cluster.urls(), true)
            .expect("cluster urls");
        let store = RedisTeamStore::new(
            target,
            Keyspace::new(relay_tests::unique_name("conf")),
            Duration::from_secs(3600),
        )
        .expect("store");
        Self {
            store: Arc::new(store),
            prefix: None,
        }
    }

    async fn cleanup(self) {
        if let Some(prefix) = self.prefix {
            relay_tests::redis_delete_prefix(&prefix).await;
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::redis();
                    super::$name(&*backend.store).await;
                    backend.cleanup().await;
                }
            )*
        }
        mod cluster_backend {
            /// Every scenario on a real Redis Cluster (three primaries, a replica each), one
            /// after another on one cluster (starting one costs a few seconds). A script whose
            /// keys (declared or built inside it) span two slots, or a pipeline the store
            /// cannot split by slot, fails here with the cluster's CROSSSLOT.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_scenario() {
                let cluster = relay_tests::redis_cluster::RedisCluster::start().await;
                $(
                    let backend = super::Backend::cluster(&cluster);
                    super::$name(&*backend.store).await;
                )*
            }
        }
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::Backend::memory();
                    super::$name(&*backend.store).await;
                    backend.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    upsert_creates_updates_and_checks_revisions,
    status_changes_follow_the_state_machine,
    claim_release_and_incident_rules,
    older_positions_never_win,
    the_geo_index_follows_status_and_position,
    find_filters_capabilities_orders_and_limits,
    events_record_every_change_in_order,
    region_moves_only_off_duty,
    lists_page_and_filter,
    seeding_recreates_missing_teams_above_a_floor,
    idempotency_records_expire_and_are_kept_per_rpc,
    racing_retries_of_one_request_apply_once,
    history_expiry_is_reported,
    the_live_epoch_is_written_once_and_agreed_on,
    region_epochs_are_stamped_and_read_per_region,
    a_creation_is_undone_with_its_record_only_while_unchanged,
    a_claim_to_restore_takes_an_off_duty_team_too,
    a_team_whose_shift_ends_on_a_call_goes_off_duty_when_it_clears,
);

/// Redis only (the in-process store trims by its own wall clock, which a test cannot move
/// without sleeping): once a stream was trimmed past an id, reading after that id is
/// `HistoryExpired`, and reading after the newest trimmed id is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reports_expired_history() {
    let backend = Backend::redis();
    let prefix = backend.prefix.clone().expect("redis prefix");
    let events = Keyspace::new(prefix).events("north");
    let client = redis::Client::open(relay_tests::redis_url()).expect("url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for id in ["1-0", "2-0", "3-0"] {
        let _: String = redis::cmd("XADD")
            .arg(&events)
            .arg(id)
            .arg("kind")
            .arg("status")
            .query_async(&mut redis)
            .await
            .expect("xadd");
    }
    let _: i64 = redis::cmd("XTRIM")
        .arg(&events)
        .arg("MINID")
        .arg("3-0")
        .query_async(&mut redis)
        .await
        .expect("xtrim");
    let expired = backend
        .store
        .read_events("north", EventId { ms: 1, seq: 0 }, 10, Duration::ZERO)
        .await;
    assert!(
        matches!(expired, Err(relay_fleet::EventsError::HistoryExpired)),
        "{expired:?}"
    );
    let from_start = backend
        .store
        .read_events("north", EventId::ZERO, 10, Duration::ZERO)
        .await;
    assert!(matches!(
        from_start,
        Err(relay_fleet::EventsError::HistoryExpired)
    ));
    // Redis does not say which id was trimmed last, so a reader on it is told to rebuild too
    // (safe); a reader on the first retained entry is not.
    let on_trimmed = backend
        .store
        .read_events("north", EventId { ms: 2, seq: 0 }, 10, Duration::ZERO)
        .await;
    assert!(matches!(
        on_trimmed,
        Err(relay_fleet::EventsError::HistoryExpired)
    ));
    let retained = backend
        .store
        .read_events("north", EventId { ms: 3, seq: 0 }, 10, Duration::ZERO)
        .await;
    assert!(
        matches!(retained, Ok(ref v) if v.is_empty()),
        "{retained:?}"
    );
    backend.cleanup().await;
}
