//! The whole suite as a CAD meets it: the four binaries as processes on one test database and
//! Redis key prefix, and a collector of one CAD's `WatchIncidentEvents` stream.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use relay_proto::intake::{
    IncidentEvent, IncidentEventKind, WatchIncidentEventsRequest,
    intake_service_client::IntakeServiceClient, watch_incident_events_response::Kind,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::{
    ServiceProcess, TestDatabase, binary_path, redis_delete_prefix, redis_url, unique_name,
};

/// Runs `<binary> migrate` with `env` and checks it succeeded.
///
/// # Panics
/// When the migration fails.
pub fn migrate(binary: &str, env: &[(&str, &str)]) {
    let output = std::process::Command::new(binary_path(binary))
        .arg("migrate")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run migrate");
    assert!(output.status.success(), "{binary} migrate: {output:?}");
}

/// The four services, started on a database and a Redis key prefix of their own.
pub struct Suite {
    /// relay-availability.
    pub availability: ServiceProcess,
    /// relay-routing, the replica intake calls.
    pub routing: ServiceProcess,
    /// Further routing replicas ([`Suite::start_with`]); intake does not call them, but they
    /// run the same upkeep (queue, reconciliation) on the same record and Redis.
    pub routing_replicas: Vec<ServiceProcess>,
    /// relay-directory.
    pub directory: ServiceProcess,
    /// relay-intake, following routing and availability.
    pub intake: ServiceProcess,
    /// The Redis key prefix (deleted by [`Suite::clean_up`]).
    pub prefix: String,
    /// Each service's admin (metrics) address, by name (`intake`, `routing`, `routing-1`, ...).
    pub admin: HashMap<String, std::net::SocketAddr>,
    /// The environment every service starts with (overrides applied by [`Suite::revive`]).
    env: Vec<(String, String)>,
    database: TestDatabase,
}

/// Sets each of `overrides` in `env`, replacing an earlier value of the same key.
fn set_env(env: &mut Vec<(String, String)>, overrides: &[(&str, &str)]) {
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push(((*key).to_owned(), (*value).to_owned()));
    }
}

/// Intake's environment: `env` and where routing and availability listen.
fn intake_env(
    env: &[(String, String)],
    routing: &ServiceProcess,
    availability: &ServiceProcess,
) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.push(("RELAY_ROUTING_ENDPOINT".into(), routing.endpoint()));
    env.push((
        "RELAY_AVAILABILITY_ENDPOINT".into(),
        availability.endpoint(),
    ));
    env
}

/// Starts service `name` (`routing-1` is a second relay-routing) with its admin address and,
/// when given, a fixed listen address.
fn start_service(
    env: &[(String, String)],
    admin: &HashMap<String, std::net::SocketAddr>,
    name: &str,
    listen: Option<std::net::SocketAddr>,
) -> ServiceProcess {
    let binary = format!("relay-{}", name.split('-').next().unwrap_or(name));
    let admin_listen = admin[name].to_string();
    let listen = listen.map(|a| a.to_string());
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("RELAY_ADMIN_LISTEN", admin_listen.as_str()));
    if let Some(listen) = &listen {
        env.push(("RELAY_LISTEN", listen.as_str()));
    }
    ServiceProcess::start(&binary, &env)
}

/// A free address on 127.0.0.1 ([`crate::free_port`]; the service binds it right after).
fn free_local_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()))
}

