//! The conformance suite: every case runs against the service on PostgreSQL and on SQLite,
//! black-box through the generated gRPC client.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use common::{Harness, Kind, start};
use relay_proto::{
    common::GeoPoint,
    directory::{
        Address, CreateReferralRequest, GetServiceRequest, ListReferralsRequest, Organization,
        ReferralStatus, Schedule, ScheduleFrequency, SearchServicesRequest, SearchServicesResponse,
        Service, ServiceLocation, ServiceStatus, TaxonomyTerm, UpdateCapacityRequest,
        UpdateReferralRequest, UpsertServiceRequest,
    },
};
use relay_tests::status::{bad_fields, reason};
use tonic::Code;
use tonic_types::StatusExt;

fn ts(text: &str) -> prost_types::Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn now_ts() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    }
}

fn weekly(byday: &str, opens: &str, closes: &str) -> Schedule {
    Schedule {
        freq: ScheduleFrequency::Weekly as i32,
        byday: byday.into(),
        opens_at: opens.into(),
        closes_at: closes.into(),
        ..Schedule::default()
    }
}

fn location(id: &str, lat: f64, lon: f64, tz: &str, schedules: Vec<Schedule>) -> ServiceLocation {
    ServiceLocation {
        location_id: id.into(),
        name: format!("{id} site"),
        address: Some(Address {
            address_1: "1 Main St".into(),
            city: "Eugene".into(),
            country: "US".into(),
            ..Address::default()
        }),
        point: Some(GeoPoint {
            latitude: lat,
            longitude: lon,
        }),
        time_zone: tz.into(),
        schedules,
        capacity: None,
    }
}

fn service(id: &str, name: &str, description: &str, locations: Vec<ServiceLocation>) -> Service {
    Service {
        id: id.into(),
        organization: Some(Organization {
            id: "org-1".into(),
            name: "Lane Mutual Aid".into(),
            ..Organization::default()
        }),
        name: name.into(),
        description: description.into(),
        status: ServiceStatus::Active as i32,
        languages: vec!["en".into()],
        locations,
        ..Service::default()
    }
}

