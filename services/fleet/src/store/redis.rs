//! The Redis backend of [`TeamStore`] and [`DispatchStore`]: the keyspace of
//! [`crate::keyspace`], changed only by the Lua scripts of [`scripts`](self) (loaded once,
//! called by SHA, reloaded on `NOSCRIPT`).
//!
//! Round trips of routing's reads: `nearest_available` is two (a `GEOSEARCH ... COUNT` of the
//! region's AVAILABLE set, then the found teams' hashes in one pipeline); `nearest_unavailable`
//! is one or two (the same on the region's set of on-duty teams that are not available; no
//! pipeline when it finds none); `teams_near` and `busy_teams` page through the region's teams
//! (one `SMEMBERS`-and-hashes read per 500 teams); `claim` and `release` are one script call
//! each. Announcements of freed teams come from each region's event stream
//! ([`DispatchStore::subscribe`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script, Value, streams::StreamReadReply};
use relay_runtime::redis_link::{RedisConnection, RedisTarget};

use tokio::sync::broadcast;

use super::{
    ChangeError, Claim, ClaimError, DispatchStore, EventsError, FleetTeam, LocationOutcome,
    LocationReport, Nearest, Recorded, ReleaseError, ReleaseOutcome, RequestRecord, StoreError,
    TeamAvailable, TeamPage, TeamStore, UpsertOutcome,
    announce::{Announcer, EventSource},
    busy_of, is_unavailable, on_duty_near, rank_candidates, rank_placed, region_teams, scripts,
};
use crate::{
    keyspace::Keyspace,
    model::{
        EventId, EventKind, Position, Team, TeamDefinition, TeamEvent, TeamStatus, TeamSummary,
        allowed_from, from_micros, to_micros,
    },
};

/// Reports sent to Redis together (one location script call per region) by
/// [`TeamStore::report_locations`].
const LOCATION_BATCH: usize = 256;
/// Extra search radius for the GEO index query, covering its quantization; the exact
/// distance filter runs afterwards.
const GEO_MARGIN_METERS: f64 = 5.0;
/// The radius a nearest-teams search starts with (then four times wider each round).
const FIRST_REACH_METERS: f64 = 2_000.0;

struct Scripts {
    upsert: Script,
    seed: Script,
    move_out: Script,
    undo_create: Script,
    move_in: Script,
    set_status: Script,
    report_locations: Script,
    claim: Script,
    release: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{}{body}", scripts::PRELUDE))
}

/// Team live state in Redis.
pub struct RedisTeamStore {
    connection: RedisConnection,
    events: Events,
    keys: Keyspace,
    scripts: Scripts,
    retention: Duration,
    regions: RwLock<HashMap<String, String>>,
    announcer: Announcer,
}

impl std::fmt::Debug for RedisTeamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTeamStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn list(statuses: &[TeamStatus]) -> String {
    let mut text = String::from(",");
    for status in statuses {
        text.push_str(&(*status as i32).to_string());
        text.push(',');
    }
    text
}

fn busy_list() -> String {
    list(&[
        TeamStatus::Dispatched,
        TeamStatus::EnRoute,
        TeamStatus::OnScene,
        TeamStatus::Transporting,
    ])
}

fn optional(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn shift(value: Option<DateTime<Utc>>) -> String {
    value.map(|t| to_micros(t).to_string()).unwrap_or_default()
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn status_from(text: &str) -> Result<TeamStatus, StoreError> {
    text.parse::<i32>()
        .ok()
        .and_then(|n| TeamStatus::try_from(n).ok())
        .ok_or_else(|| corrupt(format!("status `{text}`")))
}

fn revision_from(text: &str) -> Result<i64, StoreError> {
    text.parse()
        .map_err(|_| corrupt(format!("revision `{text}`")))
}

/// Decodes a team from its hash fields.
///
/// # Errors
/// When a required field is missing or malformed.
pub fn decode_team(fields: &HashMap<String, String>) -> Result<Team, StoreError> {
    decode_fields(|name| fields.get(name).map(String::as_str))
}

/// Every field of a team hash, in the order [`TeamStore`] reads them with `HMGET`.
const TEAM_FIELDS: [&str; 17] = [
    "id",
    "name",
    "region",
    "caps",
    "status",
    "lat",
    "lon",
    "loc_at",
    "hdg",
    "spd",
    "acc",
    "incident",
    "shift_end",
    "rev",
    "fence",
    "created",
    "updated",
];

/// Decodes a team from the values of [`TEAM_FIELDS`], in order; `None` when the hash does
/// not exist (every value missing).
fn decode_values(values: &[Option<String>]) -> Result<Option<Team>, StoreError> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    decode_fields(positional(&TEAM_FIELDS, values)).map(Some)
}

/// Decodes the values of an HMGET; `None` when the hash does not exist.
type Decoder<T> = fn(&[Option<String>]) -> Result<Option<T>, StoreError>;

/// Typed reads of a team hash's fields, by name.
struct Fields<F>(F);

impl<'a, F: Fn(&str) -> Option<&'a str>> Fields<F> {
    fn get(&self, name: &str) -> Result<&'a str, StoreError> {
        (self.0)(name).ok_or_else(|| corrupt(format!("team hash without `{name}`")))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match (self.0)(name) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| corrupt(format!("`{name}` = `{text}`"))),
        }
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.parsed::<i64>(name)?.map(from_micros))
    }

    fn int(&self, name: &str) -> Result<i64, StoreError> {
        let text = self.get(name)?;
        text.parse()
            .map_err(|_| corrupt(format!("`{name}` = `{text}`")))
    }

    /// The fields of [`SUMMARY_FIELDS`].
    fn summary(&self) -> Result<TeamSummary, StoreError> {
        let caps = self.get("caps")?;
        let location = match (self.parsed("lat")?, self.parsed("lon")?) {
            (Some(latitude), Some(longitude)) => Some(Position {
                latitude,
                longitude,
            }),
            _ => None,
        };
        Ok(TeamSummary {
            team_id: self.get("id")?.to_owned(),
            display_name: self.get("name")?.to_owned(),
            capabilities: if caps.is_empty() {
                Vec::new()
            } else {
                caps.split(',').map(str::to_owned).collect()
            },
            status: status_from(self.get("status")?)?,
            location,
            location_updated_at: self.time("loc_at")?,
            shift_ends_at: self.time("shift_end")?,
        })
    }
}