impl Suite {
    /// Migrates and starts the four services, and waits until each is SERVING. `extra` is
    /// environment for every service.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_with(extra, 1).await
    }

    /// As [`Suite::start`], with `routing_replicas` routing processes (at least one).
    ///
    /// # Panics
    /// When a service does not start or become SERVING.
    pub async fn start_with(extra: &[(&str, &str)], routing_replicas: usize) -> Self {
        Self::start_on(TestDatabase::new().await, extra, routing_replicas).await
    }

    /// As [`Suite::start_with`], on `database` (a test that reaches it through a proxy passes
    /// the proxied `RELAY_DATABASE_URL` in `extra`; [`Suite::database`] stays the direct one).
    ///
    /// # Panics
    /// When a service does not start or become SERVING.
    pub async fn start_on(
        database: TestDatabase,
        extra: &[(&str, &str)],
        routing_replicas: usize,
    ) -> Self {
        let redis = redis_url();
        let prefix = unique_name("relay");
        let mut env: Vec<(String, String)> = [
            ("RELAY_DATABASE_URL", database.url()),
            ("RELAY_REDIS_URL", redis.as_str()),
            ("RELAY_AVAILABILITY__KEY_PREFIX", prefix.as_str()),
            ("RELAY_ROUTING__KEY_PREFIX", prefix.as_str()),
            ("RELAY_SERVER__READINESS_INTERVAL_MS", "100"),
            ("RELAY_LOG", "warn"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        set_env(&mut env, extra);
        let base: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for binary in ["relay-routing", "relay-intake", "relay-directory"] {
            migrate(binary, &base);
        }
        let mut names = vec![String::from("intake"), String::from("availability")];
        names.push(String::from("routing"));
        names.extend((1..routing_replicas.max(1)).map(|i| format!("routing-{i}")));
        names.push(String::from("directory"));
        let admin: HashMap<String, std::net::SocketAddr> = names
            .into_iter()
            .map(|name| (name, free_local_addr()))
            .collect();
        let availability = start_service(&env, &admin, "availability", None);
        let routing = start_service(&env, &admin, "routing", None);
        let intake_env = intake_env(&env, &routing, &availability);
        let suite = Self {
            routing_replicas: (1..routing_replicas.max(1))
                .map(|i| start_service(&env, &admin, &format!("routing-{i}"), None))
                .collect(),
            directory: start_service(&env, &admin, "directory", None),
            intake: start_service(&intake_env, &admin, "intake", None),
            availability,
            routing,
            prefix,
            admin,
            env,
            database,
        };
        for process in suite.processes() {
            process.wait_until_serving().await;
        }
        suite
    }

    fn processes(&self) -> Vec<&ServiceProcess> {
        let mut all = vec![
            &self.availability,
            &self.routing,
            &self.directory,
            &self.intake,
        ];
        all.extend(self.routing_replicas.iter());
        all
    }

    /// The WARN and ERROR lines every service wrote to stderr so far (at most `limit` per
    /// service, the last ones), for a chaos test to print beside its verdict.
    #[must_use]
    pub fn warnings(&self, limit: usize) -> String {
        let mut out = String::new();
        let mut named: Vec<(String, &ServiceProcess)> = vec![
            ("availability".to_owned(), &self.availability),
            ("routing".to_owned(), &self.routing),
            ("directory".to_owned(), &self.directory),
            ("intake".to_owned(), &self.intake),
        ];
        for (index, replica) in self.routing_replicas.iter().enumerate() {
            named.push((format!("routing-{}", index + 1), replica));
        }
        for (name, process) in named {
            let lines: Vec<String> = process
                .stderr_lines()
                .into_iter()
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .collect();
            let skip = lines.len().saturating_sub(limit);
            for line in &lines[skip..] {
                out.push_str(&format!("{name}: {line}\n"));
            }
        }
        out
    }

    fn process_mut(&mut self, name: &str) -> &mut ServiceProcess {
        match name {
            "availability" => &mut self.availability,
            "routing" => &mut self.routing,
            "directory" => &mut self.directory,
            "intake" => &mut self.intake,
            other => {
                let index: usize = other
                    .strip_prefix("routing-")
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("no service {other}"));
                &mut self.routing_replicas[index - 1]
            }
        }
    }

    /// Kills `name` (`availability`, `routing`, `routing-1`, `directory`, `intake`) with
    /// SIGKILL, as a crash or an OOM kill would, and waits until it is gone.
    ///
    /// # Panics
    /// When it does not exit within 10 seconds.
    pub fn kill(&mut self, name: &str) {
        let process = self.process_mut(name);
        process.signal("KILL");
        assert!(
            process.wait_timeout(Duration::from_secs(10)).is_some(),
            "{name} survived SIGKILL"
        );
    }

    /// Starts `name` again on the same addresses (so the others find it), with `overrides`
    /// applied to the environment of this and every later start (a new `RELAY_REDIS_URL`
    /// after a failover, say), and waits until it is SERVING.
    ///
    /// # Panics
    /// When it does not start or become SERVING within 30 seconds.
    pub async fn revive(&mut self, name: &str, overrides: &[(&str, &str)]) {
        set_env(&mut self.env, overrides);
        let listen = self.process_mut(name).addr();
        let env = if name == "intake" {
            intake_env(&self.env, &self.routing, &self.availability)
        } else {
            self.env.clone()
        };
        let process = start_service(&env, &self.admin, name, Some(listen));
        process.wait_until_serving().await;
        *self.process_mut(name) = process;
    }

    /// The test database.
    #[must_use]
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// Scrapes `service`'s `/metrics` (Prometheus text).
    ///
    /// # Panics
    /// When the endpoint does not answer 200.
    pub async fn scrape(&self, service: &str) -> String {
        let (status, body) = crate::admin_get(self.admin[service], "/metrics").await;
        assert_eq!(status, 200, "GET /metrics of {service}");
        body
    }

    /// Deletes the suite's Redis keys.
    pub async fn clean_up(&self) {
        redis_delete_prefix(&self.prefix).await;
    }
}