async fn upsert(h: &mut Harness, service: Service) -> Service {
    h.client
        .upsert_service(UpsertServiceRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            service: Some(service),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap()
}

async fn search(h: &mut Harness, request: SearchServicesRequest) -> SearchServicesResponse {
    h.client
        .search_services(request)
        .await
        .unwrap()
        .into_inner()
}

fn ids(response: &SearchServicesResponse) -> Vec<String> {
    response
        .results
        .iter()
        .map(|r| format!("{}@{}", r.service.as_ref().unwrap().id, r.location_id))
        .collect()
}

const EUGENE: (f64, f64) = (44.0521, -123.0868);

async fn upsert_replaces_whole_and_get_returns_it(mut h: Harness) {
    let mut s = service(
        "svc-1",
        "Youth Shelter",
        "Beds for youth",
        vec![
            location(
                "loc-a",
                44.05,
                -123.09,
                "America/Los_Angeles",
                vec![weekly("MO,TU", "09:00", "17:00")],
            ),
            location("loc-b", 44.06, -123.10, "America/Los_Angeles", vec![]),
        ],
    );
    s.taxonomy_terms = vec![TaxonomyTerm {
        id: "t-shelter".into(),
        code: "BH-1800".into(),
        name: "Shelter".into(),
        taxonomy: "211".into(),
        parent_id: String::new(),
    }];
    s.phones = vec![relay_proto::directory::Phone {
        number: "+15415550100".into(),
        r#type: "voice".into(),
        ..Default::default()
    }];
    let response = h
        .client
        .upsert_service(UpsertServiceRequest {
            request_id: "r-1".into(),
            service: Some(s.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.created);
    let stored = response.service.unwrap();
    assert!(stored.create_time.is_some() && stored.update_time.is_some());
    let got = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(got, stored);
    assert_eq!(got.locations.len(), 2);
    assert_eq!(
        got.locations[0].schedules,
        vec![weekly("MO,TU", "09:00", "17:00")]
    );
    assert_eq!(got.taxonomy_terms[0].code, "BH-1800");
    assert_eq!(got.phones[0].number, "+15415550100");
    assert_eq!(got.organization.as_ref().unwrap().name, "Lane Mutual Aid");
    // Capacity on loc-b, then replace the service without loc-b: the location and its
    // capacity go; capacity of loc-a stays.
    for loc in ["loc-a", "loc-b"] {
        h.client
            .update_capacity(UpdateCapacityRequest {
                request_id: format!("cap-{loc}"),
                service_id: "svc-1".into(),
                location_id: loc.into(),
                available: 3,
                total: 10,
                as_of_time: Some(now_ts()),
            })
            .await
            .unwrap();
    }
    s.locations.truncate(1);
    s.phones.clear();
    let response = h
        .client
        .upsert_service(UpsertServiceRequest {
            request_id: "r-2".into(),
            service: Some(s),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.created);
    let got = response.service.unwrap();
    assert_eq!(got.locations.len(), 1);
    assert_eq!(got.locations[0].capacity.as_ref().unwrap().available, 3);
    assert!(got.phones.is_empty());
    let missing = h
        .client
        .get_service(GetServiceRequest {
            service_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "SERVICE_NOT_FOUND");
}

async fn retries_replay_and_reused_ids_are_refused(mut h: Harness) {
    let s = service("svc-1", "Food Bank", "Groceries", vec![]);
    let request = UpsertServiceRequest {
        request_id: "same".into(),
        service: Some(s.clone()),
    };
    let first = h
        .client
        .upsert_service(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = h.client.upsert_service(request).await.unwrap().into_inner();
    assert_eq!(first, second);
    assert!(second.created, "the replay is the original response");
    let mut other = s;
    other.name = "Another".into();
    let status = h
        .client
        .upsert_service(UpsertServiceRequest {
            request_id: "same".into(),
            service: Some(other),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "REQUEST_ID_REUSED");
    let got = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.service.unwrap().name, "Food Bank");
}

async fn bad_input_names_every_field_and_writes_nothing(mut h: Harness) {
    let mut s = service(
        "svc bad",
        "",
        "",
        vec![
            location(
                "loc-a",
                100.0,
                -123.0,
                "Mars/Base",
                vec![weekly("XX", "9am", "25:00")],
            ),
            location(
                "loc-a",
                44.0,
                -123.0,
                "",
                vec![weekly("MO", "09:00", "10:00")],
            ),
        ],
    );
    s.status = 0;
    s.url = "not a url".into();
    s.languages = vec!["english please".into()];
    let status = h
        .client
        .upsert_service(UpsertServiceRequest {
            request_id: "r-bad".into(),
            service: Some(s),
        })
        .await
        .unwrap_err();
    let fields = bad_fields(&status);
    for field in [
        "service.id",
        "service.name",
        "service.status",
        "service.url",
        "service.languages[0]",
        "service.locations[0].point.latitude",
        "service.locations[0].time_zone",
        "service.locations[0].schedules[0].byday",
        "service.locations[0].schedules[0].opens_at",
        "service.locations[0].schedules[0].closes_at",
        "service.locations[1].location_id",
        "service.locations[1].time_zone",
    ] {
        assert!(
            fields.contains(&field.to_owned()),
            "{field} missing from {fields:?}"
        );
    }
    let status = h
        .client
        .upsert_service(UpsertServiceRequest {
            request_id: String::new(),
            service: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id", "service"]);
    // Nothing was written: the request id is free and the listing is empty.
    let all = search(&mut h, SearchServicesRequest::default()).await;
    assert!(all.results.is_empty());
    let status = h
        .client
        .search_services(SearchServicesRequest {
            query: "x".repeat(257),
            location: Some(GeoPoint {
                latitude: 91.0,
                longitude: f64::NAN,
            }),
            radius_meters: -1.0,
            taxonomy_codes: vec!["has space".into()],
            languages: vec!["1234".into()],
            page_size: -1,
            ..SearchServicesRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        [
            "query",
            "location.latitude",
            "location.longitude",
            "radius_meters",
            "taxonomy_codes[0]",
            "languages[0]",
            "page_size"
        ]
    );
    let status = h
        .client
        .search_services(SearchServicesRequest {
            radius_meters: 1000.0,
            ..SearchServicesRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["radius_meters"]);
    let status = h
        .client
        .update_capacity(UpdateCapacityRequest {
            request_id: "c".into(),
            service_id: "s".into(),
            location_id: "l".into(),
            available: 5,
            total: 3,
            as_of_time: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["available", "as_of_time"]);
    let status = h
        .client
        .create_referral(CreateReferralRequest {
            request_id: "x".into(),
            incident_id: String::new(),
            service_id: "s".into(),
            location_id: "bad id".into(),
            notes: "n".repeat(4097),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["incident_id", "location_id", "notes"]);
    let status = h
        .client
        .list_referrals(ListReferralsRequest {
            status: 99,
            page_size: -5,
            ..ListReferralsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["status", "page_size"]);
}

async fn search_combines_text_distance_taxonomy_language_capacity(mut h: Harness) {
    let near = (44.0530, -123.0870); // ~100 m from EUGENE
    let mid = (44.0700, -123.0868); // ~2 km
    let far = (44.9429, -123.0351); // Salem, ~100 km
    let mut shelter = service(
        "shelter",
        "Youth Shelter",
        "Emergency beds for youth",
        vec![location(
            "s-near",
            near.0,
            near.1,
            "America/Los_Angeles",
            vec![],
        )],
    );
    shelter.taxonomy_terms = vec![TaxonomyTerm {
        id: "t-housing".into(),
        code: "BH".into(),
        name: "Housing".into(),
        taxonomy: "211".into(),
        parent_id: String::new(),
    }];
    upsert(
        &mut h,
        service("root-term-holder", "Term Holder", "x", vec![]),
    )
    .await;
    let mut crisis = service(
        "crisis",
        "Crisis Line",
        "Mental health crisis counseling",
        vec![
            location("c-mid", mid.0, mid.1, "America/Los_Angeles", vec![]),
            location("c-far", far.0, far.1, "America/Los_Angeles", vec![]),
        ],
    );
    crisis.languages = vec!["en".into(), "es-MX".into()];
    crisis.taxonomy_terms = vec![TaxonomyTerm {
        id: "t-crisis".into(),
        code: "RP-1500".into(),
        name: "Crisis Intervention".into(),
        taxonomy: "211".into(),
        parent_id: "t-mental".into(),
    }];
    let mut mental = service(
        "mental",
        "Counseling Center",
        "Youth counseling",
        vec![location(
            "m-far",
            far.0,
            far.1,
            "America/Los_Angeles",
            vec![],
        )],
    );
    mental.taxonomy_terms = vec![TaxonomyTerm {
        id: "t-mental".into(),
        code: "RP".into(),
        name: "Mental Health".into(),
        taxonomy: "211".into(),
        parent_id: String::new(),
    }];
    let mut hotline = service(
        "hotline",
        "Youth Hotline",
        "Phone support for youth",
        vec![],
    );
    hotline.languages = vec!["es".into()];
    let mut closed = service(
        "closed",
        "Old Youth Shelter",
        "Youth beds",
        vec![location(
            "x-near",
            near.0,
            near.1,
            "America/Los_Angeles",
            vec![],
        )],
    );
    closed.status = ServiceStatus::Defunct as i32;
    for s in [shelter, crisis, mental, hotline, closed] {
        upsert(&mut h, s).await;
    }
    let point = Some(GeoPoint {
        latitude: EUGENE.0,
        longitude: EUGENE.1,
    });
    // Near only: distance order, radius excludes far and location-less results.
    let r = search(
        &mut h,
        SearchServicesRequest {
            location: point,
            radius_meters: 5000.0,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), ["shelter@s-near", "crisis@c-mid"]);
    assert!(r.results[0].distance_meters < 200.0 && r.results[1].distance_meters > 1500.0);
    // No filter: every ACTIVE pair, name order, location-less service included.
    let r = search(&mut h, SearchServicesRequest::default()).await;
    assert_eq!(
        ids(&r),
        [
            "mental@m-far",
            "crisis@c-far",
            "crisis@c-mid",
            "root-term-holder@",
            "hotline@",
            "shelter@s-near"
        ]
    );
    // Text: "youth" matches shelter, mental (description), hotline; not the defunct one.
    let r = search(
        &mut h,
        SearchServicesRequest {
            query: "youth".into(),
            ..Default::default()
        },
    )
    .await;
    let mut got = ids(&r);
    got.sort();
    assert_eq!(got, ["hotline@", "mental@m-far", "shelter@s-near"]);
    assert!(
        r.results
            .iter()
            .all(|x| x.relevance > 0.0 && x.relevance <= 1.0)
    );
    // Text + near: relevance then distance.
    let r = search(
        &mut h,
        SearchServicesRequest {
            query: "crisis".into(),
            location: point,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), ["crisis@c-mid", "crisis@c-far"]);
    // Taxonomy: a parent code matches its descendants; text matches term names.
    let r = search(
        &mut h,
        SearchServicesRequest {
            taxonomy_codes: vec!["RP".into()],
            location: point,
            ..Default::default()
        },
    )
    .await;
    // c-far and m-far share a point: equal distance, then name ("Counseling" < "Crisis").
    assert_eq!(ids(&r), ["crisis@c-mid", "mental@m-far", "crisis@c-far"]);
    let r = search(
        &mut h,
        SearchServicesRequest {
            taxonomy_codes: vec!["RP-1500".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), ["crisis@c-far", "crisis@c-mid"]);
    let r = search(
        &mut h,
        SearchServicesRequest {
            query: "intervention".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r).len(), 2);
    // Languages: "es" matches "es" and "es-MX".
    let r = search(
        &mut h,
        SearchServicesRequest {
            languages: vec!["ES".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), ["crisis@c-far", "crisis@c-mid", "hotline@"]);
    // Accepting only: the proto keeps locations that never report capacity, so before any
    // report it filters nothing out.
    let everything = ids(&search(&mut h, SearchServicesRequest::default()).await);
    let r = search(
        &mut h,
        SearchServicesRequest {
            accepting_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), everything);
    h.client
        .update_capacity(UpdateCapacityRequest {
            request_id: "cap1".into(),
            service_id: "crisis".into(),
            location_id: "c-far".into(),
            available: 2,
            total: 4,
            as_of_time: Some(now_ts()),
        })
        .await
        .unwrap();
    h.client
        .update_capacity(UpdateCapacityRequest {
            request_id: "cap2".into(),
            service_id: "shelter".into(),
            location_id: "s-near".into(),
            available: 0,
            total: 4,
            as_of_time: Some(now_ts()),
        })
        .await
        .unwrap();
    // Only the location that reported no free places goes; the one with places and those
    // that never reported stay.
    let r = search(
        &mut h,
        SearchServicesRequest {
            accepting_only: true,
            ..Default::default()
        },
    )
    .await;
    let without_full: Vec<_> = everything
        .iter()
        .filter(|id| id.as_str() != "shelter@s-near")
        .cloned()
        .collect();
    assert_eq!(ids(&r), without_full);
    assert_eq!(without_full.len(), everything.len() - 1);
    let far = r
        .results
        .iter()
        .position(|x| x.location_id == "c-far")
        .unwrap();
    assert_eq!(r.results[far].capacity.as_ref().unwrap().available, 2);
    // Accepting only with a point: the full shelter is the nearest, and it is left out.
    let r = search(
        &mut h,
        SearchServicesRequest {
            location: point,
            radius_meters: 5000.0,
            accepting_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), ["crisis@c-mid"]);
    // A query with no words matches nothing.
    let r = search(
        &mut h,
        SearchServicesRequest {
            query: "!!!".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(r.results.is_empty());
}

async fn open_at_follows_each_locations_time_zone(mut h: Harness) {
    // Overnight shelter in Los Angeles: Fridays 20:00 to 08:00.
    upsert(
        &mut h,
        service(
            "overnight",
            "Night Shelter",
            "beds",
            vec![location(
                "la",
                34.05,
                -118.24,
                "America/Los_Angeles",
                vec![weekly("FR", "20:00", "08:00")],
            )],
        ),
    )
    .await;
    // Drop-in in New York: every day 09:00 to 17:00.
    upsert(
        &mut h,
        service(
            "dropin",
            "Drop-in Center",
            "day center",
            vec![location(
                "ny",
                40.71,
                -74.0,
                "America/New_York",
                vec![weekly("", "09:00", "17:00")],
            )],
        ),
    )
    .await;
    // A schedule valid only in 2026, Sundays 01:00-04:00 in Los Angeles (the DST change day).
    let mut seasonal = weekly("SU", "01:00", "04:00");
    seasonal.valid_from = "2026-01-01".into();
    seasonal.valid_to = "2026-12-31".into();
    upsert(
        &mut h,
        service(
            "seasonal",
            "Seasonal Clinic",
            "clinic",
            vec![location(
                "la2",
                34.06,
                -118.25,
                "America/Los_Angeles",
                vec![seasonal],
            )],
        ),
    )
    .await;
    let open = |h: &mut Harness, at: &str| {
        let request = SearchServicesRequest {
            open_at: Some(ts(at)),
            ..Default::default()
        };
        let mut client = h.client.clone();
        async move {
            let r = client.search_services(request).await.unwrap().into_inner();
            let mut v = ids(&r);
            v.sort();
            (v, r)
        }
    };
    // Friday 2026-03-06 23:30 in LA = Saturday 07:30Z; NY is 02:30 Saturday: only LA open.
    let (v, _) = open(&mut h, "2026-03-07T07:30:00Z").await;
    assert_eq!(v, ["overnight@la"]);
    // Saturday 07:59 LA (after midnight, still open) = 15:59Z; NY 10:59: both open.
    let (v, _) = open(&mut h, "2026-03-07T15:59:00Z").await;
    assert_eq!(v, ["dropin@ny", "overnight@la"]);
    // Saturday 08:00 LA: closed.
    let (v, _) = open(&mut h, "2026-03-07T16:00:00Z").await;
    assert_eq!(v, ["dropin@ny"]);
    // DST: clocks in LA go forward on Sunday 2026-03-08 at 02:00 (PST -> PDT).
    // 01:30 PST = 09:30Z: open. 03:30 PDT = 10:30Z: open (wall clock 03:30 < 04:00).
    // 04:30 PDT = 11:30Z: closed. Under a fixed UTC-8 offset 11:30Z would be 03:30, open.
    let (v, _) = open(&mut h, "2026-03-08T09:30:00Z").await;
    assert!(v.contains(&"seasonal@la2".to_owned()), "{v:?}");
    let (v, _) = open(&mut h, "2026-03-08T10:30:00Z").await;
    assert!(v.contains(&"seasonal@la2".to_owned()), "{v:?}");
    let (v, _) = open(&mut h, "2026-03-08T11:30:00Z").await;
    assert!(!v.contains(&"seasonal@la2".to_owned()), "{v:?}");
    // Outside valid dates: Sunday 2027-01-03 02:00 PST.
    let (v, _) = open(&mut h, "2027-01-03T10:00:00Z").await;
    assert!(!v.contains(&"seasonal@la2".to_owned()), "{v:?}");
    // Without the filter, open_now and next_open_time report at the instant (Friday 19:00 LA).
    let r = search(
        &mut h,
        SearchServicesRequest {
            query: "beds".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&r), ["overnight@la"]);
    let all = h
        .client
        .search_services(SearchServicesRequest {
            query: "shelter".into(),
            open_at: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.results.len(), 1);
    let mut listing = h.client.clone();
    let r = listing
        .search_services(SearchServicesRequest {
            location: Some(GeoPoint {
                latitude: 34.05,
                longitude: -118.24,
            }),
            radius_meters: 5000.0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);
    // At Friday 19:00 PST (03:00Z Saturday) the night shelter is closed and opens at 20:00.
    let filtered = h
        .client
        .search_services(SearchServicesRequest {
            query: "beds".into(),
            open_at: Some(ts("2026-03-07T03:00:00Z")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.results.is_empty());
    let at_seven = open(&mut h, "2026-03-07T04:00:00Z").await.1;
    let night = at_seven
        .results
        .iter()
        .find(|r| r.location_id == "la")
        .unwrap();
    assert!(night.open_now && night.next_open_time.is_none());
    let day = at_seven.results.iter().find(|r| r.location_id == "la2");
    assert!(day.is_none());
}

async fn pages_are_stable_while_data_changes_and_tokens_are_checked(mut h: Harness) {
    for i in 0..7 {
        upsert(
            &mut h,
            service(
                &format!("s{i}"),
                &format!("Pantry {i}"),
                "food pantry",
                vec![location(
                    &format!("l{i}"),
                    EUGENE.0 + f64::from(i) * 0.01,
                    EUGENE.1,
                    "America/Los_Angeles",
                    vec![],
                )],
            ),
        )
        .await;
    }
    let point = Some(GeoPoint {
        latitude: EUGENE.0,
        longitude: EUGENE.1,
    });
    for base in [
        SearchServicesRequest {
            page_size: 3,
            ..Default::default()
        },
        SearchServicesRequest {
            page_size: 3,
            location: point,
            radius_meters: 50_000.0,
            ..Default::default()
        },
        SearchServicesRequest {
            page_size: 3,
            query: "pantry".into(),
            ..Default::default()
        },
    ] {
        let first = search(&mut h, base.clone()).await;
        assert_eq!(first.results.len(), 3);
        assert!(!first.next_page_token.is_empty());
        // Tampering with the token is refused.
        let mut forged = first.next_page_token.clone();
        forged.insert(0, 'x');
        let status = h
            .client
            .search_services(SearchServicesRequest {
                page_token: forged,
                ..base.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "INVALID_PAGE_TOKEN");
        // A token of another query is refused.
        let status = h
            .client
            .search_services(SearchServicesRequest {
                page_token: first.next_page_token.clone(),
                languages: vec!["fr".into()],
                ..base.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&status), "INVALID_PAGE_TOKEN");
        let mut seen = ids(&first);
        let mut token = first.next_page_token;
        while !token.is_empty() {
            let page = search(
                &mut h,
                SearchServicesRequest {
                    page_token: token,
                    ..base.clone()
                },
            )
            .await;
            seen.extend(ids(&page));
            token = page.next_page_token;
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 7, "{seen:?}");
        assert_eq!(seen.len(), 7, "{seen:?}");
    }
    // Data changes between pages: a service ranked before the cursor is added, one already
    // seen is removed from the index; the rest still comes exactly once.
    let base = SearchServicesRequest {
        page_size: 3,
        location: point,
        radius_meters: 50_000.0,
        ..Default::default()
    };
    let first = search(&mut h, base.clone()).await;
    upsert(
        &mut h,
        service(
            "s-new",
            "Pantry new",
            "food pantry",
            vec![location(
                "l-new",
                EUGENE.0,
                EUGENE.1,
                "America/Los_Angeles",
                vec![],
            )],
        ),
    )
    .await;
    let mut gone = service("s0", "Pantry 0", "food pantry", vec![]);
    gone.status = ServiceStatus::Inactive as i32;
    upsert(&mut h, gone).await;
    let mut seen = ids(&first);
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = search(
            &mut h,
            SearchServicesRequest {
                page_token: token,
                ..base.clone()
            },
        )
        .await;
        seen.extend(ids(&page));
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..7).map(|i| format!("s{i}@l{i}")).collect();
    assert_eq!(seen, expected);
}

async fn capacity_reports_ignore_stale_ones(mut h: Harness) {
    upsert(
        &mut h,
        service(
            "svc",
            "Shelter",
            "beds",
            vec![location(
                "loc",
                EUGENE.0,
                EUGENE.1,
                "America/Los_Angeles",
                vec![],
            )],
        ),
    )
    .await;
    let report = |id: &str, available: i32, at: &str, location: &str| UpdateCapacityRequest {
        request_id: id.into(),
        service_id: "svc".into(),
        location_id: location.into(),
        available,
        total: 10,
        as_of_time: Some(ts(at)),
    };
    let r = h
        .client
        .update_capacity(report("a", 4, "2026-01-01T10:00:00Z", "loc"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.stale);
    let r = h
        .client
        .update_capacity(report("b", 1, "2026-01-01T09:00:00Z", "loc"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.stale);
    assert_eq!(r.capacity.unwrap().available, 4);
    let r = h
        .client
        .update_capacity(report("c", 7, "2026-01-01T11:00:00Z", "loc"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.stale);
    let got = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(got.locations[0].capacity.as_ref().unwrap().available, 7);
    let status = h
        .client
        .update_capacity(report("d", 1, "2026-01-01T12:00:00Z", "elsewhere"))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "LOCATION_NOT_FOUND");
    let mut unknown = report("e", 1, "2026-01-01T12:00:00Z", "loc");
    unknown.service_id = "nope".into();
    assert_eq!(
        reason(&h.client.update_capacity(unknown).await.unwrap_err()),
        "SERVICE_NOT_FOUND"
    );
    let future = UpdateCapacityRequest {
        as_of_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 600,
            nanos: 0,
        }),
        ..report("f", 1, "2026-01-01T12:00:00Z", "loc")
    };
    assert_eq!(
        bad_fields(&h.client.update_capacity(future).await.unwrap_err()),
        ["as_of_time"]
    );
}

async fn referrals_close_the_loop(mut h: Harness) {
    upsert(
        &mut h,
        service(
            "svc",
            "Shelter",
            "beds",
            vec![location(
                "loc",
                EUGENE.0,
                EUGENE.1,
                "America/Los_Angeles",
                vec![],
            )],
        ),
    )
    .await;
    let mut inactive = service("old", "Old", "gone", vec![]);
    inactive.status = ServiceStatus::Inactive as i32;
    upsert(&mut h, inactive).await;
    let create = |id: &str, incident: &str, service: &str, location: &str| CreateReferralRequest {
        request_id: id.into(),
        incident_id: incident.into(),
        service_id: service.into(),
        location_id: location.into(),
        notes: "needs a bed tonight".into(),
    };
    let first = h
        .client
        .create_referral(create("c1", "inc-1", "svc", "loc"))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(first.status, ReferralStatus::Pending as i32);
    // A retry returns the same referral.
    let again = h
        .client
        .create_referral(create("c1", "inc-1", "svc", "loc"))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(again, first);
    let status = h
        .client
        .create_referral(create("c2", "inc-1", "svc", "loc"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "REFERRAL_ALREADY_EXISTS");
    assert_eq!(info.metadata.get("referral_id"), Some(&first.referral_id));
    assert_eq!(
        reason(
            &h.client
                .create_referral(create("c3", "inc-1", "old", ""))
                .await
                .unwrap_err()
        ),
        "SERVICE_NOT_ACTIVE"
    );
    assert_eq!(
        reason(
            &h.client
                .create_referral(create("c4", "inc-1", "nope", ""))
                .await
                .unwrap_err()
        ),
        "SERVICE_NOT_FOUND"
    );
    assert_eq!(
        reason(
            &h.client
                .create_referral(create("c5", "inc-1", "svc", "other"))
                .await
                .unwrap_err()
        ),
        "LOCATION_NOT_FOUND"
    );
    let whole = h
        .client
        .create_referral(create("c6", "inc-1", "svc", ""))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    let second = h
        .client
        .create_referral(create("c7", "inc-2", "svc", "loc"))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    let update = |id: &str, referral: &str, status: ReferralStatus, notes: Option<&str>| {
        UpdateReferralRequest {
            request_id: id.into(),
            referral_id: referral.into(),
            status: status as i32,
            notes: notes.map(str::to_owned),
        }
    };
    let r = h
        .client
        .update_referral(update(
            "u1",
            &first.referral_id,
            ReferralStatus::NoCapacity,
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(r.status, ReferralStatus::NoCapacity as i32);
    assert_eq!(r.notes, "needs a bed tonight");
    assert_eq!(
        reason(
            &h.client
                .update_referral(update(
                    "u2",
                    &first.referral_id,
                    ReferralStatus::Pending,
                    None
                ))
                .await
                .unwrap_err()
        ),
        "INVALID_STATUS_TRANSITION"
    );
    let r = h
        .client
        .update_referral(update(
            "u3",
            &first.referral_id,
            ReferralStatus::Connected,
            Some("placed"),
        ))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(
        (r.status, r.notes.as_str()),
        (ReferralStatus::Connected as i32, "placed")
    );
    assert_eq!(
        reason(
            &h.client
                .update_referral(update(
                    "u4",
                    &first.referral_id,
                    ReferralStatus::Declined,
                    None
                ))
                .await
                .unwrap_err()
        ),
        "REFERRAL_CLOSED"
    );
    // Same status again is a no-op; notes may still change on a closed referral.
    let r = h
        .client
        .update_referral(update(
            "u5",
            &first.referral_id,
            ReferralStatus::Connected,
            Some("placed, bed 4"),
        ))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(r.notes, "placed, bed 4");
    assert_eq!(
        reason(
            &h.client
                .update_referral(update("u6", "missing", ReferralStatus::Connected, None))
                .await
                .unwrap_err()
        ),
        "REFERRAL_NOT_FOUND"
    );
    // Once closed, a new referral of the same incident to the same place may be made.
    h.client
        .create_referral(create("c8", "inc-1", "svc", "loc"))
        .await
        .unwrap();
    // Listing: oldest first, filters, paging.
    let all = h
        .client
        .list_referrals(ListReferralsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.referrals.len(), 4);
    assert_eq!(all.referrals[0].referral_id, first.referral_id);
    let inc1 = h
        .client
        .list_referrals(ListReferralsRequest {
            incident_id: "inc-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inc1.referrals.len(), 3);
    let connected = h
        .client
        .list_referrals(ListReferralsRequest {
            status: ReferralStatus::Connected as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        connected
            .referrals
            .iter()
            .map(|r| r.referral_id.clone())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&first.referral_id)
    );
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .list_referrals(ListReferralsRequest {
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.referrals.into_iter().map(|r| r.referral_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen,
        all.referrals
            .iter()
            .map(|r| r.referral_id.clone())
            .collect::<Vec<_>>()
    );
    assert!(seen.contains(&whole.referral_id) && seen.contains(&second.referral_id));
    let status = h
        .client
        .list_referrals(ListReferralsRequest {
            page_token: "garbage.token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_PAGE_TOKEN");
}

/// What one service's upsert changes in shared rows (a taxonomy term, the organization, a
/// location) shows in the other services that share them: in search and in GetService.
async fn shared_rows_edited_through_one_service_show_in_the_others(mut h: Harness) {
    let term = |name: &str| TaxonomyTerm {
        id: "t-shared".into(),
        code: "BH-1800".into(),
        name: name.into(),
        taxonomy: "211".into(),
        parent_id: String::new(),
    };
    let site = |lat: f64| location("loc-shared", lat, -123.09, "America/Los_Angeles", vec![]);
    let mut a = service("svc-a", "Alpha", "first", vec![site(44.05)]);
    a.taxonomy_terms = vec![term("Shelter")];
    let mut b = service("svc-b", "Bravo", "second", vec![site(44.05)]);
    b.taxonomy_terms = vec![term("Shelter")];
    upsert(&mut h, a.clone()).await;
    upsert(&mut h, b).await;

    // Rename the term, rename the organization and move the location, through svc-a only.
    a.taxonomy_terms = vec![term("Warming Center")];
    a.organization.as_mut().unwrap().name = "Willamette Aid".into();
    a.locations = vec![site(44.95)];
    upsert(&mut h, a).await;

    let by_text = |query: &str| SearchServicesRequest {
        query: query.into(),
        ..Default::default()
    };
    let mut got = ids(&search(&mut h, by_text("warming")).await);
    got.sort();
    assert_eq!(got, ["svc-a@loc-shared", "svc-b@loc-shared"]);
    let mut got = ids(&search(&mut h, by_text("willamette")).await);
    got.sort();
    assert_eq!(got, ["svc-a@loc-shared", "svc-b@loc-shared"]);
    assert!(search(&mut h, by_text("shelter")).await.results.is_empty());
    let near_new = search(
        &mut h,
        SearchServicesRequest {
            location: Some(GeoPoint {
                latitude: 44.95,
                longitude: -123.09,
            }),
            radius_meters: 1000.0,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&near_new), ["svc-a@loc-shared", "svc-b@loc-shared"]);

    let b = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc-b".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(b.taxonomy_terms[0].name, "Warming Center");
    assert_eq!(b.organization.unwrap().name, "Willamette Aid");
    assert_eq!(b.locations[0].point.unwrap().latitude, 44.95);
}

/// Great-circle distance in meters (haversine on Relay's one Earth radius), for the
/// brute-force answers below.
fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let h = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((b.1 - a.1).to_radians() / 2.0).sin().powi(2);
    2.0 * relay_runtime::geo::EARTH_RADIUS_METERS * h.sqrt().min(1.0).asin()
}

/// The point `meters` from `from` on the initial bearing `degrees` (the direct geodesic
/// problem on the sphere).
fn destination(from: (f64, f64), degrees: f64, meters: f64) -> (f64, f64) {
    let (lat, lon, bearing, delta) = (
        from.0.to_radians(),
        from.1.to_radians(),
        degrees.to_radians(),
        meters / relay_runtime::geo::EARTH_RADIUS_METERS,
    );
    let lat2 = (lat.sin() * delta.cos() + lat.cos() * delta.sin() * bearing.cos()).asin();
    let lon2 =
        lon + (bearing.sin() * delta.sin() * lat.cos()).atan2(delta.cos() - lat.sin() * lat2.sin());
    let lon2 = (lon2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
    (lat2.to_degrees(), lon2)
}

/// A radius search finds every location within the radius and nothing beyond it, in
/// distance order and across pages, where a latitude/longitude box around the circle is
/// easy to get wrong: across the antimeridian, near a pole, and at the circle's northmost,
/// southmost and widest points (the widest lies north of the center's parallel), just inside
/// and just outside.
async fn radius_search_is_exact_at_the_antimeridian_poles_and_circle_edge(mut h: Harness) {
    // (center, radius in meters, the zone of its locations)
    let cases: [((f64, f64), f64, &str); 4] = [
        ((-17.0, 179.995), 20_000.0, "Pacific/Fiji"),
        ((89.99, 10.0), 5_000.0, "UTC"),
        ((-89.995, -170.0), 3_000.0, "Antarctica/McMurdo"),
        ((60.0, 10.0), 250_000.0, "Europe/Oslo"),
    ];
    let mut expected = Vec::new();
    for (c, (center, radius, zone)) in cases.iter().enumerate() {
        let (lat, lon) = *center;
        // The bearing of the circle's widest point: where it touches a meridian.
        let delta = radius / relay_runtime::geo::EARTH_RADIUS_METERS;
        let widest = (delta.sin() / lat.to_radians().cos()).asin();
        let widest_lat = (lat.to_radians().sin() / delta.cos()).asin();
        let widest_bearing = if lat.abs() < 80.0 {
            (widest.sin() * widest_lat.cos() / delta.sin())
                .clamp(-1.0, 1.0)
                .asin()
                .to_degrees()
        } else {
            90.0
        };
        let mut points = Vec::new();
        for (k, bearing) in [
            0.0,
            180.0,
            90.0,
            270.0,
            widest_bearing,
            -widest_bearing,
            180.0 - widest_bearing,
            45.0,
        ]
        .into_iter()
        .enumerate()
        {
            // Distinct distances, so that the expected order has no ties.
            let k = f64::from(u32::try_from(k).unwrap());
            for fraction in [0.999 + k * 5e-5, 1.001, 0.4 + k * 0.01] {
                points.push(destination(*center, bearing, radius * fraction));
            }
        }
        // Across the antimeridian or the pole from the center.
        points.push((lat, if lon > 0.0 { -179.999 } else { 179.999 }));
        points.push((lat, lon - 180.0 * lon.signum()));
        let mut inside = Vec::new();
        let mut locations = Vec::new();
        for (i, point) in points.iter().enumerate() {
            let id = format!("edge{c}-{i:02}");
            let d = haversine(*center, *point);
            assert!(
                (d - radius).abs() > radius * 1e-5,
                "a test point must be clearly inside or outside"
            );
            if d <= *radius {
                inside.push((d, format!("edge{c}@{id}")));
            }
            locations.push(location(&id, point.0, point.1, zone, vec![]));
        }
        inside.sort_by(|a, b| a.0.total_cmp(&b.0));
        upsert(
            &mut h,
            service(&format!("edge{c}"), "Edge Shelter", "edge", locations),
        )
        .await;
        expected.push(inside);
    }
    for (c, (center, radius, _)) in cases.iter().enumerate() {
        let want: Vec<String> = expected[c].iter().map(|(_, id)| id.clone()).collect();
        assert!(want.len() >= 10, "case {c}: {} inside", want.len());
        let request = SearchServicesRequest {
            location: Some(GeoPoint {
                latitude: center.0,
                longitude: center.1,
            }),
            radius_meters: *radius,
            page_size: 100,
            ..Default::default()
        };
        let all = search(&mut h, request.clone()).await;
        assert_eq!(ids(&all), want, "case {c}: one page");
        for (result, (d, _)) in all.results.iter().zip(&expected[c]) {
            assert!((result.distance_meters - d).abs() < 0.01, "case {c}");
        }
        // Pages of 3 walk the same list: every next page starts farther out.
        let mut paged = Vec::new();
        let mut token = String::new();
        loop {
            let page = search(
                &mut h,
                SearchServicesRequest {
                    page_size: 3,
                    page_token: token,
                    ..request.clone()
                },
            )
            .await;
            paged.extend(ids(&page));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(paged, want, "case {c}: pages of 3");
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::start(super::Kind::Postgres).await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::start(super::Kind::Sqlite).await).await;
                }
            )*
        }
    };
}

conformance!(
    upsert_replaces_whole_and_get_returns_it,
    retries_replay_and_reused_ids_are_refused,
    bad_input_names_every_field_and_writes_nothing,
    search_combines_text_distance_taxonomy_language_capacity,
    open_at_follows_each_locations_time_zone,
    pages_are_stable_while_data_changes_and_tokens_are_checked,
    capacity_reports_ignore_stale_ones,
    referrals_close_the_loop,
    shared_rows_edited_through_one_service_show_in_the_others,
    radius_search_is_exact_at_the_antimeridian_poles_and_circle_edge,
);
