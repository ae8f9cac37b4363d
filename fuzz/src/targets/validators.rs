//! Every request validator fed arbitrary protobuf bytes: the first byte picks a request type
//! of one of the services, the rest is decoded as that message (as tonic would) and checked by
//! the same function the handler calls before touching storage. A validator never panics, and
//! whatever it accepts satisfies what the handler and the stores rely on: coordinates finite
//! and on the globe, timestamps within google.protobuf.Timestamp's range (and the documented
//! clock skew), page sizes and limits within bounds, enums known, schedules evaluable.

use chrono::{DateTime, Duration, TimeZone, Utc};
use prost::Message;
use relay_proto::{availability as av, common::GeoPoint, directory as dir, intake, routing};
use relay_runtime::validate::{
    MAX_PAGE_SIZE, MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS, is_capability,
};

/// The server's clock in every check: fixed, so a crash reproduces.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("a valid instant")
}

fn in_timestamp_range(t: DateTime<Utc>) {
    assert!(
        (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.timestamp()),
        "timestamp out of range: {t}"
    );
}

fn on_globe(latitude: f64, longitude: f64) {
    assert!(
        latitude.is_finite() && (-90.0..=90.0).contains(&latitude),
        "latitude {latitude}"
    );
    assert!(
        longitude.is_finite() && (-180.0..=180.0).contains(&longitude),
        "longitude {longitude}"
    );
}

fn point(p: &GeoPoint) {
    on_globe(p.latitude, p.longitude);
}

