//! The team hash's fields and the scripts' replies: encoding and decoding, moved out of
//! `redis.rs` so that the store's operations read apart from the wire format.

use super::*;

pub(super) fn list(statuses: &[TeamStatus]) -> String {
    let mut text = String::from(",");
    for status in statuses {
        text.push_str(&(*status as i32).to_string());
        text.push(',');
    }
    text
}

pub(super) fn busy_list() -> String {
    list(&[
        TeamStatus::Dispatched,
        TeamStatus::EnRoute,
        TeamStatus::OnScene,
        TeamStatus::Transporting,
    ])
}

pub(super) fn optional(value: Option<f64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

pub(super) fn shift(value: Option<DateTime<Utc>>) -> String {
    value.map(|t| to_micros(t).to_string()).unwrap_or_default()
}

pub(super) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

pub(super) fn status_from(text: &str) -> Result<TeamStatus, StoreError> {
    text.parse::<i32>()
        .ok()
        .and_then(|n| TeamStatus::try_from(n).ok())
        .ok_or_else(|| corrupt(format!("status `{text}`")))
}

pub(super) fn revision_from(text: &str) -> Result<i64, StoreError> {
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
pub(super) const TEAM_FIELDS: [&str; 17] = [
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
pub(super) fn decode_values(values: &[Option<String>]) -> Result<Option<Team>, StoreError> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    decode_fields(positional(&TEAM_FIELDS, values)).map(Some)
}

/// Decodes the values of an HMGET; `None` when the hash does not exist.
pub(super) type Decoder<T> = fn(&[Option<String>]) -> Result<Option<T>, StoreError>;

/// Typed reads of a team hash's fields, by name.
pub(super) struct Fields<F>(F);

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

pub(super) fn decode_fields<'a>(
    field: impl Fn(&str) -> Option<&'a str>,
) -> Result<Team, StoreError> {
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
pub(super) fn decode_summary(values: &[Option<String>]) -> Result<Option<TeamSummary>, StoreError> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    Fields(positional(&SUMMARY_FIELDS, values))
        .summary()
        .map(Some)
}

/// The value of each named field in `values`, which are the values of `names` in order.
pub(super) fn positional<'a>(
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
pub(super) fn flat_map(flat: &[String]) -> HashMap<String, String> {
    flat.chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// Decodes a team from a flat `field, value, ...` list.
pub(super) fn decode_flat(flat: &[String]) -> Result<Team, StoreError> {
    decode_team(&flat_map(flat))
}

/// The upsert outcome a record's tag stands for.
pub(super) fn upsert_outcome(tag: &str, team: Team) -> Result<UpsertOutcome, StoreError> {
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
pub(super) fn applied<T>(recorded: Recorded<T>) -> Result<T, ChangeError> {
    match recorded {
        Recorded::Applied(outcome) => Ok(outcome),
        Recorded::Replayed(_) | Recorded::Reused => {
            Err(corrupt("a change without a request id was replayed").into())
        }
    }
}

/// The hash fields of a team (the inverse of [`decode_team`]).
pub(super) fn encode_team(team: &Team) -> Vec<(&'static str, String)> {
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
pub(super) fn geosearch(key: String, point: Position, radius_meters: f64) -> redis::Cmd {
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

pub(super) fn first(reply: &[String]) -> &str {
    reply.first().map_or("", String::as_str)
}

pub(super) fn second(reply: &[String]) -> &str {
    reply.get(1).map_or("", String::as_str)
}
