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
    let mut origins = Origins::default();
    let mut request = SubmitIncidentRequest {
        region: defaults.region.clone(),
        ..SubmitIncidentRequest::default()
    };

    let eido_id = r.prologue(root, "");
    match root.get("eidoVersion") {
        Some(Value::String(v)) if v == "1.0" => {}
        None => r.add("eidoVersion", "is required"),
        Some(_) => r.add("eidoVersion", "must be \"1.0\""),
    }
    let issuer = r.string(root, "", "issuingElementIdentification", true);
    if root.get("agencyComponent").is_none() {
        r.add("agencyComponent", "is required");
    }
    for (path, _, map) in r.components(root, "agencyComponent") {
        r.strings(map, &path, "agencyRoleDescriptionRegistryText");
        r.strings(map, &path, "agencyType");
        for key in ["agencyRoleDescriptionRegistryText", "agencyType"] {
            if !map.contains_key(key) {
                r.add(at(&path, key), "is required");
            }
        }
    }
    if let Some(issuer) = issuer {
        request.cad_system = issuer.to_owned();
        origins.set("cad_system", "issuingElementIdentification");
    }

    // The incident component: one object in NENA's schema; an array of one is read too.
    let (incident_path, incident) = match root.get("incidentComponent") {
        None | Some(Value::Null) => (String::new(), None),
        Some(Value::Array(items)) => match items.first() {
            Some(first) => ("incidentComponent[0]".to_owned(), Some(first)),
            None => (String::new(), None),
        },
        Some(other) => ("incidentComponent".to_owned(), Some(other)),
    };
    let incident = incident.and_then(|v| r.object(v, &incident_path));
    let mut incident_location_refs = Vec::new();
    request.incident_type = NO_INCIDENT_TYPE.to_owned();
    request.priority = DEFAULT_PRIORITY;
    let mut urn = eido_id.clone();
    let mut urn_path = "$id".to_owned();
    if let Some(incident) = incident {
        if let Some(id) = r.prologue(incident, &incident_path) {
            urn = Some(id);
            urn_path = at(&incident_path, "$id");
        }
        let type_path = at(&incident_path, "incidentTypeCommonRegistryText");
        if let Some(code) = r.string(
            incident,
            &incident_path,
            "incidentTypeCommonRegistryText",
            true,
        ) {
            if apco::is_code(code) {
                request.incident_type = code.to_owned();
                origins.set("incident_type", type_path);
            } else {
                r.add(
                    type_path,
                    "is not an APCO ANS 2.103 common incident type code (see apco.yaml of NENA's EIDO)",
                );
            }
        }
        match incident.get("incidentCommonPriorityNumber") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_i64() {
                Some(p) if (1..=5).contains(&p) => {
                    request.priority = i32::try_from(p).unwrap_or(DEFAULT_PRIORITY);
                    origins.set(
                        "priority",
                        at(&incident_path, "incidentCommonPriorityNumber"),
                    );
                }
                _ => r.add(
                    at(&incident_path, "incidentCommonPriorityNumber"),
                    "must be an integer from 1 (highest) to 5 for Relay",
                ),
            },
            Some(_) => r.add(
                at(&incident_path, "incidentCommonPriorityNumber"),
                "must be an integer",
            ),
        }
        incident_location_refs = r.references(incident, &incident_path, "locationReference");
        r.references(incident, &incident_path, "personReference");
        r.references(incident, &incident_path, "notesReference");
    }
    match urn {
        Some(urn) if !urn.is_empty() => {
            request.cad_incident_id = urn;
            origins.set("cad_incident_id", urn_path);
        }
        _ => {}
    }

    // Calls: the earliest start is when the PSAP received the call.
    let mut received: Option<(DateTime<Utc>, String)> = None;
    let mut call_callback = None;
    let mut call_priority = None;
    for (path, _, call) in r.components(root, "callComponent") {
        for key in ["callStateRegistryText", "standardPrimaryCallType"] {
            r.string(call, &path, key, true);
        }
        match r.string(call, &path, "direction", true) {
            Some("incoming" | "outgoing" | "internal") | None => {}
            Some(_) => r.add(
                at(&path, "direction"),
                "must be one of incoming, outgoing, internal",
            ),
        }
        if let Some(start) = r.time(call, &path, "callStartTimestamp", true)
            && received.as_ref().is_none_or(|(t, _)| start < *t)
        {
            received = Some((start, at(&path, "callStartTimestamp")));
        }
        r.time(call, &path, "answerDate", false);
        let priority = match r.string(call, &path, "priorityIdentifier", false) {
            None => None,
            Some("highest") => Some(1),
            Some("high") => Some(2),
            Some("normal") => Some(3),
            Some("low") => Some(4),
            Some("lowest") => Some(5),
            Some(_) => {
                r.add(
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
        let callback = r.reference(call, &path, "callBackReference", false);
        if call_callback.is_none() {
            call_callback = callback;
        }
        r.references(call, &path, "locationReference");
        r.references(call, &path, "personReference");
        r.references(call, &path, "additionalDataReference");
    }
    if !origins.fields.iter().any(|(f, _)| *f == "priority")
        && let Some((p, path)) = call_priority
    {
        request.priority = p;
        origins.set("priority", path);
    }
    let last_update = r.time(root, "", "lastUpdateTimeStamp", false);
    let (received_time, received_path) = match (received, last_update) {
        (Some((t, path)), _) => (Some(t), path),
        (None, Some(t)) => (Some(t), "lastUpdateTimeStamp".to_owned()),
        (None, None) => (None, "lastUpdateTimeStamp".to_owned()),
    };
    let mut narrative = Vec::new();
    if let Some(time) = received_time {
        let micros = time.timestamp_micros();
        let window = (defaults.now_micros - crate::validate::MAX_PAST_MICROS)
            ..=(defaults.now_micros + crate::validate::MAX_FUTURE_MICROS);
        if window.contains(&micros) {
            request.received_at = Some(timestamp_of(micros));
        } else {
            // Relay dispatches live calls; an EIDO of a call outside that window (a
            // transfer of an old incident, a sample) is taken as received now, and the
            // narrative says when the EIDO says the call started.
            request.received_at = Some(timestamp_of(defaults.now_micros));
            narrative.push(format!(
                "[relay] the EIDO's {received_path} {} is outside Relay's window (7 days behind to 60 seconds ahead); received_at is when Relay received the EIDO.",
                time.to_rfc3339_opts(SecondsFormat::Millis, true)
            ));
        }
        origins.set("received_at", received_path);
    }

    // Locations: a geodetic point (gml:pos) and a civic address from PIDF-LO by value.
    let mut point: Option<(GeoPoint, String)> = None;
    let mut address: Option<String> = None;
    let mut locations = r.components(root, "locationComponent");
    // The incident's own locations first.
    locations.sort_by_key(|(_, id, _)| !incident_location_refs.contains(id));
    for (path, _, location) in &locations {
        r.string(location, path, "locationTypeDescriptionRegistryText", true);
        let by_value_path = at(path, "locationByValue");
        if let Some(xml) = r.string(location, path, "locationByValue", false) {
            match pidf_point(xml) {
                Ok(Some(p)) => {
                    if point.is_none() {
                        point = Some((p, by_value_path.clone()));
                    }
                }
                Ok(None) => {}
                Err(why) => r.add(by_value_path.clone(), why),
            }
            if address.is_none() {
                address = pidf_civic_address(xml);
            }
        }
        r.string(location, path, "locationByReferenceUrl", false);
        if address.is_none()
            && let Some(text) = r.string(location, path, "locationDescriptionText", false)
            && !text.trim().is_empty()
        {
            address = Some(text.trim().to_owned());
        }
    }
    match point {
        Some((p, path)) => {
            request.location = Some(p);
            origins.set("location", path);
        }
        None if request.incident_type != NO_INCIDENT_TYPE => r.add(
            "locationComponent",
            "no location component holds a geodetic point (a PIDF-LO gml:pos by value); \
             Relay does not geocode or dereference locations",
        ),
        None => {
            // Nothing to route without a type: the call is triaged NEEDS_REVIEW and the
            // dispatcher must give its location with UpdateIncident before overriding.
            request.location = Some(GeoPoint {
                latitude: 0.0,
                longitude: 0.0,
            });
            narrative.push(
                "[relay] the EIDO gives no geodetic point: the location is unknown (0, 0 is a placeholder); set it with UpdateIncident before dispatching.".to_owned(),
            );
        }
    }
    if let Some(address) = address {
        request.address = truncate_chars(&address, MAX_ADDRESS);
        origins.set("address", "locationComponent");
    }

    // Notes and the comment additional data make the narrative.
    for (path, _, note) in r.components(root, "notesComponent") {
        if let Some(text) = r.string(note, &path, "notesActionComments", true)
            && !text.trim().is_empty()
        {
            narrative.push(text.trim().to_owned());
        }
    }
    for (path, _, data) in r.components(root, "additionalDataComponent") {
        r.string(data, &path, "additionalDataByReferenceUrl", false);
        if let Some(xml) = r.string(data, &path, "additionalDataByValue", false)
            && xml.contains("EmergencyCallData.Comment")
        {
            for comment in elements(xml, "Comment") {
                let text = unescape(comment.trim());
                if !text.is_empty() {
                    narrative.push(text);
                }
            }
        }
    }
    if !narrative.is_empty() {
        request.narrative = truncate_bytes(&narrative.join("\n"), MAX_NARRATIVE_BYTES);
        origins.set("narrative", "notesComponent");
    }

    // Cautions become risk flags where their words are unmistakable.
    for (path, _, caution) in r.components(root, "cautionComponent") {
        let common = r.string(caution, &path, "cautionTypeCommonRegistryText", true);
        let internal = r.string(caution, &path, "cautionTypeInternalText", true);
        r.string(caution, &path, "cautionSeverity", true);
        let words = format!("{} {}", common.unwrap_or(""), internal.unwrap_or("")).to_lowercase();
        for flag in caution_flags(&words) {
            if !request.risk_flags.contains(&(flag as i32)) {
                request.risk_flags.push(flag as i32);
            }
        }
    }

    // The caller: a person whose role is Caller, and how to call them back.
    let callbacks = r.components(root, "callbackComponent");
    let mut caller = CallerContact::default();
    let mut caller_callback = None;
    for (path, _, person) in r.components(root, "personComponent") {
        if !person.contains_key("personIncidentRoleRegistryText") {
            r.add(at(&path, "personIncidentRoleRegistryText"), "is required");
        }
        let roles = r.strings(person, &path, "personIncidentRoleRegistryText");
        let callback = r.reference(person, &path, "callBackReference", false);
        if !roles.iter().any(|role| role.eq_ignore_ascii_case("caller"))
            || caller_callback.is_some()
        {
            continue;
        }
        if let Some(name) = person.get("ncPersonComponent").and_then(person_name) {
            caller.name = truncate_chars(&name, 200);
            origins.set("caller.name", at(&path, "ncPersonComponent"));
        }
        caller_callback = Some(callback.or_else(|| call_callback.clone()));
    }
    let callback_id = caller_callback.flatten().or(call_callback);
    if let Some(id) = callback_id
        && let Some((path, _, callback)) = callbacks.iter().find(|(_, cid, _)| *cid == id)
    {
        let uris = r.strings(callback, path, "callBackInformationUri");
        if let Some(phone) = uris
            .iter()
            .find_map(|u| u.strip_prefix("tel:"))
            .or_else(|| uris.iter().find_map(|u| sip_user(u)))
        {
            caller.phone = truncate_chars(phone, 32);
            origins.set("caller", at(path, "callBackInformationUri"));
        }
        if let Some(Value::Object(updated)) = callback.get("updatedCbn")
            && let Some(Value::String(uri)) = updated.get("updatedCbnIdentifierUri")
        {
            let number = uri.strip_prefix("tel:").unwrap_or(uri);
            caller.callback_number = Some(truncate_chars(number, 32));
        }
    }
    if !caller.name.is_empty() || !caller.phone.is_empty() || caller.callback_number.is_some() {
        request.caller = Some(caller);
    }

    if request.cad_incident_id.is_empty() && !r.violations.iter().any(|v| v.field == "$id") {
        r.add("$id", "is required (the incident URN)");
    }
    if r.violations.is_empty() {
        Ok((request, origins))
    } else {
        Err(ApiError::invalid_fields(r.violations))
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