fn decode_fields<'a>(field: impl Fn(&str) -> Option<&'a str>) -> Result<Team, StoreError> {
    let fields = Fields(field);
    let summary = fields.summary()?;
    Ok(Team {
        team_id: summary.team_id,
        display_name: summary.display_name,
        region: fields.get("region")?.to_owned(),
        capabilities: summary.capabilities,
        status: summary.status,
        location: summary.location,
        location_updated_at: summary.location_updated_at,
        heading_degrees: fields.parsed("hdg")?,
        speed_meters_per_second: fields.parsed("spd")?,
        accuracy_meters: fields.parsed("acc")?,
        incident_id: (fields.0)("incident").unwrap_or_default().to_owned(),
        shift_ends_at: summary.shift_ends_at,
        revision: fields.int("rev")?,
        fencing_token: fields.int("fence")?,
        create_time: from_micros(fields.int("created")?),
        update_time: from_micros(fields.int("updated")?),
    })
}

/// The fields of a team hash that [`TeamSummary`] holds, in the order
/// [`DispatchStore::nearest_available`] reads them with `HMGET` (public for benchmarks that
/// measure the same read).
pub const SUMMARY_FIELDS: [&str; 8] = [
    "id",
    "name",
    "caps",
    "status",
    "lat",
    "lon",
    "loc_at",
    "shift_end",
];

/// Decodes a team's summary from the values of [`SUMMARY_FIELDS`], in order; `None` when the
/// hash does not exist (every value missing).
fn decode_summary(values: &[Option<String>]) -> Result<Option<TeamSummary>, StoreError> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    Fields(positional(&SUMMARY_FIELDS, values))
        .summary()
        .map(Some)
}

/// The value of each named field in `values`, which are the values of `names` in order.
fn positional<'a>(
    names: &'static [&'static str],
    values: &'a [Option<String>],
) -> impl Fn(&str) -> Option<&'a str> {
    move |name| {
        names
            .iter()
            .position(|field| *field == name)
            .and_then(|index| values.get(index)?.as_deref())
    }
}

