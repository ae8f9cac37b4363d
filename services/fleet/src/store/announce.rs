//! Announcements of teams becoming free ([`DispatchStore::subscribe`](super::DispatchStore::subscribe))
//! from a store's event streams: one task per region, started the first time the region is
//! looked at, reads the region's events and announces every change that leaves a team
//! AVAILABLE or OFF_DUTY ([`announces`]). A release made quietly is left out: its caller offers
//! the team itself ([`QuietReleases`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{EventsError, StoreError, TeamAvailable, announces};
use crate::model::{EventId, TeamEvent};

/// At most this many quiet releases wait for their event (see [`QuietReleases`]).
const QUIET_LIMIT: usize = 4_096;

/// Where a quiet release stands, for its team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// The release is in flight: the team's next AVAILABLE event is held back.
    InFlight,
    /// An AVAILABLE event, at this revision, came while the release was in flight.
    Held(i64),
    /// The release left the team at this revision: its event is dropped when it comes.
    Released(i64),
}

/// Quiet releases: the event reader leaves their AVAILABLE events unannounced (the caller
/// offers the team itself). The event may come before the release's reply, so the release is
/// marked before it is sent; an event that turns out not to be the release's own is announced
/// when the release ends. Bounded: past [`QUIET_LIMIT`] teams (events that never came, the
/// reader being interrupted) it forgets the releases whose events are still to come, which
/// costs at most a redundant announcement each; a held event is never forgotten.
#[derive(Debug, Default)]
struct QuietReleases(HashMap<String, Quiet>);

impl QuietReleases {
    /// Before a quiet release of `team_id`.
    fn begin(&mut self, team_id: &str) {
        if self.0.len() >= QUIET_LIMIT {
            self.0
                .retain(|_, quiet| !matches!(quiet, Quiet::Released(_)));
        }
        // An event already held (another release of the team in flight) stays held, to be
        // announced when a release ends.
        if !matches!(self.0.get(team_id), Some(Quiet::Held(_))) {
            self.0.insert(team_id.to_owned(), Quiet::InFlight);
        }
    }

    /// After the release, with the team's revision if it released the team. Returns the
    /// revision of an event held meanwhile that was not the release's own: the caller
    /// announces it.
    fn end(&mut self, team_id: &str, released: Option<i64>) -> Option<i64> {
        let state = self.0.remove(team_id);
        match (state, released) {
            (Some(Quiet::Held(held)), Some(revision)) if held == revision => None,
            (Some(Quiet::Held(held)), Some(revision)) => {
                if held < revision {
                    self.0.insert(team_id.to_owned(), Quiet::Released(revision));
                }
                Some(held)
            }
            (Some(Quiet::Held(held)), None) => Some(held),
            (_, Some(revision)) => {
                self.0.insert(team_id.to_owned(), Quiet::Released(revision));
                None
            }
            (_, None) => None,
        }
    }