/// Collects a CAD's events and waits for the ones a test expects.
pub struct Events {
    receiver: mpsc::UnboundedReceiver<IncidentEvent>,
    /// Every event received so far, in stream order.
    pub seen: Vec<IncidentEvent>,
}

impl Events {
    /// Watches `cad_system`'s stream from its start.
    ///
    /// # Panics
    /// When the watch cannot be opened.
    pub async fn watch(mut intake: IntakeServiceClient<Channel>, cad_system: &str) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut stream = intake
            .watch_incident_events(WatchIncidentEventsRequest {
                cad_system: cad_system.to_owned(),
                after_sequence: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                if let Some(Kind::Event(event)) = message.kind
                    && sender.send(event).is_err()
                {
                    return;
                }
            }
        });
        Self {
            receiver,
            seen: Vec::new(),
        }
    }

    /// Waits until `incident` has an event of one of `kinds`; returns the incident's kinds so
    /// far.
    ///
    /// # Panics
    /// When none comes within 30 seconds.
    pub async fn until_any(
        &mut self,
        incident: &str,
        kinds: &[IncidentEventKind],
    ) -> Vec<IncidentEventKind> {
        self.until_count(incident, kinds, 1).await
    }

    /// Waits until `incident` has `count` events of `kinds` in all; returns the incident's
    /// kinds so far.
    ///
    /// # Panics
    /// When they do not come within 30 seconds.
    pub async fn until_count(
        &mut self,
        incident: &str,
        kinds: &[IncidentEventKind],
        count: usize,
    ) -> Vec<IncidentEventKind> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen: Vec<IncidentEventKind> = self
                .seen
                .iter()
                .filter(|e| e.incident_id == incident)
                .map(IncidentEvent::kind)
                .collect();
            if seen.iter().filter(|k| kinds.contains(k)).count() >= count {
                return seen;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.receiver.recv()).await {
                Ok(Some(event)) => self.seen.push(event),
                _ => panic!("not {count} of {kinds:?} for {incident}; saw {seen:?}"),
            }
        }
    }

    /// Waits until `incident` has an event of `kind`; returns the incident's kinds so far.
    ///
    /// # Panics
    /// When none comes within 30 seconds.
    pub async fn until(
        &mut self,
        incident: &str,
        kind: IncidentEventKind,
    ) -> Vec<IncidentEventKind> {
        self.until_any(incident, &[kind]).await
    }

    /// Replays the stream seen so far as a CAD applying it in order would, and returns the
    /// first contradiction: a gap, a time going backwards, a team assigned while the stream
    /// still shows it on another incident, or a team status for an incident the stream does
    /// not show the team on.
    #[must_use]
    pub fn causal_violation(&self) -> Option<String> {
        let mut on: HashMap<&str, &str> = HashMap::new();
        let mut last: Option<&IncidentEvent> = None;
        for ev in &self.seen {
            if let Some(prev) = last {
                if ev.sequence != prev.sequence + 1 {
                    return Some(format!("gap after sequence {}", prev.sequence));
                }
                let time = |e: &IncidentEvent| e.event_time.map(|t| (t.seconds, t.nanos));
                if time(ev) < time(prev) {
                    return Some(format!("event_time goes back at sequence {}", ev.sequence));
                }
            }
            last = Some(ev);
            match ev.kind() {
                IncidentEventKind::Assigned => {
                    if let Some(other) = on.insert(&ev.team_id, &ev.incident_id)
                        && other != ev.incident_id
                    {
                        return Some(format!(
                            "sequence {} assigns {} to {} while it is still on {other}",
                            ev.sequence, ev.team_id, ev.incident_id
                        ));
                    }
                }
                IncidentEventKind::Cleared | IncidentEventKind::Released
                    if on.get(ev.team_id.as_str()) == Some(&ev.incident_id.as_str()) =>
                {
                    on.remove(ev.team_id.as_str());
                }
                IncidentEventKind::Dispatched
                | IncidentEventKind::EnRoute
                | IncidentEventKind::OnScene
                | IncidentEventKind::Transporting
                    if on.get(ev.team_id.as_str()) != Some(&ev.incident_id.as_str()) =>
                {
                    return Some(format!(
                        "sequence {} reports {} on {}, which the stream does not show it on",
                        ev.sequence, ev.team_id, ev.incident_id
                    ));
                }
                _ => {}
            }
        }
        None
    }
}