/// A flat `field, value, ...` list as a map.
fn flat_map(flat: &[String]) -> HashMap<String, String> {
    flat.chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// Decodes a team from a flat `field, value, ...` list.
fn decode_flat(flat: &[String]) -> Result<Team, StoreError> {
    decode_team(&flat_map(flat))
}

/// The upsert outcome a record's tag stands for.
fn upsert_outcome(tag: &str, team: Team) -> Result<UpsertOutcome, StoreError> {
    let (created, changed) = match tag {
        "created" => (true, true),
        "updated" => (false, true),
        "same" => (false, false),
        other => return Err(corrupt(format!("request record tagged `{other}`"))),
    };
    Ok(UpsertOutcome {
        team,
        created,
        changed,
    })
}

/// The outcome of a change made without a request id (never replayed).
fn applied<T>(recorded: Recorded<T>) -> Result<T, ChangeError> {
    match recorded {
        Recorded::Applied(outcome) => Ok(outcome),
        Recorded::Replayed(_) | Recorded::Reused => {
            Err(corrupt("a change without a request id was replayed").into())
        }
    }
}

/// The hash fields of a team (the inverse of [`decode_team`]).
fn encode_team(team: &Team) -> Vec<(&'static str, String)> {
    let (lat, lon) = team.location.map_or((String::new(), String::new()), |p| {
        (p.latitude.to_string(), p.longitude.to_string())
    });
    vec![
        ("id", team.team_id.clone()),
        ("name", team.display_name.clone()),
        ("region", team.region.clone()),
        ("caps", team.capabilities.join(",")),
        ("status", (team.status as i32).to_string()),
        ("lat", lat),
        ("lon", lon),
        ("loc_at", shift(team.location_updated_at)),
        ("hdg", optional(team.heading_degrees)),
        ("spd", optional(team.speed_meters_per_second)),
        ("acc", optional(team.accuracy_meters)),
        ("incident", team.incident_id.clone()),
        ("shift_end", shift(team.shift_ends_at)),
        ("rev", team.revision.to_string()),
        ("fence", team.fencing_token.to_string()),
        ("created", to_micros(team.create_time).to_string()),
        ("updated", to_micros(team.update_time).to_string()),
    ]
}

/// `GEOSEARCH <key> FROMLONLAT <point> BYRADIUS <radius plus the margin> m`, the start of
/// every proximity query (the caller adds ordering and a count).
fn geosearch(key: String, point: Position, radius_meters: f64) -> redis::Cmd {
    let mut cmd = redis::cmd("GEOSEARCH");
    cmd.arg(key)
        .arg("FROMLONLAT")
        .arg(point.longitude)
        .arg(point.latitude)
        .arg("BYRADIUS")
        .arg(radius_meters + GEO_MARGIN_METERS)
        .arg("m");
    cmd
}

fn first(reply: &[String]) -> &str {
    reply.first().map_or("", String::as_str)
}

fn second(reply: &[String]) -> &str {
    reply.get(1).map_or("", String::as_str)
}

/// The reads of the event streams, cloneable so that the announcer's region tasks read with
/// them (see [`DispatchStore::subscribe`]).
#[derive(Clone)]
struct Events {
    target: RedisTarget,
    connection: RedisConnection,
    blocking: Arc<Mutex<Vec<RedisConnection>>>,
    keys: Keyspace,
}

impl Events {
    fn conn(&self) -> RedisConnection {
        self.connection.clone()
    }

    async fn blocking_connection(&self) -> Result<RedisConnection, StoreError> {
        let pooled = self.blocking.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(connection) = pooled {
            return Ok(connection);
        }
        Ok(self.target.dedicated().await?)
    }

    fn return_connection(&self, connection: RedisConnection) {
        if let Ok(mut pool) = self.blocking.lock()
            && pool.len() < 16
        {
            pool.push(connection);
        }
    }

    /// Whether events after `after` were trimmed away. Trimming removes the oldest entries
    /// (`MINID`), so when anything was removed (`entries-added` > `length`), every removed id
    /// is below the first retained one: reading after an id below it may have missed some.
    /// Redis does not say which id was trimmed last, so a reader positioned exactly on it is
    /// also told the history expired (it rebuilds its view, which is safe).
    async fn history_expired(&self, region: &str, after: EventId) -> Result<bool, StoreError> {
        let info: redis::RedisResult<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(self.keys.events(region))
            .query_async(&mut self.conn())
            .await;
        let info = match info {
            Ok(info) => info,
            // No stream yet: nothing was ever trimmed.
            Err(error)
                if error.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        };
        let number = |name: &str| {
            info.get(name)
                .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
                .unwrap_or(0)
        };
        if number("entries-added") <= number("length") {
            return Ok(false);
        }
        let id_of = |value: &Value| {
            redis::from_redis_value::<String>(value.clone())
                .ok()
                .and_then(|text| EventId::parse(&text))
        };
        let first = match info.get("first-entry") {
            Some(Value::Array(entry)) => entry.first().and_then(id_of),
            _ => None,
        };
        let boundary = match first {
            Some(first) => Some(first),
            // Everything was trimmed: nothing is missing only for a reader at the newest id.
            None => info
                .get("last-generated-id")
                .and_then(id_of)
                .map(|last| EventId {
                    ms: last.ms,
                    seq: last.seq.saturating_add(1),
                }),
        };
        Ok(boundary.is_some_and(|boundary| after < boundary))
    }
}

#[tonic::async_trait]
impl EventSource for Events {
    async fn read_events(
        &self,
        region: &str,
        after: EventId,
        max: usize,
        block: Duration,
    ) -> Result<Vec<TeamEvent>, EventsError> {
        if self.history_expired(region, after).await? {
            return Err(EventsError::HistoryExpired);
        }
        let mut command = redis::cmd("XREAD");
        command.arg("COUNT").arg(max.max(1));
        let block_ms = block.as_millis();
        if block_ms > 0 {
            command
                .arg("BLOCK")
                .arg(u64::try_from(block_ms).unwrap_or(u64::MAX));
        }
        command
            .arg("STREAMS")
            .arg(self.keys.events(region))
            .arg(after.to_string());
        let mut connection = self.blocking_connection().await?;
        let reply: Option<StreamReadReply> = command
            .query_async(&mut connection)
            .await
            .map_err(StoreError::from)?;
        self.return_connection(connection);
        let mut events = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                let id = EventId::parse(&entry.id)
                    .ok_or_else(|| corrupt(format!("event id `{}`", entry.id)))?;
                let mut fields = HashMap::new();
                for (name, value) in entry.map {
                    let text: String = redis::from_redis_value(value)
                        .map_err(|_| corrupt(format!("event field `{name}`")))?;
                    fields.insert(name, text);
                }
                let kind = fields
                    .get("kind")
                    .and_then(|code| EventKind::from_code(code))
                    .ok_or_else(|| corrupt("event without a kind"))?;
                let at = fields
                    .get("at")
                    .and_then(|at| at.parse().ok())
                    .map(from_micros)
                    .ok_or_else(|| corrupt("event without a time"))?;
                events.push(TeamEvent {
                    id,
                    kind,
                    team: decode_team(&fields)?,
                    event_time: at,
                });
            }
        }
        Ok(events)
    }

    async fn last_event_id(&self, region: &str) -> Result<EventId, StoreError> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(self.keys.events(region))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        let reply: redis::streams::StreamRangeReply =
            redis::from_redis_value(reply).map_err(|e| corrupt(e.to_string()))?;
        Ok(reply
            .ids
            .first()
            .and_then(|entry| EventId::parse(&entry.id))
            .unwrap_or(EventId::ZERO))
    }
}

impl RedisTeamStore {
    /// A store on `target` (a [`redis::Client`], or a [`RedisTarget`]: one server or a Redis
    /// Cluster) under `keys`, keeping events for `retention`. Connects lazily.
    ///
    /// # Errors
    /// When the shared connection cannot be created.
    pub fn new(
        target: impl Into<RedisTarget>,
        keys: Keyspace,
        retention: Duration,
    ) -> Result<Self, StoreError> {
        let target = target.into();
        let connection = target.shared()?;
        Ok(Self {
            events: Events {
                target,
                connection: connection.clone(),
                blocking: Arc::default(),
                keys: keys.clone(),
            },
            connection,
            keys,
            scripts: Scripts {
                upsert: script(scripts::UPSERT),
                seed: script(scripts::SEED),
                move_out: script(scripts::MOVE_OUT),
                undo_create: script(scripts::UNDO_CREATE),
                move_in: script(scripts::MOVE_IN),
                set_status: script(scripts::SET_STATUS),
                report_locations: script(scripts::REPORT_LOCATIONS),
                claim: script(scripts::CLAIM),
                release: script(scripts::RELEASE),
            },
            retention,
            regions: RwLock::new(HashMap::new()),
            announcer: Announcer::default(),
        })
    }