    /// Whether an AVAILABLE event of `team_id` at `revision` is to be announced.
    fn announce(&mut self, team_id: &str, revision: i64) -> bool {
        match self.0.get(team_id).copied() {
            None | Some(Quiet::Held(_)) => true,
            Some(Quiet::InFlight) => {
                self.0.insert(team_id.to_owned(), Quiet::Held(revision));
                false
            }
            Some(Quiet::Released(released)) => {
                if released <= revision {
                    self.0.remove(team_id);
                }
                released != revision
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the announcer reads a region's events.
#[tonic::async_trait]
pub(super) trait EventSource: Send + Sync + 'static {
    /// The id of the region's latest event.
    async fn last_event_id(&self, region: &str) -> Result<EventId, StoreError>;
    /// Up to `max` events after `after`, waiting up to `block` for the first.
    async fn read_events(
        &self,
        region: &str,
        after: EventId,
        max: usize,
        block: Duration,
    ) -> Result<Vec<TeamEvent>, EventsError>;
}

/// The announcements of one store. Its region tasks stop when it is dropped.
#[derive(Debug)]
pub(super) struct Announcer {
    sender: broadcast::Sender<TeamAvailable>,
    quiet: Arc<Mutex<QuietReleases>>,
    watched: Mutex<HashSet<String>>,
    stop: CancellationToken,
}

impl Default for Announcer {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(4096).0,
            quiet: Arc::default(),
            watched: Mutex::new(HashSet::new()),
            stop: CancellationToken::new(),
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Announcer {
    /// A receiver of the announcements.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<TeamAvailable> {
        self.sender.subscribe()
    }

    /// Announces a team now. No receiver is fine: the queue is re-checked periodically.
    pub(super) fn announce(&self, region: &str, team_id: &str) {
        let _ = self.sender.send(TeamAvailable {
            region: region.to_owned(),
            team_id: team_id.to_owned(),
        });
    }

    /// Before a quiet release of `team_id`.
    pub(super) fn begin_quiet(&self, team_id: &str) {
        lock(&self.quiet).begin(team_id);
    }

    /// After a quiet release, with the team's revision if it released the team: another
    /// change that made the team AVAILABLE meanwhile is announced now.
    pub(super) fn end_quiet(&self, region: &str, team_id: &str, released: Option<i64>) {
        if lock(&self.quiet).end(team_id, released).is_some() {
            self.announce(region, team_id);
        }
    }

    /// Starts, once per region, the task that turns the region's events into announcements;
    /// `source` is called only then. Outside a Tokio runtime it does nothing.
    pub(super) fn watch(&self, region: &str, source: impl FnOnce() -> Arc<dyn EventSource>) {
        let first = lock(&self.watched).insert(region.to_owned());
        if !first || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let store = source();
        let sender = self.sender.clone();
        let quiet = self.quiet.clone();
        let stop = self.stop.clone();
        let region = region.to_owned();
        tokio::spawn(async move {
            let mut after = None;
            while !stop.is_cancelled() {
                let position = match after {
                    Some(position) => position,
                    None => match store.last_event_id(&region).await {
                        Ok(id) => id,
                        Err(error) => {
                            tracing::warn!(%region, %error, "cannot read team events");
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    },
                };
                after = Some(position);
                let read = tokio::select! {
                    () = stop.cancelled() => return,
                    read = store.read_events(&region, position, 256, Duration::from_secs(2)) => read,
                };
                match read {
                    Ok(events) => {
                        for event in events {
                            after = Some(event.id);
                            if announces(event.kind, &event.team)
                                && lock(&quiet).announce(&event.team.team_id, event.team.revision)
                            {
                                // No receiver is fine: the queue is re-checked periodically.
                                let _ = sender.send(TeamAvailable {
                                    region: region.clone(),
                                    team_id: event.team.team_id.clone(),
                                });
                            }
                        }
                    }
                    Err(error) => {
                        // Expired history or a Redis outage: start again from the newest event;
                        // the periodic queue re-check covers anything missed meanwhile.
                        tracing::warn!(%region, %error, "team events interrupted");
                        after = None;
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_releases_hold_back_only_their_own_event() {
        // The event after the reply: dropped once, a later one announced.
        let mut quiet = QuietReleases::default();
        quiet.begin("t");
        assert_eq!(quiet.end("t", Some(5)), None);
        assert!(!quiet.announce("t", 5));
        assert!(quiet.announce("t", 6));
        // The event before the reply: held, and dropped when it is the release's own.
        quiet.begin("t");
        assert!(!quiet.announce("t", 7));
        assert_eq!(quiet.end("t", Some(7)), None);
        assert!(quiet.announce("t", 8));
        // Another change's event held while a release failed: handed back to announce.
        quiet.begin("t");
        assert!(!quiet.announce("t", 9));
        assert_eq!(quiet.end("t", None), Some(9));
        // Another change's event held, then the release: the other is handed back, the
        // release's own still dropped.
        quiet.begin("t");
        assert!(!quiet.announce("t", 10));
        assert_eq!(quiet.end("t", Some(11)), Some(10));
        assert!(!quiet.announce("t", 11));
        // A second release begun while an event is held keeps it held, to be handed back.
        quiet.begin("t");
        assert!(!quiet.announce("t", 12));
        quiet.begin("t");
        assert_eq!(quiet.end("t", None), Some(12));
        // Other teams are untouched, and an older event than the release is announced.
        quiet.begin("t");
        assert_eq!(quiet.end("t", Some(20)), None);
        assert!(quiet.announce("u", 20));
        assert!(quiet.announce("t", 19));
        assert!(!quiet.announce("t", 20));
    }
}
