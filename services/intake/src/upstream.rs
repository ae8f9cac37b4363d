//! Consumers of routing's `WatchAssignments` and availability's `WatchTeams` streams, one per
//! configured region. Each resumes after the last event id it recorded (stored in the same
//! transaction as the event's effect), reconnects with backoff, and records events
//! idempotently by id, so a restart or a repeated event changes nothing twice.

use std::{sync::Arc, time::Duration};

use relay_proto::{
    availability::{
        TeamEventKind, WatchTeamsRequest, availability_service_client::AvailabilityServiceClient,
    },
    routing::WatchAssignmentsRequest,
};
use relay_runtime::client::TracePropagation;
use tokio_util::sync::CancellationToken;
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::core::Intake;

/// The availability client intake uses.
pub type AvailabilityClient =
    AvailabilityServiceClient<InterceptedService<Channel, TracePropagation>>;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

async fn pause(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    let jittered = delay.mul_f64(rand::random_range(0.5..=1.0));
    *delay = (*delay * 2).min(RECONNECT_MAX);
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(jittered) => true,
    }
}

/// Where a consumer asks its upstream to start: after its recorded cursor; with none yet (it
/// has never recorded an event of the region), from the start of the upstream's retained
/// history (`origin`), so that events published before it first connected, or while it was
/// disconnected before its first event, are not skipped (a call routed before intake's watch
/// was open stayed QUEUED in intake's view for good); and once the upstream has answered that
/// this history is gone (`history_gone`), from now.
fn resume_after(cursor: Option<String>, origin: &str, history_gone: bool) -> String {
    match cursor {
        Some(cursor) => cursor,
        None if history_gone => String::new(),
        None => origin.to_owned(),
    }
}

/// Whether `status`, the answer to a watch that asked for the upstream's whole history, says
/// that history is no longer retained.
fn history_expired(status: &tonic::Status, after: &str, origin: &str) -> bool {
    after == origin && status.code() == tonic::Code::FailedPrecondition
}

/// Follows routing's assignment events of `region` until `shutdown`.
pub async fn watch_routing(intake: Arc<Intake>, region: String, shutdown: CancellationToken) {
    // Routing's event ids are sequence numbers from 1.
    const ORIGIN: &str = "0";
    let mut delay = RECONNECT_MIN;
    let mut history_gone = false;
    loop {
        let after = match intake.store.stream_cursor("routing", &region).await {
            Ok(cursor) => resume_after(cursor, ORIGIN, history_gone),
            Err(error) => {
                tracing::warn!(region = %region, error = %error, "cannot read the routing cursor");
                if !pause(&mut delay, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let mut client = intake.routing.clone();
        let request = WatchAssignmentsRequest {
            region: region.clone(),
            after_event_id: after.clone(),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            result = client.watch_assignments(request) => result,
        };
        match stream {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        () = shutdown.cancelled() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(message)) => {
                            delay = RECONNECT_MIN;
                            let Some(event) = message.event else { continue };
                            if let Err(error) = intake.apply_assignment_event(&region, &event).await
                            {
                                tracing::warn!(region = %region, error = %error, "cannot record an assignment event; reconnecting");
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(region = %region, code = ?status.code(), "routing event stream ended");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                history_gone |= history_expired(&status, &after, ORIGIN);
                tracing::debug!(region = %region, code = ?status.code(), "routing event stream unavailable");
            }
        }
        if !pause(&mut delay, &shutdown).await {
            return;
        }
    }
}

/// Follows availability's team events of `region` until `shutdown`.
pub async fn watch_teams(
    intake: Arc<Intake>,
    client: AvailabilityClient,
    region: String,
    shutdown: CancellationToken,
) {
    // Availability's event ids are Redis stream ids.
    const ORIGIN: &str = "0-0";
    let mut delay = RECONNECT_MIN;
    let mut history_gone = false;
    loop {
        let after = match intake.store.stream_cursor("availability", &region).await {
            Ok(cursor) => resume_after(cursor, ORIGIN, history_gone),
            Err(error) => {
                tracing::warn!(region = %region, error = %error, "cannot read the availability cursor");
                if !pause(&mut delay, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let mut client = client.clone();
        let request = WatchTeamsRequest {
            region: region.clone(),
            after_event_id: after.clone(),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            result = client.watch_teams(request) => result,
        };
        match stream {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        () = shutdown.cancelled() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(message)) => {
                            delay = RECONNECT_MIN;
                            // Only status changes matter to incidents; location and roster
                            // events are skipped (a replay of them after a reconnect is harmless).
                            if message.kind != TeamEventKind::StatusChanged as i32 {
                                continue;
                            }
                            let Some(team) = &message.team else { continue };
                            let result = intake
                                .apply_team_event(
                                    &region,
                                    &message.event_id,
                                    team,
                                    message.event_time.as_ref(),
                                )
                                .await;
                            if let Err(error) = result {
                                tracing::warn!(region = %region, error = %error, "cannot record a team event; reconnecting");
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(region = %region, code = ?status.code(), "team event stream ended");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                history_gone |= history_expired(&status, &after, ORIGIN);
                tracing::debug!(region = %region, code = ?status.code(), "team event stream unavailable");
            }
        }
        if !pause(&mut delay, &shutdown).await {
            return;
        }
    }
}
