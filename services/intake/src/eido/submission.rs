//! EIDO in: a document mapped onto a [`SubmitIncidentRequest`].

use super::*;

/// What Relay needs from the deployment to accept an EIDO.
#[derive(Debug, Clone)]
pub struct EidoDefaults {
    /// The region EIDO incidents belong to (an EIDO names none).
    pub region: String,
    /// The server's clock, micros since the epoch.
    pub now_micros: i64,
}

/// Maps an EIDO document onto a SubmitIncident request.
///
/// # Errors
/// INVALID_ARGUMENT naming the JSON path of every problem found.
pub fn submission(
    text: &str,
    defaults: &EidoDefaults,
) -> Result<(SubmitIncidentRequest, Origins), ApiError> {
    if text.len() > MAX_EIDO_BYTES {
        return Err(ApiError::invalid(
            "$",
            format!("the EIDO must be at most {MAX_EIDO_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|error| {
        ApiError::invalid(
            "$",
            format!(
                "is not valid JSON: {} at line {} column {}",
                describe_json_error(&error),
                error.line(),
                error.column()
            ),
        )
    })?;
    let mut r = Reader {
        violations: Vec::new(),
    };
    let Some(root) = r.object(&value, "$") else {
        return Err(ApiError::invalid_fields(r.violations));
    };
    let mut m = Mapping {
        r,
        request: SubmitIncidentRequest {
            region: defaults.region.clone(),
            ..SubmitIncidentRequest::default()
        },
        origins: Origins::default(),
        narrative: Vec::new(),
    };
    let eido_id = m.root(root);
    let incident_location_refs = m.incident(root, eido_id);
    let (received, call_callback) = m.calls(root);
    m.received_at(root, received, defaults);
    m.locations(root, &incident_location_refs);
    m.narrative(root);
    m.cautions(root);
    m.caller(root, call_callback);
    let Mapping {
        mut r,
        request,
        origins,
        ..
    } = m;
    if request.cad_incident_id.is_empty() && !r.violations.iter().any(|v| v.field == "$id") {
        r.add("$id", "is required (the incident URN)");
    }
    if r.violations.is_empty() {
        Ok((request, origins))
    } else {
        Err(ApiError::invalid_fields(r.violations))
    }
}

/// A document being mapped: the reader's findings, the request and where each field came
/// from, and the narrative's parts.
struct Mapping {
    r: Reader,
    request: SubmitIncidentRequest,
    origins: Origins,
    narrative: Vec<String>,
}

impl Mapping {
    /// The document's prologue, version and agencies; the issuer is the CAD system.
    /// Returns the document's `$id`.
    fn root(&mut self, root: &Map<String, Value>) -> Option<String> {
        let eido_id = self.r.prologue(root, "");
        match root.get("eidoVersion") {
            Some(Value::String(v)) if v == "1.0" => {}
            None => self.r.add("eidoVersion", "is required"),
            Some(_) => self.r.add("eidoVersion", "must be \"1.0\""),
        }
        let issuer = self
            .r
            .string(root, "", "issuingElementIdentification", true);
        if root.get("agencyComponent").is_none() {
            self.r.add("agencyComponent", "is required");
        }
        for (path, _, map) in self.r.components(root, "agencyComponent") {
            self.r
                .strings(map, &path, "agencyRoleDescriptionRegistryText");
            self.r.strings(map, &path, "agencyType");
            for key in ["agencyRoleDescriptionRegistryText", "agencyType"] {
                if !map.contains_key(key) {
                    self.r.add(at(&path, key), "is required");
                }
            }
        }
        if let Some(issuer) = issuer {
            self.request.cad_system = issuer.to_owned();
            self.origins
                .set("cad_system", "issuingElementIdentification");
        }
        eido_id
    }

    /// The incident component: its URN, type and priority. Returns the ids of its
    /// locations.
    fn incident(&mut self, root: &Map<String, Value>, eido_id: Option<String>) -> Vec<String> {
        // The incident component: one object in NENA's schema; an array of one is read too.
        let (incident_path, incident) = match root.get("incidentComponent") {
            None | Some(Value::Null) => (String::new(), None),
            Some(Value::Array(items)) => match items.first() {
                Some(first) => ("incidentComponent[0]".to_owned(), Some(first)),
                None => (String::new(), None),
            },
            Some(other) => ("incidentComponent".to_owned(), Some(other)),
        };
        let incident = incident.and_then(|v| self.r.object(v, &incident_path));
        let mut incident_location_refs = Vec::new();
        self.request.incident_type = NO_INCIDENT_TYPE.to_owned();
        self.request.priority = DEFAULT_PRIORITY;
        let mut urn = eido_id.clone();
        let mut urn_path = "$id".to_owned();
        if let Some(incident) = incident {
            if let Some(id) = self.r.prologue(incident, &incident_path) {
                urn = Some(id);
                urn_path = at(&incident_path, "$id");
            }
            let type_path = at(&incident_path, "incidentTypeCommonRegistryText");
            if let Some(code) = self.r.string(
                incident,
                &incident_path,
                "incidentTypeCommonRegistryText",
                true,
            ) {
                if apco::is_code(code) {
                    self.request.incident_type = code.to_owned();
                    self.origins.set("incident_type", type_path);
                } else {
                    self.r.add(
                        type_path,
                        "is not an APCO ANS 2.103 common incident type code (see apco.yaml of NENA's EIDO)",
                    );
                }
            }
            match incident.get("incidentCommonPriorityNumber") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(p) if (1..=5).contains(&p) => {
                        self.request.priority = i32::try_from(p).unwrap_or(DEFAULT_PRIORITY);
                        self.origins.set(
                            "priority",
                            at(&incident_path, "incidentCommonPriorityNumber"),
                        );
                    }
                    _ => self.r.add(
                        at(&incident_path, "incidentCommonPriorityNumber"),
                        "must be an integer from 1 (highest) to 5 for Relay",
                    ),
                },
                Some(_) => self.r.add(
                    at(&incident_path, "incidentCommonPriorityNumber"),
                    "must be an integer",
                ),
            }
            incident_location_refs =
                self.r
                    .references(incident, &incident_path, "locationReference");
            self.r
                .references(incident, &incident_path, "personReference");
            self.r
                .references(incident, &incident_path, "notesReference");
        }
        match urn {
            Some(urn) if !urn.is_empty() => {
                self.request.cad_incident_id = urn;
                self.origins.set("cad_incident_id", urn_path);
            }
            _ => {}
        }
        incident_location_refs
    }

    /// Calls: the earliest start is when the PSAP received the call. Returns that start
    /// (with its path) and the first call's callback reference.
    fn calls(
        &mut self,
        root: &Map<String, Value>,
    ) -> (Option<(DateTime<Utc>, String)>, Option<String>) {
        // Calls: the earliest start is when the PSAP received the call.
        let mut received: Option<(DateTime<Utc>, String)> = None;
        let mut call_callback = None;
        let mut call_priority = None;
        for (path, _, call) in self.r.components(root, "callComponent") {
            for key in ["callStateRegistryText", "standardPrimaryCallType"] {
                self.r.string(call, &path, key, true);
            }
            match self.r.string(call, &path, "direction", true) {
                Some("incoming" | "outgoing" | "internal") | None => {}
                Some(_) => self.r.add(
                    at(&path, "direction"),
                    "must be one of incoming, outgoing, internal",
                ),
            }
            if let Some(start) = self.r.time(call, &path, "callStartTimestamp", true)
                && received.as_ref().is_none_or(|(t, _)| start < *t)
            {
                received = Some((start, at(&path, "callStartTimestamp")));
            }
            self.r.time(call, &path, "answerDate", false);
            let priority = match self.r.string(call, &path, "priorityIdentifier", false) {
                None => None,
                Some("highest") => Some(1),
                Some("high") => Some(2),
                Some("normal") => Some(3),
                Some("low") => Some(4),
                Some("lowest") => Some(5),
                Some(_) => {
                    self.r.add(
                        at(&path, "priorityIdentifier"),
                        "must be one of highest, high, normal, low, lowest",
                    );
                    None
                }
            };
            if call_priority.is_none()
                && let Some(p) = priority
            {
                call_priority = Some((p, at(&path, "priorityIdentifier")));
            }
            let callback = self.r.reference(call, &path, "callBackReference", false);
            if call_callback.is_none() {
                call_callback = callback;
            }
            self.r.references(call, &path, "locationReference");
            self.r.references(call, &path, "personReference");
            self.r.references(call, &path, "additionalDataReference");
        }
        if !self.origins.fields.iter().any(|(f, _)| *f == "priority")
            && let Some((p, path)) = call_priority
        {
            self.request.priority = p;
            self.origins.set("priority", path);
        }
        (received, call_callback)
    }

    /// When the call was received, kept within Relay's window.
    fn received_at(
        &mut self,
        root: &Map<String, Value>,
        received: Option<(DateTime<Utc>, String)>,
        defaults: &EidoDefaults,
    ) {
        let last_update = self.r.time(root, "", "lastUpdateTimeStamp", false);
        let (received_time, received_path) = match (received, last_update) {
            (Some((t, path)), _) => (Some(t), path),
            (None, Some(t)) => (Some(t), "lastUpdateTimeStamp".to_owned()),
            (None, None) => (None, "lastUpdateTimeStamp".to_owned()),
        };
        if let Some(time) = received_time {
            let micros = time.timestamp_micros();
            let window = (defaults.now_micros - crate::validate::MAX_PAST_MICROS)
                ..=(defaults.now_micros + crate::validate::MAX_FUTURE_MICROS);
            if window.contains(&micros) {
                self.request.received_at = Some(timestamp_of(micros));
            } else {
                // Relay dispatches live calls; an EIDO of a call outside that window (a
                // transfer of an old incident, a sample) is taken as received now, and the
                // narrative says when the EIDO says the call started.
                self.request.received_at = Some(timestamp_of(defaults.now_micros));
                self.narrative.push(format!(
                    "[relay] the EIDO's {received_path} {} is outside Relay's window (7 days behind to 60 seconds ahead); received_at is when Relay received the EIDO.",
                    time.to_rfc3339_opts(SecondsFormat::Millis, true)
                ));
            }
            self.origins.set("received_at", received_path);
        }
    }

    /// Locations: a geodetic point (gml:pos) and a civic address from PIDF-LO by value,
    /// the incident's own locations first.
    fn locations(&mut self, root: &Map<String, Value>, incident_location_refs: &[String]) {
        // Locations: a geodetic point (gml:pos) and a civic address from PIDF-LO by value.
        let mut point: Option<(GeoPoint, String)> = None;
        let mut address: Option<String> = None;
        let mut locations = self.r.components(root, "locationComponent");
        // The incident's own locations first.
        locations.sort_by_key(|(_, id, _)| !incident_location_refs.contains(id));
        for (path, _, location) in &locations {
            self.r
                .string(location, path, "locationTypeDescriptionRegistryText", true);
            let by_value_path = at(path, "locationByValue");
            if let Some(xml) = self.r.string(location, path, "locationByValue", false) {
                match pidf_point(xml) {
                    Ok(Some(p)) => {
                        if point.is_none() {
                            point = Some((p, by_value_path.clone()));
                        }
                    }
                    Ok(None) => {}
                    Err(why) => self.r.add(by_value_path.clone(), why),
                }
                if address.is_none() {
                    address = pidf_civic_address(xml);
                }
            }
            self.r
                .string(location, path, "locationByReferenceUrl", false);
            if address.is_none()
                && let Some(text) = self
                    .r
                    .string(location, path, "locationDescriptionText", false)
                && !text.trim().is_empty()
            {
                address = Some(text.trim().to_owned());
            }
        }
        match point {
            Some((p, path)) => {
                self.request.location = Some(p);
                self.origins.set("location", path);
            }
            None if self.request.incident_type != NO_INCIDENT_TYPE => self.r.add(
                "locationComponent",
                "no location component holds a geodetic point (a PIDF-LO gml:pos by value); \
                 Relay does not geocode or dereference locations",
            ),
            None => {
                // Nothing to route without a type: the call is triaged NEEDS_REVIEW and the
                // dispatcher must give its location with UpdateIncident before overriding.
                self.request.location = Some(GeoPoint {
                    latitude: 0.0,
                    longitude: 0.0,
                });
                self.narrative.push(
                    "[relay] the EIDO gives no geodetic point: the location is unknown (0, 0 is a placeholder); set it with UpdateIncident before dispatching.".to_owned(),
                );
            }
        }
        if let Some(address) = address {
            self.request.address = truncate_chars(&address, MAX_ADDRESS);
            self.origins.set("address", "locationComponent");
        }
    }

    /// Notes and the comment additional data make the narrative.
    fn narrative(&mut self, root: &Map<String, Value>) {
        // Notes and the comment additional data make the self.narrative.
        for (path, _, note) in self.r.components(root, "notesComponent") {
            if let Some(text) = self.r.string(note, &path, "notesActionComments", true)
                && !text.trim().is_empty()
            {
                self.narrative.push(text.trim().to_owned());
            }
        }
        for (path, _, data) in self.r.components(root, "additionalDataComponent") {
            self.r
                .string(data, &path, "additionalDataByReferenceUrl", false);
            if let Some(xml) = self.r.string(data, &path, "additionalDataByValue", false)
                && xml.contains("EmergencyCallData.Comment")
            {
                for comment in elements(xml, "Comment") {
                    let text = unescape(comment.trim());
                    if !text.is_empty() {
                        self.narrative.push(text);
                    }
                }
            }
        }
        if !self.narrative.is_empty() {
            self.request.narrative =
                truncate_bytes(&self.narrative.join("\n"), MAX_NARRATIVE_BYTES);
            self.origins.set("narrative", "notesComponent");
        }
    }

    /// Cautions become risk flags where their words are unmistakable.
    fn cautions(&mut self, root: &Map<String, Value>) {
        // Cautions become risk flags where their words are unmistakable.
        for (path, _, caution) in self.r.components(root, "cautionComponent") {
            let common = self
                .r
                .string(caution, &path, "cautionTypeCommonRegistryText", true);
            let internal = self
                .r
                .string(caution, &path, "cautionTypeInternalText", true);
            self.r.string(caution, &path, "cautionSeverity", true);
            let words =
                format!("{} {}", common.unwrap_or(""), internal.unwrap_or("")).to_lowercase();
            for flag in caution_flags(&words) {
                if !self.request.risk_flags.contains(&(flag as i32)) {
                    self.request.risk_flags.push(flag as i32);
                }
            }
        }
    }

    /// The caller: a person whose role is Caller, and how to call them back.
    fn caller(&mut self, root: &Map<String, Value>, call_callback: Option<String>) {
        // The caller: a person whose role is Caller, and how to call them back.
        let callbacks = self.r.components(root, "callbackComponent");
        let mut caller = CallerContact::default();
        let mut caller_callback = None;
        for (path, _, person) in self.r.components(root, "personComponent") {
            if !person.contains_key("personIncidentRoleRegistryText") {
                self.r
                    .add(at(&path, "personIncidentRoleRegistryText"), "is required");
            }
            let roles = self
                .r
                .strings(person, &path, "personIncidentRoleRegistryText");
            let callback = self.r.reference(person, &path, "callBackReference", false);
            if !roles.iter().any(|role| role.eq_ignore_ascii_case("caller"))
                || caller_callback.is_some()
            {
                continue;
            }
            if let Some(name) = person.get("ncPersonComponent").and_then(person_name) {
                caller.name = truncate_chars(&name, 200);
                self.origins
                    .set("caller.name", at(&path, "ncPersonComponent"));
            }
            caller_callback = Some(callback.or_else(|| call_callback.clone()));
        }
        let callback_id = caller_callback.flatten().or(call_callback);
        if let Some(id) = callback_id
            && let Some((path, _, callback)) = callbacks.iter().find(|(_, cid, _)| *cid == id)
        {
            let uris = self.r.strings(callback, path, "callBackInformationUri");
            if let Some(phone) = uris
                .iter()
                .find_map(|u| u.strip_prefix("tel:"))
                .or_else(|| uris.iter().find_map(|u| sip_user(u)))
            {
                caller.phone = truncate_chars(phone, 32);
                self.origins
                    .set("caller", at(path, "callBackInformationUri"));
            }
            if let Some(Value::Object(updated)) = callback.get("updatedCbn")
                && let Some(Value::String(uri)) = updated.get("updatedCbnIdentifierUri")
            {
                let number = uri.strip_prefix("tel:").unwrap_or(uri);
                caller.callback_number = Some(truncate_chars(number, 32));
            }
        }
        if !caller.name.is_empty() || !caller.phone.is_empty() || caller.callback_number.is_some() {
            self.request.caller = Some(caller);
        }
    }
}