    /// The keyspace this store uses.
    #[must_use]
    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    fn retention_ms(&self) -> String {
        self.retention.as_millis().to_string()
    }

    /// [`DispatchStore::claim`] of a team whose status is one of `allowed` (`,2,`).
    #[allow(clippy::too_many_arguments)]
    async fn claim_from(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
        allowed: &str,
    ) -> Result<Claim, ClaimError> {
        // Empty: no position check (a dispatcher's choice).

        let max_age = max_position_age
            .map(|age| {
                i64::try_from(age.as_micros())
                    .unwrap_or(i64::MAX)
                    .to_string()
            })
            .unwrap_or_default();
        let reply: Vec<String> = self
            .scripts
            .claim
            .key(self.keys.team(region, team_id))
            .key(self.keys.available(region))
            .key(self.keys.events(region))
            .key(self.keys.unavailable(region))
            .arg(incident_id)
            .arg(expected_revision.map(|r| r.to_string()).unwrap_or_default())
            .arg(to_micros(now))
            .arg(max_age)
            .arg(self.retention_ms())
            .arg(allowed)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        match first(&reply) {
            "ok" => {
                let team = decode_flat(&reply[1..])?;
                Ok(Claim {
                    fencing_token: team.fencing_token,
                    revision: team.revision,
                    team,
                })
            }
            "missing" => Err(ClaimError::NotFound),
            "status" => Err(ClaimError::NotAvailable {
                status: status_from(second(&reply))?,
            }),
            "stale" => Err(ClaimError::StalePosition),
            "rev" => Err(ClaimError::RevisionMismatch {
                current: revision_from(second(&reply))?,
            }),
            other => Err(corrupt(format!("claim answered `{other}`")).into()),
        }
    }

    fn conn(&self) -> RedisConnection {
        self.connection.clone()
    }

    fn cached_region(&self, team_id: &str) -> Option<String> {
        self.regions
            .read()
            .ok()
            .and_then(|map| map.get(team_id).cloned())
    }

    fn remember_region(&self, team_id: &str, region: &str) {
        if let Ok(mut map) = self.regions.write() {
            map.insert(team_id.to_owned(), region.to_owned());
        }
    }

    fn forget_region(&self, team_id: &str) {
        if let Ok(mut map) = self.regions.write() {
            map.remove(team_id);
        }
    }

    /// The region of a team, from the index (not the cache).
    async fn region_of(&self, team_id: &str) -> Result<Option<String>, StoreError> {
        let region: Option<String> = self.conn().hget(self.keys.team_regions(), team_id).await?;
        match &region {
            Some(region) => self.remember_region(team_id, region),
            None => self.forget_region(team_id),
        }
        Ok(region)
    }

