use super::*;

#[test]
fn teams_round_trip_through_hash_fields() {
    let now = from_micros(1_700_000_000_123_456);
    let team = Team {
        team_id: "t1".into(),
        display_name: "CAHOOTS 3".into(),
        region: "north".into(),
        capabilities: vec!["emt".into(), "lang:es".into()],
        status: TeamStatus::EnRoute,
        location: Some(Position {
            latitude: 44.05,
            longitude: -123.09,
        }),
        location_updated_at: Some(now),
        heading_degrees: Some(90.5),
        speed_meters_per_second: None,
        accuracy_meters: Some(3.0),
        incident_id: "inc-1".into(),
        shift_ends_at: None,
        revision: 7,
        fencing_token: 2,
        create_time: now,
        update_time: now,
    };
    let map = encode_team(&team)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(decode_team(&map).expect("decodes"), team);
    // The positional read (HMGET of TEAM_FIELDS) sees the same fields in the same order.
    let encoded = encode_team(&team);
    let names: Vec<&str> = encoded.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, TEAM_FIELDS);
    let values: Vec<Option<String>> = encoded.into_iter().map(|(_, v)| Some(v)).collect();
    assert_eq!(decode_values(&values).expect("decodes"), Some(team));
    assert_eq!(decode_values(&[None, None]).expect("absent"), None);
    let mut broken: HashMap<String, String> = map.clone();
    broken.insert("status".into(), "99".into());
    assert!(decode_team(&broken).is_err());
}

/// What [`DispatchStore::nearest_unavailable`] must answer, by brute force over every team
/// of the region (the trait's default).
async fn unavailable_by_scan(
    store: &RedisTeamStore,
    region: &str,
    radius: f64,
) -> Vec<(String, f64)> {
    let teams = store
        .list_teams(Some(region), None, None, 1_000)
        .await
        .expect("list")
        .teams;
    rank_placed(teams, CENTER, radius, is_unavailable)
        .into_iter()
        .map(|(team, distance)| (team.team_id, distance))
        .collect()
}

const CENTER: Position = Position {
    latitude: 44.05,
    longitude: -123.09,
};

/// The region's set of on-duty teams that are not available follows every script that
/// changes a status, a position or a region, so that its GEOSEARCH answers what a scan of
/// the region would.
#[tokio::test]
async fn the_unavailable_set_follows_status_position_and_region() {
    let prefix = relay_tests::unique_name("avail_unavailable");
    let client = redis::Client::open(relay_tests::redis_url()).expect("redis");
    let store = RedisTeamStore::new(
        client,
        Keyspace::new(prefix.as_str()),
        Duration::from_secs(60),
    )
    .expect("store");
    let now = Utc::now();
    let define = |id: &str, region: &str| TeamDefinition {
        team_id: id.into(),
        display_name: id.into(),
        region: region.into(),
        capabilities: vec![],
        shift_ends_at: None,
    };
    let at = |meters_north: f64, recorded: i64| LocationReport {
        team_id: "t".into(),
        position: Position {
            latitude: CENTER.latitude + meters_north / 111_195.0,
            longitude: CENTER.longitude,
        },
        recorded_at: now + chrono::Duration::seconds(recorded),
        heading_degrees: None,
        speed_meters_per_second: None,
        accuracy_meters: None,
    };
    let within = |region: &'static str, radius: f64, want: &'static [&'static str]| {
        let store = &store;
        async move {
            let found = store
                .nearest_unavailable(region, CENTER, radius, 10)
                .await
                .expect("nearest");
            let found: Vec<(String, f64)> = found
                .into_iter()
                .map(|(team, distance)| (team.team_id, distance))
                .collect();
            let scan = unavailable_by_scan(store, region, radius).await;
            assert_eq!(found, scan, "{region}");
            let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, want, "{region}");
            found
        }
    };
    let check =
        |region: &'static str, want: &'static [&'static str]| within(region, 10_000.0, want);
    store
        .upsert_team(&define("t", "a"), None, now)
        .await
        .expect("upsert");
    // Out of service without a position: in no GEO set.
    store
        .upsert_team(&define("u", "a"), None, now)
        .await
        .expect("upsert");
    store
        .set_status("u", TeamStatus::OutOfService, "", None, now)
        .await
        .expect("status");
    store
        .report_locations(&[at(900.0, 1)], now)
        .await
        .expect("report");
    check("a", &[]).await;
    let set = |status: TeamStatus, incident: &'static str| {
        let store = &store;
        async move {
            store
                .set_status("t", status, incident, None, now)
                .await
                .expect("status");
        }
    };
    set(TeamStatus::OutOfService, "").await;
    check("a", &["t"]).await;
    set(TeamStatus::Available, "").await;
    check("a", &[]).await;
    store
        .claim("a", "t", "i1", None, now, None)
        .await
        .expect("claim");
    let before = check("a", &["t"]).await;
    // A busy team's position moves it in the set: nearer, it is found within a radius
    // its old position was outside of.
    store
        .report_locations(&[at(500.0, 2)], now)
        .await
        .expect("report");
    let after = within("a", 700.0, &["t"]).await;
    assert!(
        after[0].1 < before[0].1 - 300.0,
        "{before:?} then {after:?}"
    );
    set(TeamStatus::EnRoute, "i1").await;
    check("a", &["t"]).await;
    store.release("a", "t", "i1", now).await.expect("release");
    check("a", &[]).await;
    set(TeamStatus::OutOfService, "").await;
    // A region change takes it out of the old region's set and into the new one's.
    store
        .upsert_team(&define("t", "b"), None, now)
        .await
        .expect("move");
    check("a", &[]).await;
    check("b", &["t"]).await;
    set(TeamStatus::OffDuty, "").await;
    check("b", &[]).await;
    relay_tests::redis_delete_prefix(&prefix).await;
}