pub(super) fn describe_json_error(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

pub(super) fn caution_flags(words: &str) -> Vec<RiskFlag> {
    let mut flags = Vec::new();
    let rules: [(&[&str], RiskFlag); 5] = [
        (
            &["weapon", "firearm", "gun", "knife", "armed"],
            RiskFlag::Weapons,
        ),
        (&["violen", "assault"], RiskFlag::Violence),
        (
            &["hazmat", "fire", "gas", "chemical"],
            RiskFlag::FireOrHazmat,
        ),
        (&["animal", "dog"], RiskFlag::AnimalHazard),
        (
            &["officer safety", "responder", "hostile"],
            RiskFlag::HistoryOfViolenceToResponders,
        ),
    ];
    for (needles, flag) in rules {
        if needles.iter().any(|n| words.contains(n)) {
            flags.push(flag);
        }
    }
    flags
}

pub(super) fn person_name(value: &Value) -> Option<String> {
    let name = value.get("PersonName")?;
    if let Some(full) = name.get("PersonFullName").and_then(Value::as_str) {
        return Some(full.trim().to_owned()).filter(|s| !s.is_empty());
    }
    let parts: Vec<&str> = ["PersonGivenName", "PersonMiddleName", "PersonSurName"]
        .iter()
        .filter_map(|k| name.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

pub(super) fn sip_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let user = rest.split('@').next()?;
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit() || b == b'+')).then_some(user)
}

pub(super) fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

pub(super) fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