fn page(size: usize) {
    assert!((1..=MAX_PAGE_SIZE).contains(&size), "page size {size}");
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// The request types, in the order the selector byte picks them.
const KINDS: u8 = 31;

#[allow(clippy::too_many_lines)]
fn check(kind: u8, bytes: &[u8]) {
    use relay_availability::handler as a;
    use relay_directory::handler as d;
    use relay_intake::validate as i;
    use relay_routing::engine as r;
    match kind % KINDS {
        // --- relay.availability.v1 ---
        0 => {
            let Some(q) = decode::<av::UpsertTeamRequest>(bytes) else {
                return;
            };
            if let Ok((team, expected)) = a::check_upsert_team(&q) {
                team.shift_ends_at.map(in_timestamp_range);
                assert!(team.capabilities.iter().all(|t| is_capability(t)));
                assert!(
                    team.capabilities.windows(2).all(|w| w[0] < w[1]),
                    "tags not sorted/unique"
                );
                assert!(!team.display_name.trim().is_empty());
                assert!(expected.is_none_or(|r| r > 0));
            }
        }
        1 => {
            let Some(q) = decode::<av::GetTeamRequest>(bytes) else {
                return;
            };
            if a::check_get_team(&q).is_ok() {
                assert!(!q.team_id.is_empty());
            }
        }
        2 => {
            let Some(q) = decode::<av::ListTeamsRequest>(bytes) else {
                return;
            };
            if let Ok((_, size)) = a::check_list_teams(&q) {
                page(size);
            }
        }
        3 => {
            let Some(q) = decode::<av::SetTeamStatusRequest>(bytes) else {
                return;
            };
            if let Ok((status, expected)) = a::check_set_team_status(&q) {
                assert_ne!(status, relay_proto::common::TeamStatus::Unspecified);
                assert!(expected.is_none_or(|r| r > 0));
            }
        }
        4 | 5 => {
            let report = if kind % KINDS == 4 {
                let Some(q) = decode::<av::ReportLocationRequest>(bytes) else {
                    return;
                };
                a::check_location(&a::ReportFields::of_request(&q), now())
            } else {
                let Some(q) = decode::<av::StreamLocationsRequest>(bytes) else {
                    return;
                };
                a::check_location(&a::ReportFields::of_message(&q), now())
            };
            if let Ok(report) = report {
                on_globe(report.position.latitude, report.position.longitude);
                in_timestamp_range(report.recorded_at);
                assert!(report.recorded_at <= now() + Duration::seconds(60));
                assert!(
                    report
                        .heading_degrees
                        .is_none_or(|h| h.is_finite() && (0.0..360.0).contains(&h))
                );
                assert!(
                    report
                        .speed_meters_per_second
                        .is_none_or(|s| s.is_finite() && s >= 0.0)
                );
                assert!(
                    report
                        .accuracy_meters
                        .is_none_or(|s| s.is_finite() && s >= 0.0)
                );
            }
        }
        6 => {
            let Some(q) = decode::<av::FindAvailableTeamsRequest>(bytes) else {
                return;
            };
            if let Ok((p, required, limit)) = a::check_find_available_teams(&q) {
                point(&p);
                assert!(q.radius_meters.is_finite() && q.radius_meters > 0.0);
                assert!((1..=a::MAX_LIMIT).contains(&limit));
                assert!(required.iter().all(|t| is_capability(t)));
            }
        }
        7 => {
            let Some(q) = decode::<av::WatchTeamsRequest>(bytes) else {
                return;
            };
            if let Ok(Some(after)) = a::check_watch_teams(&q) {
                let again = relay_fleet::model::EventId::parse(&after.to_string());
                assert_eq!(again, Some(after), "an event id does not round-trip");
            }
        }
        // --- relay.intake.v1 ---
        8 => {
            let Some(q) = decode::<intake::SubmitIncidentRequest>(bytes) else {
                return;
            };
            submitted(i::check_submit(q, now().timestamp_micros()));
        }
        9 => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return;
            };
            let defaults = relay_intake::eido::EidoDefaults {
                region: "fuzz".into(),
                now_micros: now().timestamp_micros(),
            };
            if let Ok((q, _)) = relay_intake::eido::submission(text, &defaults) {
                submitted(i::check_submit(q, now().timestamp_micros()));
            }
        }
        10 => {
            let Some(q) = decode::<intake::UpdateIncidentRequest>(bytes) else {
                return;
            };
            if let Ok(update) = i::validate_update(&q) {
                update.location.as_ref().map(point);
                assert!(update.priority.is_none_or(|p| (1..=5).contains(&p)));
                assert!(update.expected_revision >= 0);
            }
        }
        11 => {
            let Some(q) = decode::<intake::CancelIncidentRequest>(bytes) else {
                return;
            };
            let _ = i::check_cancel(&q);
        }
        12 => {
            let Some(q) = decode::<intake::CloseIncidentRequest>(bytes) else {
                return;
            };
            if i::check_close(&q).is_ok() {
                assert!(intake::CloseOutcome::try_from(q.outcome).is_ok());
            }
        }
        13 => {
            let Some(q) = decode::<intake::GetIncidentRequest>(bytes) else {
                return;
            };
            if let Ok(by_id) = i::check_get_incident(&q) {
                assert_eq!(by_id, !q.incident_id.is_empty());
            }
        }
        14 => {
            let Some(q) = decode::<intake::ListIncidentsRequest>(bytes) else {
                return;
            };
            if let Ok(bounds) = i::check_list_incidents(&q) {
                bounds.after.map(in_timestamp_range);
                bounds.before.map(in_timestamp_range);
                if let (Some(a), Some(b)) = (bounds.after, bounds.before) {
                    assert!(a < b);
                }
                page(bounds.page_size);
            }
        }
        15 => {
            let Some(q) = decode::<intake::WatchIncidentEventsRequest>(bytes) else {
                return;
            };
            if i::check_watch(&q).is_ok() {
                assert!(q.after_sequence >= 0);
            }
        }
        // --- relay.directory.v1 ---
        16 => {
            let Some(q) = decode::<dir::SearchServicesRequest>(bytes) else {
                return;
            };
            if let Ok(checked) = d::check_search(&q) {
                if let Some((lat, lon)) = checked.point {
                    on_globe(lat, lon);
                }
                assert!(checked.radius.is_finite() && checked.radius >= 0.0);
                checked.open_at.map(in_timestamp_range);
                page(checked.page_size);
            }
        }
        17 => {
            let Some(q) = decode::<dir::UpsertServiceRequest>(bytes) else {
                return;
            };
            if d::check_upsert_service(&q).is_ok() {
                let service = q.service.expect("an accepted upsert has a service");
                for location in &service.locations {
                    location.point.as_ref().map(point);
                    let hours: Vec<_> = location
                        .schedules
                        .iter()
                        .map(|s| {
                            relay_directory::schedule::Hours::parse(s)
                                .expect("an accepted schedule parses")
                        })
                        .collect();
                    if hours.is_empty() {
                        continue;
                    }
                    let tz = relay_directory::schedule::parse_time_zone(&location.time_zone)
                        .expect("an accepted location with schedules has a time zone");
                    // Open-now and next-open at the edges of what a search may ask.
                    for at in [
                        now(),
                        Utc.timestamp_opt(MIN_TIMESTAMP_SECONDS, 0)
                            .single()
                            .expect("min"),
                        Utc.timestamp_opt(MAX_TIMESTAMP_SECONDS, 0)
                            .single()
                            .expect("max"),
                    ] {
                        let _ = relay_directory::schedule::is_open(tz, &hours, at);
                        let _ = relay_directory::schedule::next_open(tz, &hours, at);
                    }
                }
            }
        }
        18 => {
            let Some(q) = decode::<dir::UpdateCapacityRequest>(bytes) else {
                return;
            };
            if d::check_update_capacity(&q, now()).is_ok() {
                assert!(q.total >= 0 && (0..=q.total).contains(&q.available));
                let at = q.as_of_time.expect("an accepted capacity has a time");
                assert!((MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&at.seconds));
            }
        }
        19 => {
            let Some(q) = decode::<dir::CreateReferralRequest>(bytes) else {
                return;
            };
            let _ = d::check_create_referral(&q);
        }
        20 => {
            let Some(q) = decode::<dir::UpdateReferralRequest>(bytes) else {
                return;
            };
            if let Ok(status) = d::check_update_referral(&q) {
                assert_eq!(status as i32, q.status);
            }
        }
        21 => {
            let Some(q) = decode::<dir::ListReferralsRequest>(bytes) else {
                return;
            };
            if let Ok(size) = d::check_list_referrals(&q) {
                page(size);
            }
        }
        22 => {
            let Some(q) = decode::<dir::GetServiceRequest>(bytes) else {
                return;
            };
            let _ = d::check_get_service(&q);
        }
        // --- relay.routing.v1 ---
        23 => {
            let Some(q) = decode::<routing::AssignTeamRequest>(bytes) else {
                return;
            };
            if let Ok(params) = r::check_assign_team(&q) {
                point(&params.location);
                assert!((1..=5).contains(&params.priority));
                assert!(params.required.iter().all(|t| is_capability(t)));
                assert!(params.preferred.iter().all(|t| is_capability(t)));
                assert!(
                    params
                        .expected_duration_seconds
                        .is_none_or(|s| (1..=86_400).contains(&s))
                );
            }
        }
        24 => {
            let Some(q) = decode::<routing::ConfirmAssignmentRequest>(bytes) else {
                return;
            };
            let _ = r::check_confirm_assignment(&q);
        }
        25 => {
            let Some(q) = decode::<routing::ReleaseTeamRequest>(bytes) else {
                return;
            };
            let _ = r::check_release_team(&q);
        }
        26 => {
            let Some(q) = decode::<routing::CancelRoutingRequest>(bytes) else {
                return;
            };
            let _ = r::check_cancel_routing(&q);
        }
        27 => {
            let Some(q) = decode::<routing::GetAssignmentRequest>(bytes) else {
                return;
            };
            let _ = r::check_get_assignment(&q);
        }
        28 => {
            let Some(q) = decode::<routing::ListQueueRequest>(bytes) else {
                return;
            };
            if let Ok(size) = r::check_list_queue(&q) {
                page(size);
            }
        }
        29 => {
            let Some(q) = decode::<routing::WatchAssignmentsRequest>(bytes) else {
                return;
            };
            if let Ok(after) = r::check_watch_assignments(&q) {
                assert!(after.is_none_or(|seq| seq >= 0));
            }
        }
        // --- relay.intake.v1 SubmitEido: the EIDO JSON inside the message ---
        _ => {
            let Some(q) = decode::<intake::SubmitEidoRequest>(bytes) else {
                return;
            };
            let defaults = relay_intake::eido::EidoDefaults {
                region: "fuzz".into(),
                now_micros: now().timestamp_micros(),
            };
            if let Ok((q, _)) = relay_intake::eido::submission(&q.eido_json, &defaults) {
                submitted(i::check_submit(q, now().timestamp_micros()));
            }
        }
    }
}

fn submitted(result: Result<relay_intake::core::NewIncident, relay_runtime::ApiError>) {
    let Ok(new) = result else { return };
    point(&new.location);
    let received = Utc
        .timestamp_micros(new.received_at)
        .single()
        .expect("received_at is an instant");
    in_timestamp_range(received);
    assert!(
        received <= now() + Duration::seconds(60),
        "received_at in the future"
    );
    assert!(
        received >= now() - Duration::days(7),
        "received_at too far back"
    );
    assert!((1..=5).contains(&new.priority), "priority {}", new.priority);
    assert_ne!(
        new.routing_mode,
        relay_proto::common::AssignmentMode::Unspecified
    );
    assert!(new.narrative.len() <= relay_intake::validate::MAX_NARRATIVE_BYTES);
}

/// Runs the target on one input, as libFuzzer would (see the module documentation).
pub fn run(data: &[u8]) {
    if let Some((&kind, bytes)) = data.split_first() {
        check(kind, bytes);
    }
}