/// A store of its own prefix with AVAILABLE teams of `region`.
async fn available_teams(prefix: &str, region: &str, teams: &[&str]) -> RedisTeamStore {
    let client = redis::Client::open(relay_tests::redis_url()).expect("redis");
    let store =
        RedisTeamStore::new(client, Keyspace::new(prefix), Duration::from_secs(60)).expect("store");
    let now = Utc::now();
    for team_id in teams {
        let definition = TeamDefinition {
            team_id: (*team_id).to_owned(),
            display_name: (*team_id).to_owned(),
            region: region.to_owned(),
            capabilities: vec![],
            shift_ends_at: None,
        };
        store
            .upsert_team(&definition, None, now)
            .await
            .expect("upsert");
        store
            .set_status(team_id, TeamStatus::Available, "", None, now)
            .await
            .expect("available");
    }
    store
}

async fn claim_and_release(store: &RedisTeamStore, region: &str, team_id: &str, announce: bool) {
    let now = Utc::now();
    store
        .claim(region, team_id, "incident", None, now, None)
        .await
        .expect("claim");
    let released = if announce {
        store.release(region, team_id, "incident", now).await
    } else {
        store
            .release_quietly(region, team_id, "incident", now)
            .await
    };
    assert!(
        matches!(released, Ok(ReleaseOutcome::Released(_))),
        "{released:?}"
    );
}

#[tokio::test]
async fn a_quiet_release_is_not_announced_and_an_announced_one_is() {
    let prefix = relay_tests::unique_name("routing_quiet");
    let region = "quiet";
    let store = available_teams(&prefix, region, &["a", "b", "c"]).await;
    let mut announced = store.subscribe();
    // Looking at the region starts its event reader; announced releases until one is
    // heard show that the reader is past its starting point.
    store
        .nearest_available(region, CENTER, 1_000.0, 1)
        .await
        .expect("up");
    let mut live = false;
    for _ in 0..40 {
        claim_and_release(&store, region, "a", true).await;
        if tokio::time::timeout(Duration::from_millis(250), announced.recv())
            .await
            .is_ok()
        {
            live = true;
            break;
        }
    }
    assert!(live, "the event reader never announced a release");
    claim_and_release(&store, region, "b", false).await;
    claim_and_release(&store, region, "c", true).await;
    // Events are read in order: everything announced before c's release, and b not at all.
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), announced.recv())
            .await
            .expect("c is announced")
            .expect("open");
        assert_ne!(next.team_id, "b", "a quiet release was announced");
        if next.team_id == "c" {
            break;
        }
    }
    relay_tests::redis_delete_prefix(&prefix).await;
}
