//! The operations of [`RedisTeamStore`] that both traits build on: construction, region
//! lookup, the team hash reads and the scripts' calls.

use super::*;

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

    pub(super) fn retention_ms(&self) -> String {
        self.retention.as_millis().to_string()
    }

    /// [`DispatchStore::claim`] of a team whose status is one of `allowed` (`,2,`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn claim_from(
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

    pub(super) fn conn(&self) -> RedisConnection {
        self.connection.clone()
    }

    pub(super) fn cached_region(&self, team_id: &str) -> Option<String> {
        self.regions
            .read()
            .ok()
            .and_then(|map| map.get(team_id).cloned())
    }

    pub(super) fn remember_region(&self, team_id: &str, region: &str) {
        if let Ok(mut map) = self.regions.write() {
            map.insert(team_id.to_owned(), region.to_owned());
        }
    }

    pub(super) fn forget_region(&self, team_id: &str) {
        if let Ok(mut map) = self.regions.write() {
            map.remove(team_id);
        }
    }

    /// The region of a team, from the index (not the cache).
    pub(super) async fn region_of(&self, team_id: &str) -> Result<Option<String>, StoreError> {
        let region: Option<String> = self.conn().hget(self.keys.team_regions(), team_id).await?;
        match &region {
            Some(region) => self.remember_region(team_id, region),
            None => self.forget_region(team_id),
        }
        Ok(region)
    }

    pub(super) async fn hash(
        &self,
        region: &str,
        team_id: &str,
    ) -> Result<Option<Team>, StoreError> {
        let fields: HashMap<String, String> =
            self.conn().hgetall(self.keys.team(region, team_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_team(&fields).map(Some)
    }

    pub(super) async fn hashes(&self, keys: &[String]) -> Result<Vec<Team>, StoreError> {
        self.read_fields(keys, &TEAM_FIELDS, decode_values).await
    }

    /// `fields` of each hash in `keys`, in one pipeline of HMGETs (the reply carries values
    /// only, decoded by position), each decoded by `decode`; missing hashes are left out.
    pub(super) async fn read_fields<T>(
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
    pub(super) fn record_args(
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
    pub(super) async fn recall(
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

    pub(super) async fn upsert(
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

    pub(super) async fn upsert_in_place(
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

    pub(super) async fn move_region(
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

    pub(super) async fn release_team(
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

    pub(super) async fn change_status(
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
    pub(super) fn watch(&self, region: &str) {
        let events = self.events.clone();
        self.announcer.watch(region, move || Arc::new(events));
    }

    /// Applies one chunk of reports, one location script call per region (pipelined when
    /// there are several); one `[code, revision]` reply per report, in order.
    pub(super) async fn report_chunk(
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
