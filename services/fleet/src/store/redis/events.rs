//! The reads of the regions' event streams ([`EventSource`]), shared with the announcer.

use super::*;

/// The reads of the event streams, cloneable so that the announcer's region tasks read with
/// them (see [`DispatchStore::subscribe`]).
#[derive(Clone)]
pub(super) struct Events {
    pub(super) target: RedisTarget,
    pub(super) connection: RedisConnection,
    pub(super) blocking: Arc<Mutex<Vec<RedisConnection>>>,
    pub(super) keys: Keyspace,
}

impl Events {
    pub(super) fn conn(&self) -> RedisConnection {
        self.connection.clone()
    }

    pub(super) async fn blocking_connection(&self) -> Result<RedisConnection, StoreError> {
        let pooled = self.blocking.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(connection) = pooled {
            return Ok(connection);
        }
        Ok(self.target.dedicated().await?)
    }

    pub(super) fn return_connection(&self, connection: RedisConnection) {
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
    pub(super) async fn history_expired(
        &self,
        region: &str,
        after: EventId,
    ) -> Result<bool, StoreError> {
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