    async fn hash(&self, region: &str, team_id: &str) -> Result<Option<Team>, StoreError> {
        let fields: HashMap<String, String> =
            self.conn().hgetall(self.keys.team(region, team_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_team(&fields).map(Some)
    }

    async fn hashes(&self, keys: &[String]) -> Result<Vec<Team>, StoreError> {
        self.read_fields(keys, &TEAM_FIELDS, decode_values).await
    }

    /// `fields` of each hash in `keys`, in one pipeline of HMGETs (the reply carries values
    /// only, decoded by position), each decoded by `decode`; missing hashes are left out.
    async fn read_fields<T>(
        &self,
        keys: &[String],
        fields: &[&str],
        decode: Decoder<T>,
    ) -> Result<Vec<T>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET").arg(key).arg(fields);
        }
        let replies: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.conn()).await?;
        let mut decoded = Vec::with_capacity(replies.len());
        for values in &replies {
            decoded.extend(decode(values)?);
        }
        Ok(decoded)
    }

    /// The key, fingerprint and time to live (ms) of a request's record, as the scripts take
    /// them: an empty fingerprint (and a key the script never touches) when there is none.
    fn record_args(
        &self,
        region: &str,
        request: Option<&RequestRecord<'_>>,
    ) -> (String, String, String) {
        match request {
            Some(request) => (
                self.keys.request(region, request.rpc, request.request_id),
                request.fingerprint.to_owned(),
                request.ttl.as_millis().max(1).to_string(),
            ),
            None => (
                self.keys.request(region, "-", "-"),
                String::new(),
                String::new(),
            ),
        }
    }

    /// The record of `request` in `region`, if any (read before a region change, which takes
    /// two scripts: the first must not run for a request that already ran).
    async fn recall(
        &self,
        region: &str,
        request: &RequestRecord<'_>,
    ) -> Result<Option<Recorded<UpsertOutcome>>, StoreError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(self.keys.request(region, request.rpc, request.request_id))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        if fields.get("~fp").map(String::as_str) != Some(request.fingerprint) {
            return Ok(Some(Recorded::Reused));
        }
        let tag = fields.get("~tag").cloned().unwrap_or_default();
        Ok(Some(Recorded::Replayed(upsert_outcome(
            &tag,
            decode_team(&fields)?,
        )?)))
    }

    async fn upsert(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: Option<&RequestRecord<'_>>,
    ) -> Result<Recorded<UpsertOutcome>, ChangeError> {
        match self.region_of(&definition.team_id).await? {
            Some(current) if current != definition.region => {
                if let Some(request) = request
                    && let Some(recorded) = self.recall(&definition.region, request).await?
                {
                    return Ok(recorded);
                }
                self.move_region(&current, definition, expected_revision, now, request)
                    .await
                    .map(Recorded::Applied)
            }
            _ => {
                self.upsert_in_place(definition, expected_revision, now, request)
                    .await
            }
        }
    }

    async fn upsert_in_place(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: Option<&RequestRecord<'_>>,
    ) -> Result<Recorded<UpsertOutcome>, ChangeError> {
        let region = &definition.region;
        let (record, fingerprint, ttl) = self.record_args(region, request);
        let reply: Vec<String> = self
            .scripts
            .upsert
            .key(self.keys.team(region, &definition.team_id))
            .key(self.keys.teams(region))
            .key(self.keys.events(region))
            .key(record)
            .arg(&definition.team_id)
            .arg(&definition.display_name)
            .arg(region)
            .arg(definition.capabilities.join(","))
            .arg(shift(definition.shift_ends_at))
            .arg(expected_revision.map(|r| r.to_string()).unwrap_or_default())
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .arg(fingerprint)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        let (created, changed) = match first(&reply) {
            "created" => (true, true),
            "updated" => (false, true),
            "same" => (false, false),
            "rev" => {
                return Err(ChangeError::RevisionMismatch {
                    current: revision_from(second(&reply))?,
                });
            }
            "replay" => {
                let fields = flat_map(&reply[1..]);
                let tag = fields.get("~tag").cloned().unwrap_or_default();
                return Ok(Recorded::Replayed(upsert_outcome(
                    &tag,
                    decode_team(&fields)?,
                )?));
            }
            "reused" => return Ok(Recorded::Reused),
            other => return Err(corrupt(format!("upsert answered `{other}`")).into()),
        };
        let team = decode_flat(&reply[1..])?;
        if created {
            let _: () = self
                .conn()
                .hset(self.keys.team_regions(), &definition.team_id, region)
                .await
                .map_err(StoreError::from)?;
            self.remember_region(&definition.team_id, region);
        }
        Ok(Recorded::Applied(UpsertOutcome {
            team,
            created,
            changed,
        }))
    }

    async fn move_region(
        &self,
        from: &str,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: Option<&RequestRecord<'_>>,
    ) -> Result<UpsertOutcome, ChangeError> {
        let allowed = list(&[TeamStatus::OffDuty, TeamStatus::OutOfService]);
        let reply: Vec<String> = self
            .scripts
            .move_out
            .key(self.keys.team(from, &definition.team_id))
            .key(self.keys.teams(from))
            .key(self.keys.events(from))
            .key(self.keys.available(from))
            .key(self.keys.unavailable(from))
            .arg(expected_revision.map(|r| r.to_string()).unwrap_or_default())
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .arg(allowed)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        match first(&reply) {
            "ok" => {}
            "missing" => return Err(ChangeError::NotFound),
            "rev" => {
                return Err(ChangeError::RevisionMismatch {
                    current: revision_from(second(&reply))?,
                });
            }
            "region" => {
                return Err(ChangeError::RegionChangeNotAllowed {
                    status: status_from(second(&reply))?,
                });
            }
            other => return Err(corrupt(format!("move answered `{other}`")).into()),
        }
        let mut team = decode_flat(&reply[1..])?;
        team.display_name.clone_from(&definition.display_name);
        team.region.clone_from(&definition.region);
        team.capabilities.clone_from(&definition.capabilities);
        team.shift_ends_at = definition.shift_ends_at;
        team.revision += 1;
        team.update_time = now;
        let (record, fingerprint, ttl) = self.record_args(&definition.region, request);
        let mut invocation = self.scripts.move_in.prepare_invoke();
        invocation
            .key(self.keys.team(&definition.region, &definition.team_id))
            .key(self.keys.teams(&definition.region))
            .key(self.keys.events(&definition.region))
            .key(self.keys.available(&definition.region))
            .key(self.keys.unavailable(&definition.region))
            .key(record)
            .arg(&definition.team_id)
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .arg(fingerprint)
            .arg(ttl);
        for (field, value) in encode_team(&team) {
            invocation.arg(field).arg(value);
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        let team = decode_flat(reply.get(1..).unwrap_or_default())?;
        let _: () = self
            .conn()
            .hset(
                self.keys.team_regions(),
                &definition.team_id,
                &definition.region,
            )
            .await
            .map_err(StoreError::from)?;
        self.remember_region(&definition.team_id, &definition.region);
        Ok(UpsertOutcome {
            team,
            created: false,
            changed: true,
        })
    }

    async fn release_team(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let reply: Vec<String> = self
            .scripts
            .release
            .key(self.keys.team(region, team_id))
            .key(self.keys.available(region))
            .key(self.keys.events(region))
            .key(self.keys.unavailable(region))
            .arg(incident_id)
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .arg(busy_list())
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        match first(&reply) {
            "ok" => Ok(ReleaseOutcome::Released(decode_flat(&reply[1..])?)),
            "already" => Ok(ReleaseOutcome::AlreadyReleased(decode_flat(&reply[1..])?)),
            "missing" => Err(ReleaseError::NotFound),
            "other" => Err(ReleaseError::NotOnIncident {
                status: status_from(second(&reply))?,
                current_incident: reply.get(2).cloned().unwrap_or_default(),
            }),
            other => Err(corrupt(format!("release answered `{other}`")).into()),
        }
    }

    async fn change_status(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: Option<&RequestRecord<'_>>,
    ) -> Result<Recorded<(Team, bool)>, ChangeError> {
        let Some(region) = self.region_of(team_id).await? else {
            return Err(ChangeError::NotFound);
        };
        let (record, fingerprint, ttl) = self.record_args(&region, request);
        let reply: Vec<String> = self
            .scripts
            .set_status
            .key(self.keys.team(&region, team_id))
            .key(self.keys.available(&region))
            .key(self.keys.events(&region))
            .key(self.keys.unavailable(&region))
            .key(record)
            .arg(status as i32)
            .arg(incident_id)
            .arg(expected_revision.map(|r| r.to_string()).unwrap_or_default())
            .arg(list(allowed_from(status)))
            .arg(busy_list())
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .arg(fingerprint)
            .arg(ttl)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        match first(&reply) {
            "ok" => Ok(Recorded::Applied((decode_flat(&reply[1..])?, true))),
            "same" => Ok(Recorded::Applied((decode_flat(&reply[1..])?, false))),
            "replay" => {
                let fields = flat_map(&reply[1..]);
                let changed = fields.get("~tag").is_some_and(|tag| tag == "ok");
                Ok(Recorded::Replayed((decode_team(&fields)?, changed)))
            }
            "reused" => Ok(Recorded::Reused),
            "missing" => Err(ChangeError::NotFound),
            "rev" => Err(ChangeError::RevisionMismatch {
                current: revision_from(second(&reply))?,
            }),
            "incident" => Err(ChangeError::IncidentMismatch {
                current_incident: second(&reply).to_owned(),
            }),
            "dispatch" => Err(ChangeError::DispatchRequiresRouting),
            "transition" => Err(ChangeError::InvalidTransition {
                from: status_from(second(&reply))?,
                to: status,
            }),
            other => Err(corrupt(format!("set_status answered `{other}`")).into()),
        }
    }

    /// Starts the announcer's task for `region` (once).
    fn watch(&self, region: &str) {
        let events = self.events.clone();
        self.announcer.watch(region, move || Arc::new(events));
    }

    /// Applies one chunk of reports, one location script call per region (pipelined when
    /// there are several); one `[code, revision]` reply per report, in order.
    async fn report_chunk(
        &self,
        reports: &[(usize, &LocationReport, String)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let now = to_micros(now);
        // The trim point of the event streams by this process's wall clock (not the
        // injectable `now`): stream ids follow the Redis server's clock, which this matches
        // closely enough for an approximate (`~`) trim.
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let min_id = wall_ms
            .saturating_sub(self.retention.as_millis())
            .to_string();
        // One script call per region, its reports in order (a team's reports stay in order:
        // a team is in one region). Calls for several regions go in one pipeline.
        let mut regions: Vec<&str> = Vec::new();
        for (_, _, region) in reports {
            if !regions.contains(&region.as_str()) {
                regions.push(region);
            }
        }
        let build = || {
            let mut pipe = redis::pipe();
            for region in &regions {
                let mut invocation = self.scripts.report_locations.prepare_invoke();
                invocation
                    .key(self.keys.available(region))
                    .key(self.keys.events(region))
                    .key(self.keys.unavailable(region))
                    .arg(now)
                    .arg(&min_id);
                for (_, report, _) in reports.iter().filter(|(_, _, r)| r == region) {
                    invocation
                        .key(self.keys.team(region, &report.team_id))
                        .arg(report.position.latitude.to_string())
                        .arg(report.position.longitude.to_string())
                        .arg(to_micros(report.recorded_at))
                        .arg(optional(report.heading_degrees))
                        .arg(optional(report.speed_meters_per_second))
                        .arg(optional(report.accuracy_meters));
                }
                pipe.invoke_script(&invocation);
            }
            pipe
        };
        let replies: Vec<Vec<String>> = match build().query_async(&mut self.conn()).await {
            Ok(replies) => replies,
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // The server lost its scripts (restart, SCRIPT FLUSH): load and resend. Reports
                // that did apply come back stale, which is harmless.
                self.scripts
                    .report_locations
                    .load_async(&mut self.conn())
                    .await?;
                build().query_async(&mut self.conn()).await?
            }
            Err(error) => return Err(error.into()),
        };
        // Back to one reply per report, in the callers' order.
        let mut per_region: Vec<std::vec::IntoIter<String>> =
            replies.into_iter().map(Vec::into_iter).collect();
        let mut out = Vec::with_capacity(reports.len());
        for (_, _, region) in reports {
            let index = regions.iter().position(|r| r == region).unwrap_or_default();
            let reply = per_region
                .get_mut(index)
                .ok_or_else(|| corrupt("location script answered fewer regions"))?;
            let code = reply
                .next()
                .ok_or_else(|| corrupt("location script answered too few"))?;
            let revision = reply.next().unwrap_or_default();
            out.push(vec![code, revision]);
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl TeamStore for RedisTeamStore {
    async fn upsert_team(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<UpsertOutcome, ChangeError> {
        applied(
            self.upsert(definition, expected_revision, now, None)
                .await?,
        )
    }

    async fn upsert_team_once(
        &self,
        definition: &TeamDefinition,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<UpsertOutcome>, ChangeError> {
        self.upsert(definition, expected_revision, now, Some(request))
            .await
    }

    async fn seed_team(
        &self,
        definition: &TeamDefinition,
        floor: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let region = &definition.region;
        let reply: Vec<String> = self
            .scripts
            .seed
            .key(self.keys.team(region, &definition.team_id))
            .key(self.keys.teams(region))
            .key(self.keys.events(region))
            .arg(&definition.team_id)
            .arg(&definition.display_name)
            .arg(region)
            .arg(definition.capabilities.join(","))
            .arg(shift(definition.shift_ends_at))
            .arg(floor.max(1))
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .invoke_async(&mut self.conn())
            .await?;
        let _: () = self
            .conn()
            .hset(self.keys.team_regions(), &definition.team_id, region)
            .await?;
        self.remember_region(&definition.team_id, region);
        Ok(first(&reply) == "created")
    }

    async fn get_team(&self, team_id: &str) -> Result<Option<Team>, StoreError> {
        let Some(region) = self.region_of(team_id).await? else {
            return Ok(None);
        };
        self.hash(&region, team_id).await
    }

    async fn list_teams(
        &self,
        region: Option<&str>,
        status: Option<TeamStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TeamPage, StoreError> {
        let mut conn = self.conn();
        let mut entries: Vec<(String, String)> = match region {
            Some(region) => {
                let ids: Vec<String> = conn.smembers(self.keys.teams(region)).await?;
                ids.into_iter().map(|id| (id, region.to_owned())).collect()
            }
            None => {
                let map: HashMap<String, String> = conn.hgetall(self.keys.team_regions()).await?;
                map.into_iter().collect()
            }
        };
        entries.retain(|(id, _)| after.is_none_or(|after| id.as_str() > after));
        entries.sort();
        let mut teams = Vec::new();
        for chunk in entries.chunks(limit.max(1) * 2) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(id, region)| self.keys.team(region, id))
                .collect();
            for team in self.hashes(&keys).await? {
                if status.is_none_or(|status| team.status == status) {
                    teams.push(team);
                }
            }
            if teams.len() > limit {
                break;
            }
        }
        let more = teams.len() > limit;
        teams.truncate(limit);
        Ok(TeamPage { teams, more })
    }

    async fn set_status(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(Team, bool), ChangeError> {
        applied(
            self.change_status(team_id, status, incident_id, expected_revision, now, None)
                .await?,
        )
    }

    async fn set_status_once(
        &self,
        team_id: &str,
        status: TeamStatus,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        request: &RequestRecord<'_>,
    ) -> Result<Recorded<(Team, bool)>, ChangeError> {
        self.change_status(
            team_id,
            status,
            incident_id,
            expected_revision,
            now,
            Some(request),
        )
        .await
    }

    async fn report_locations(
        &self,
        reports: &[LocationReport],
        now: DateTime<Utc>,
    ) -> Result<Vec<LocationOutcome>, StoreError> {
        let mut outcomes = vec![LocationOutcome::NotFound; reports.len()];
        for (chunk_index, chunk) in reports.chunks(LOCATION_BATCH).enumerate() {
            let base = chunk_index * LOCATION_BATCH;
            let mut known = Vec::with_capacity(chunk.len());
            let mut unknown = Vec::new();
            for (offset, report) in chunk.iter().enumerate() {
                match self.cached_region(&report.team_id) {
                    Some(region) => known.push((base + offset, report, region)),
                    None => unknown.push((base + offset, report)),
                }
            }
            let mut retry = Vec::new();
            let replies = self.report_chunk(&known, now).await?;
            for ((index, report, _), reply) in known.iter().zip(replies) {
                match first(&reply) {
                    "ok" => {
                        outcomes[*index] = LocationOutcome::Accepted {
                            revision: revision_from(second(&reply))?,
                        };
                    }
                    "stale" => {
                        outcomes[*index] = LocationOutcome::Stale {
                            revision: revision_from(second(&reply))?,
                        };
                    }
                    // The cached region is out of date (the team moved): look it up again.
                    _ => retry.push((*index, *report)),
                }
            }
            retry.extend(unknown);
            retry.sort_by_key(|(index, _)| *index);
            let mut second_pass = Vec::new();
            for (index, report) in retry {
                if let Some(region) = self.region_of(&report.team_id).await? {
                    second_pass.push((index, report, region));
                }
            }
            // Stream order per team is kept: a team's reports are either all known (one
            // call, in order) or all retried here, in order.
            let replies = self.report_chunk(&second_pass, now).await?;
            for ((index, _, _), reply) in second_pass.iter().zip(replies) {
                outcomes[*index] = match first(&reply) {
                    "ok" => LocationOutcome::Accepted {
                        revision: revision_from(second(&reply))?,
                    },
                    "stale" => LocationOutcome::Stale {
                        revision: revision_from(second(&reply))?,
                    },
                    _ => LocationOutcome::NotFound,
                };
            }
        }
        Ok(outcomes)
    }

    async fn available_within(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<(Team, f64)>, StoreError> {
        let ids: Vec<String> = geosearch(self.keys.available(region), point, radius_meters)
            .query_async(&mut self.conn())
            .await?;
        let keys: Vec<String> = ids.iter().map(|id| self.keys.team(region, id)).collect();
        let teams = self.hashes(&keys).await?;
        Ok(rank_candidates(teams, point, radius_meters))
    }

    async fn read_events(
        &self,
        region: &str,
        after: EventId,
        max: usize,
        block: Duration,
    ) -> Result<Vec<TeamEvent>, EventsError> {
        self.events.read_events(region, after, max, block).await
    }

    async fn last_event_id(&self, region: &str) -> Result<EventId, StoreError> {
        self.events.last_event_id(region).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn live_epoch(&self) -> Result<Option<String>, StoreError> {
        Ok(redis::cmd("GET")
            .arg(self.keys.live_epoch())
            .query_async(&mut self.conn())
            .await?)
    }

    async fn adopt_live_epoch(&self, candidate: &str) -> Result<String, StoreError> {
        // SET ... NX GET (Redis 7.0): sets only when absent and answers the previous value,
        // nil when this call set it. One atomic step, so two replicas agree on one epoch.
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.keys.live_epoch())
            .arg(candidate)
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.conn())
            .await?;
        Ok(previous.unwrap_or_else(|| candidate.to_owned()))
    }

    async fn undo_create(
        &self,
        team: &Team,
        request: &RequestRecord<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let region = &team.region;
        let reply: Vec<String> = self
            .scripts
            .undo_create
            .key(self.keys.team(region, &team.team_id))
            .key(self.keys.teams(region))
            .key(self.keys.events(region))
            .key(self.keys.available(region))
            .key(self.keys.unavailable(region))
            .key(self.keys.request(region, request.rpc, request.request_id))
            .arg(team.revision)
            .arg(to_micros(now))
            .arg(self.retention_ms())
            .invoke_async(&mut self.conn())
            .await?;
        if first(&reply) != "ok" {
            return Ok(false);
        }
        let _: () = self
            .conn()
            .hdel(self.keys.team_regions(), &team.team_id)
            .await?;
        self.forget_region(&team.team_id);
        Ok(true)
    }

    async fn region_epochs(&self, regions: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if regions.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per region, pipelined (on a cluster, one pipeline per slot).
        let mut pipeline = redis::pipe();
        for region in regions {
            pipeline.get(self.keys.region_epoch(region));
        }
        Ok(pipeline.query_async(&mut self.conn()).await?)
    }

    async fn stamp_region_epochs(&self, regions: &[String], epoch: &str) -> Result<(), StoreError> {
        if regions.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for region in regions {
            pipeline.set(self.keys.region_epoch(region), epoch).ignore();
        }
        let () = pipeline.query_async(&mut self.conn()).await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl DispatchStore for RedisTeamStore {
    async fn teams_near(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
    ) -> Result<Vec<TeamSummary>, StoreError> {
        self.watch(region);
        let teams = region_teams(self, region).await?;
        Ok(on_duty_near(&teams, point, radius_meters))
    }

    async fn nearest_available(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Nearest, StoreError> {
        self.watch(region);
        // GEOSEARCH costs as much as the members inside its radius, sorted or not: start
        // small and widen until `count` teams are found or the radius is reached. Redis orders
        // by its own distance over the geohash-rounded position (within a metre of the
        // stored one); the margin covers that, and the exact order is made below.
        let count = count.max(1);
        let mut reach = FIRST_REACH_METERS.min(radius_meters);
        let (found, frontier) = loop {
            let found: Vec<(String, f64)> = geosearch(self.keys.available(region), point, reach)
                .arg("ASC")
                .arg("COUNT")
                .arg(count)
                .arg("WITHDIST")
                .query_async(&mut self.conn())
                .await?;
            if found.len() >= count {
                let last = found.last().map_or(0.0, |(_, distance)| *distance);
                break (found, Some((last - GEO_MARGIN_METERS).max(0.0)));
            }
            if reach >= radius_meters {
                break (found, None);
            }
            reach = (reach * 4.0).min(radius_meters);
        };
        // Only the fields a ranking needs: about half of the hash, and half the reply.
        let keys: Vec<String> = found
            .iter()
            .map(|(id, _)| self.keys.team(region, id))
            .collect();
        let summaries = self
            .read_fields(&keys, &SUMMARY_FIELDS, decode_summary)
            .await?;
        let mut teams = rank_candidates(summaries, point, radius_meters);
        if let Some(frontier) = frontier {
            // Beyond the frontier the order is unknown: what was read there is left out.
            teams.retain(|(_, distance)| *distance < frontier);
        }
        Ok(Nearest { teams, frontier })
    }

    async fn nearest_unavailable(
        &self,
        region: &str,
        point: Position,
        radius_meters: f64,
        count: usize,
    ) -> Result<Vec<(TeamSummary, f64)>, StoreError> {
        // One GEOSEARCH of the region's set of on-duty teams that are not available, then
        // their fields in one pipeline (none when nothing is found): two round trips at most,
        // whatever the number of teams found.
        let found: Vec<String> = geosearch(self.keys.unavailable(region), point, radius_meters)
            .arg("ASC")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn())
            .await?;
        let keys: Vec<String> = found.iter().map(|id| self.keys.team(region, id)).collect();
        let summaries = self
            .read_fields(&keys, &SUMMARY_FIELDS, decode_summary)
            .await?;
        let mut teams = rank_placed(summaries, point, radius_meters, is_unavailable);
        teams.truncate(count);
        Ok(teams)
    }

    async fn fleet_team(&self, team_id: &str) -> Result<Option<FleetTeam>, StoreError> {
        Ok(self.get_team(team_id).await?.as_ref().map(FleetTeam::from))
    }

    async fn busy_teams(&self, region: &str) -> Result<Vec<FleetTeam>, StoreError> {
        self.watch(region);
        Ok(busy_of(&region_teams(self, region).await?))
    }

    async fn claim(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        expected_revision: Option<i64>,
        now: DateTime<Utc>,
        max_position_age: Option<Duration>,
    ) -> Result<Claim, ClaimError> {
        self.claim_from(
            region,
            team_id,
            incident_id,
            expected_revision,
            now,
            max_position_age,
            ",2,",
        )
        .await
    }

    async fn claim_to_restore(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Claim, ClaimError> {
        self.claim_from(region, team_id, incident_id, None, now, None, ",1,2,")
            .await
    }

    async fn release(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.release_team(region, team_id, incident_id, now).await
    }

    async fn release_quietly(
        &self,
        region: &str,
        team_id: &str,
        incident_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        self.announcer.begin_quiet(team_id);
        let outcome = self.release_team(region, team_id, incident_id, now).await;
        let released = match &outcome {
            Ok(ReleaseOutcome::Released(team)) => Some(team.revision),
            _ => None,
        };
        self.announcer.end_quiet(region, team_id, released);
        outcome
    }

    async fn remember_recommendation(
        &self,
        incident_id: &str,
        request: &[u8],
        ttl: Duration,
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .set_ex(
                self.keys.recommendation(incident_id),
                request,
                ttl.as_secs().max(1),
            )
            .await?;
        Ok(())
    }

    async fn recommendation(
        &self,
        incident_id: &str,
        _now: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .get(self.keys.recommendation(incident_id))
            .await?)
    }

    fn subscribe(&self) -> broadcast::Receiver<TeamAvailable> {
        self.announcer.subscribe()
    }
}

#[cfg(test)]
mod tests {
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
        let store = RedisTeamStore::new(client, Keyspace::new(prefix), Duration::from_secs(60))
            .expect("store");
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

    async fn claim_and_release(
        store: &RedisTeamStore,
        region: &str,
        team_id: &str,
        announce: bool,
    ) {
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
}
