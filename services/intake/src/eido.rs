//! NENA EIDO (NENA-STA-021, the JSON Emergency Incident Data Object) in and out.
//!
//! In: [`submission`] reads an EIDO document, checks what Relay relies on (each problem named
//! by its JSON path, for example `locationComponent[0].locationByValue`), and maps it onto a
//! [`SubmitIncidentRequest`], which then goes through the same validation and the same
//! [`Intake::submit`] as SubmitIncident. Out: [`render`] writes an [`Incident`] as an EIDO.
//! docs/intake.md has the field-by-field mapping.
//!
//! Caller names and numbers pass through here; nothing in this module logs them.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use relay_proto::{
    common::GeoPoint,
    intake::{
        CallerContact, CloseOutcome, Disposition, Incident, IncidentState, RiskFlag, RoutingState,
        StepTime, SubmitIncidentRequest,
    },
};
use relay_runtime::error::{ApiError, FieldViolation};
use serde_json::{Map, Value, json};

use crate::{
    apco,
    core::{Intake, Submitted},
    store::timestamp_of,
    validate::{MAX_ADDRESS, MAX_NARRATIVE_BYTES},
};

/// Largest EIDO document accepted, in bytes.
pub const MAX_EIDO_BYTES: usize = 1024 * 1024;

/// The incident type given to an EIDO without an incident component: not an APCO code, so
/// triage decides NEEDS_REVIEW and a dispatcher decides.
pub const NO_INCIDENT_TYPE: &str = "UNKNOWN";

/// The priority of an EIDO that gives none (the middle of 1..5).
pub const DEFAULT_PRIORITY: i32 = 3;

/// The agency id Relay signs the EIDOs it writes with.
pub const RELAY_AGENCY: &str = "relay.community-response";

/// Where each Relay field came from in the EIDO, so that a violation found by the common
/// SubmitIncident validation still names a JSON path.
#[derive(Debug, Default, Clone)]
pub struct Origins {
    fields: Vec<(&'static str, String)>,
}

impl Origins {
    fn set(&mut self, field: &'static str, path: impl Into<String>) {
        self.fields.push((field, path.into()));
    }

    /// The JSON path a Relay field came from (the field itself when unknown).
    #[must_use]
    pub fn path_of(&self, field: &str) -> String {
        self.fields
            .iter()
            .rev()
            .find(|(f, _)| field == *f || field.starts_with(&format!("{f}.")))
            .map_or_else(|| field.to_owned(), |(_, path)| path.clone())
    }
}

/// Reads JSON values, collecting every problem with its path.
struct Reader {
    violations: Vec<FieldViolation>,
}

fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn add(&mut self, path: impl Into<String>, why: impl Into<String>) {
        self.violations.push(FieldViolation::new(path, why));
    }

    fn object<'a>(&mut self, value: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
        let object = value.as_object();
        if object.is_none() {
            self.add(path, "must be an object");
        }
        object
    }

    fn string<'a>(
        &mut self,
        map: &'a Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'a str> {
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.add(at(path, key), "is required");
                }
                None
            }
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                self.add(at(path, key), "must be a string");
                None
            }
        }
    }

    fn time(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<DateTime<Utc>> {
        let text = self.string(map, path, key, required)?;
        match DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(_) => {
                self.add(
                    at(path, key),
                    "must be an RFC 3339 date-time, for example 2021-04-30T14:43:49.439-04:00",
                );
                None
            }
        }
    }

    fn array<'a>(&mut self, map: &'a Map<String, Value>, path: &str, key: &str) -> &'a [Value] {
        match map.get(key) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.add(at(path, key), "must be an array");
                &[]
            }
        }
    }

    fn strings(&mut self, map: &Map<String, Value>, path: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in self.array(map, path, key).iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.add(format!("{}[{i}]", at(path, key)), "must be a string"),
            }
        }
        out
    }

    fn reference(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.add(at(path, key), "is required");
                }
                None
            }
            Some(Value::Object(reference)) => self
                .string(reference, &at(path, key), "$ref", true)
                .map(str::to_owned),
            Some(_) => {
                self.add(at(path, key), "must be an object with a $ref");
                None
            }
        }
    }

    fn references(&mut self, map: &Map<String, Value>, path: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        let items = self.array(map, path, key);
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{}[{i}]", at(path, key));
            if let Some(reference) = self.object(item, &item_path)
                && let Some(id) = self.string(reference, &item_path, "$ref", true)
            {
                out.push(id.to_owned());
            }
        }
        out
    }

    /// The common prologue every data component carries; returns its `$id`.
    fn prologue(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        let id = self.string(map, path, "$id", true).map(str::to_owned);
        if id.as_deref() == Some("") {
            self.add(at(path, "$id"), "must not be empty");
        }
        self.time(map, path, "lastUpdateTimeStamp", true);
        self.reference(map, path, "updatedByAgencyReference", true);
        self.reference(map, path, "updatedByAgentReference", false);
        id
    }

    /// The components of one kind: each must be an object with a prologue.
    fn components<'a>(
        &mut self,
        root: &'a Map<String, Value>,
        key: &str,
    ) -> Vec<(String, String, &'a Map<String, Value>)> {
        let mut out = Vec::new();
        for (i, item) in self.array(root, "", key).iter().enumerate() {
            let path = format!("{key}[{i}]");
            if let Some(map) = self.object(item, &path) {
                let id = self.prologue(map, &path).unwrap_or_default();
                out.push((path, id, map));
            }
        }
        out
    }
}

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

fn describe_json_error(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

fn caution_flags(words: &str) -> Vec<RiskFlag> {
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

fn person_name(value: &Value) -> Option<String> {
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

fn sip_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let user = rest.split('@').next()?;
    (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit() || b == b'+')).then_some(user)
}

fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The inner text of every element whose local name (without namespace prefix) is `local`.
/// A small reader for the few PIDF-LO elements Relay needs; not a general XML parser.
fn elements<'a>(xml: &'a str, local: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = xml;
    let mut offset = 0;
    while let Some(start) = rest.find('<') {
        let tag_start = offset + start + 1;
        let after = &xml[tag_start..];
        let name_len = after
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let local_name = name.rsplit(':').next().unwrap_or(name);
        let mut next = tag_start;
        if local_name == local && !name.starts_with('/') {
            if let Some(end_of_tag) = after.find('>') {
                let open_end = tag_start + end_of_tag + 1;
                if after[..end_of_tag].ends_with('/') {
                    out.push("");
                    next = open_end;
                } else {
                    let close = format!("</{name}>");
                    if let Some(close_at) = xml[open_end..].find(&close) {
                        out.push(&xml[open_end..open_end + close_at]);
                        next = open_end + close_at + close.len();
                    } else {
                        next = open_end;
                    }
                }
            } else {
                break;
            }
        }
        offset = next;
        rest = &xml[next..];
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The first geodetic point (`gml:pos`, "latitude longitude [altitude]") in a PIDF-LO.
fn pidf_point(xml: &str) -> Result<Option<GeoPoint>, String> {
    let Some(pos) = elements(xml, "pos").into_iter().next() else {
        return Ok(None);
    };
    let numbers: Vec<Option<f64>> = pos
        .split_whitespace()
        .map(|n| n.parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect();
    match numbers.as_slice() {
        [Some(latitude), Some(longitude)] | [Some(latitude), Some(longitude), Some(_)] => {
            if !(-90.0..=90.0).contains(latitude) {
                Err("gml:pos latitude must be a number from -90 to 90 (WGS84 degrees)".into())
            } else if !(-180.0..=180.0).contains(longitude) {
                Err("gml:pos longitude must be a number from -180 to 180 (WGS84 degrees)".into())
            } else {
                Ok(Some(GeoPoint {
                    latitude: *latitude,
                    longitude: *longitude,
                }))
            }
        }
        _ => Err("gml:pos must hold 'latitude longitude' in WGS84 degrees".into()),
    }
}

/// A civic address (RFC 5139 / RFC 6848 elements) as one line, when the PIDF-LO has one.
fn pidf_civic_address(xml: &str) -> Option<String> {
    let civic = elements(xml, "civicAddress").into_iter().next()?;
    let get = |key: &str| {
        elements(civic, key)
            .into_iter()
            .next()
            .map(|v| unescape(v.trim()))
            .filter(|v| !v.is_empty())
    };
    let join = |keys: &[&str]| {
        keys.iter()
            .filter_map(|k| get(k))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let street = join(&["HNO", "HNS", "PRD", "RD", "STS", "POD", "POM"]);
    let unit = join(&["BLD", "FLR", "UNIT", "ROOM"]);
    let place = join(&["LMK", "NAM", "LOC"]);
    let city = join(&["A3", "A1", "PC"]);
    let line = [
        street,
        unit,
        place,
        city,
        get("country").unwrap_or_default(),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(", ");
    (!line.is_empty()).then_some(line)
}

/// The region EIDO incidents go to: `[intake] eido_region`, else the first configured
/// region, else "default".
fn region(intake: &Intake) -> String {
    intake
        .settings
        .eido_region
        .clone()
        .or_else(|| intake.settings.regions.first().cloned())
        .unwrap_or_else(|| "default".to_owned())
}

/// Accepts an EIDO: maps it, validates it as SubmitIncident does, and submits it.
///
/// # Errors
/// INVALID_ARGUMENT naming JSON paths; the errors of SubmitIncident otherwise.
pub async fn submit(intake: &Arc<Intake>, text: &str) -> Result<Submitted, ApiError> {
    let new = prepare(intake, text)?;
    intake.submit(new).await.map_err(crate::handler::api_error)
}

/// Maps an EIDO and validates it as SubmitIncident does: the incident to submit, so that the
/// gRPC handler can check the credential's CAD and region before anything is written.
///
/// # Errors
/// INVALID_ARGUMENT naming JSON paths.
pub fn prepare(intake: &Arc<Intake>, text: &str) -> Result<crate::core::NewIncident, ApiError> {
    let defaults = EidoDefaults {
        region: region(intake),
        now_micros: intake.clock().now_micros(),
    };
    let (request, origins) = submission(text, &defaults)?;
    crate::validate::validate_submit(intake, request).map_err(|error| match error {
        ApiError::InvalidArgument { reason, violations } => ApiError::InvalidArgument {
            reason,
            violations: violations
                .into_iter()
                .map(|v| FieldViolation::new(origins.path_of(&v.field), v.description))
                .collect(),
        },
        other => other,
    })
}

/// One incident as an EIDO JSON document.
///
/// # Errors
/// NOT_FOUND when no incident has the id; INVALID_ARGUMENT when it is malformed.
pub async fn get(intake: &Intake, incident_id: &str) -> Result<String, ApiError> {
    check_id(incident_id)?;
    let stored = intake
        .get(incident_id)
        .await
        .map_err(crate::handler::api_error)?;
    Ok(render(&stored.incident).to_string())
}

/// Checks the incident_id of a GetEido request.
///
/// # Errors
/// INVALID_ARGUMENT when it is missing or malformed.
pub fn check_id(incident_id: &str) -> Result<(), ApiError> {
    let mut v = relay_runtime::validate::Violations::new();
    v.id("incident_id", incident_id);
    v.finish()
}

fn rfc3339(time: Option<&prost_types::Timestamp>) -> Option<String> {
    let time = time?;
    let nanos = u32::try_from(time.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(time.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn prologue(id: &str, updated: &str) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("$id".into(), json!(id));
    map.insert("lastUpdateTimeStamp".into(), json!(updated));
    map.insert(
        "updatedByAgencyReference".into(),
        json!({"$ref": RELAY_AGENCY}),
    );
    map
}

fn step_json(step: Option<&StepTime>) -> Value {
    match step {
        None => Value::Null,
        Some(step) => json!({
            "sourceTime": rfc3339(step.source_time.as_ref()),
            "recordTime": rfc3339(step.record_time.as_ref()),
        }),
    }
}

/// Writes an incident as a NENA EIDO (eidoVersion 1.0).
#[must_use]
#[allow(clippy::too_many_lines)] // One document, written top to bottom.
pub fn render(incident: &Incident) -> Value {
    let updated = rfc3339(incident.update_time.as_ref())
        .or_else(|| rfc3339(incident.create_time.as_ref()))
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned());
    let id = &incident.incident_id;
    let urn = if incident
        .cad_incident_id
        .starts_with("urn:emergency:uid:incidentid:")
    {
        incident.cad_incident_id.clone()
    } else {
        format!("urn:emergency:uid:incidentid:{id}:{RELAY_AGENCY}")
    };
    let location_id = format!("{id}:location");
    let mut root = prologue(&urn, &updated);
    root.insert("eidoVersion".into(), json!("1.0"));
    root.insert("issuingElementIdentification".into(), json!("relay-intake"));

    let mut agencies = vec![Value::Object({
        let mut a = prologue(RELAY_AGENCY, &updated);
        a.insert(
            "agencyRoleDescriptionRegistryText".into(),
            json!(["Dispatch"]),
        );
        a.insert("agencyType".into(), json!(["mental_health"]));
        a
    })];
    if !incident.cad_system.is_empty() {
        let mut a = prologue(&incident.cad_system, &updated);
        a.insert(
            "agencyRoleDescriptionRegistryText".into(),
            json!(["CallReceiving"]),
        );
        a.insert("agencyType".into(), json!(["psap"]));
        a.insert("incidentOwningAgencyIndicator".into(), json!(true));
        agencies.push(Value::Object(a));
    }

    let triage = incident.triage.clone().unwrap_or_default();
    let routing = incident.routing.clone().unwrap_or_default();
    let timeline = incident.timeline.clone().unwrap_or_default();
    let state = IncidentState::try_from(incident.state).unwrap_or(IncidentState::Unspecified);

    let mut additional = Vec::new();
    let mut add_data = |name: &str, value: Value| {
        let mut d = prologue(&format!("{id}:{name}"), &updated);
        d.insert("additionalDataByValue".into(), json!(value.to_string()));
        d.insert("urlPurpose".into(), json!(format!("relay:{name}")));
        additional.push(Value::Object(d));
        json!({"$ref": format!("{id}:{name}")})
    };
    let disposition = Disposition::try_from(triage.disposition).unwrap_or_default();
    let triage_ref = add_data(
        "triage",
        json!({
            "disposition": disposition.as_str_name(),
            "reasons": triage.reasons,
            "protocolVersion": triage.protocol_version,
            "ruleIds": triage.rule_ids,
            "requiredCapabilities": triage.required_capabilities,
            "coResponders": triage.co_responders,
            "decidedTime": rfc3339(triage.decided_time.as_ref()),
        }),
    );
    let routing_state = RoutingState::try_from(routing.state).unwrap_or_default();
    let routing_ref = add_data(
        "routing",
        json!({
            "state": routing_state.as_str_name(),
            "teamId": routing.team_id,
            "assignmentId": routing.assignment_id,
            "etaSeconds": routing.eta_seconds,
            "distanceMeters": routing.distance_meters,
            "rationale": routing.rationale,
        }),
    );
    let timeline_ref = add_data(
        "timeline",
        json!({
            "received": step_json(timeline.received.as_ref()),
            "triaged": step_json(timeline.triaged.as_ref()),
            "queued": step_json(timeline.queued.as_ref()),
            "recommended": step_json(timeline.recommended.as_ref()),
            "assigned": step_json(timeline.assigned.as_ref()),
            "dispatched": step_json(timeline.dispatched.as_ref()),
            "enRoute": step_json(timeline.en_route.as_ref()),
            "onScene": step_json(timeline.on_scene.as_ref()),
            "transporting": step_json(timeline.transporting.as_ref()),
            "cleared": step_json(timeline.cleared.as_ref()),
            "released": step_json(timeline.released.as_ref()),
            "escalated": step_json(timeline.escalated.as_ref()),
            "closed": step_json(timeline.closed.as_ref()),
            "cancelled": step_json(timeline.cancelled.as_ref()),
            "teamId": timeline.team_id,
        }),
    );
    let referrals_ref = add_data("referrals", json!({ "referralIds": incident.referral_ids }));
    // Without `caller.details.read` the caller, narrative and notes are left out (the
    // incident came here emptied); this says so, as Incident.caller_details_withheld does.
    let withheld_ref = incident
        .caller_details_withheld
        .then(|| add_data("caller-details-withheld", json!({ "withheld": true })));

    let mut notes = Vec::new();
    let mut add_note = |name: String, text: &str, time: &str| {
        let mut n = prologue(&format!("{id}:{name}"), time);
        n.insert(
            "notesActionComments".into(),
            json!(format!("<p>{}</p>", escape(text))),
        );
        notes.push(Value::Object(n));
        json!({"$ref": format!("{id}:{name}")})
    };
    let mut note_refs = Vec::new();
    if !incident.narrative.is_empty() {
        note_refs.push(add_note("narrative".into(), &incident.narrative, &updated));
    }
    // A note is never empty as stored; an empty one had its text withheld.
    for (i, note) in incident.notes.iter().enumerate() {
        if note.text.is_empty() {
            continue;
        }
        let time = rfc3339(note.create_time.as_ref()).unwrap_or_else(|| updated.clone());
        note_refs.push(add_note(format!("note-{i}"), &note.text, &time));
    }
    if !incident.close_notes.is_empty() {
        note_refs.push(add_note(
            "close-notes".into(),
            &incident.close_notes,
            &updated,
        ));
    }
    if !incident.cancel_reason.is_empty() {
        note_refs.push(add_note(
            "cancel-reason".into(),
            &incident.cancel_reason,
            &updated,
        ));
    }

    let mut inc = prologue(&urn, &updated);
    let apco = if incident.apco_incident_type.is_empty() {
        incident.incident_type.clone()
    } else {
        incident.apco_incident_type.clone()
    };
    inc.insert("incidentTypeCommonRegistryText".into(), json!(apco));
    inc.insert(
        "incidentTypeInternalCode".into(),
        json!(incident.incident_type),
    );
    inc.insert("internalIncidentId".into(), json!(id));
    inc.insert(
        "incidentStatusInternalText".into(),
        json!([state.as_str_name(), routing_state.as_str_name()]),
    );
    inc.insert(
        "incidentCommonPriorityNumber".into(),
        json!(incident.priority),
    );
    inc.insert("beatOrDispatchGroupText".into(), json!(incident.region));
    inc.insert("locationReference".into(), json!([{"$ref": location_id}]));
    if !note_refs.is_empty() {
        inc.insert("notesReference".into(), json!(note_refs));
    }
    if state == IncidentState::Closed {
        let outcome = CloseOutcome::try_from(incident.close_outcome).unwrap_or_default();
        let mut d = prologue(&format!("{id}:disposition"), &updated);
        d.insert(
            "dispositionCommonRegistryCode".into(),
            json!(outcome.as_str_name()),
        );
        d.insert("dispositionPrimaryIndicator".into(), json!(true));
        inc.insert("dispositionComponent".into(), json!([d]));
    }

    let mut location = prologue(&location_id, &updated);
    location.insert(
        "locationTypeDescriptionRegistryText".into(),
        json!("Incident"),
    );
    if let Some(point) = incident.location {
        location.insert(
            "locationByValue".into(),
            json!(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:gp=\"urn:ietf:params:xml:ns:pidf:geopriv10\" xmlns:gml=\"http://www.opengis.net/gml\" entity=\"pres:{}\"><tuple id=\"location\"><status><gp:geopriv><gp:location-info><gml:Point srsName=\"urn:ogc:def:crs:EPSG::4326\"><gml:pos>{} {}</gml:pos></gml:Point></gp:location-info><gp:usage-rules/></gp:geopriv></status></tuple></presence>",
                escape(id),
                point.latitude,
                point.longitude
            )),
        );
    }
    if !incident.address.is_empty() {
        location.insert("locationDescriptionText".into(), json!(incident.address));
    }

    let mut people = Vec::new();
    let mut callbacks = Vec::new();
    if let Some(caller) = &incident.caller {
        let person_id = format!("{id}:caller");
        let mut p = prologue(&person_id, &updated);
        p.insert("personIncidentRoleRegistryText".into(), json!(["Caller"]));
        if !caller.name.is_empty() {
            p.insert(
                "ncPersonComponent".into(),
                json!({"PersonName": {"PersonFullName": caller.name}}),
            );
        }
        let mut uris = Vec::new();
        if !caller.phone.is_empty() {
            uris.push(format!("tel:{}", caller.phone));
        }
        if let Some(number) = &caller.callback_number {
            uris.push(format!("tel:{number}"));
        }
        if !uris.is_empty() {
            let callback_id = format!("{id}:callback");
            let mut c = prologue(&callback_id, &updated);
            c.insert("callBackInformationUri".into(), json!(uris));
            callbacks.push(Value::Object(c));
            p.insert("callBackReference".into(), json!({"$ref": callback_id}));
        }
        people.push(Value::Object(p));
        inc.insert("personReference".into(), json!([{"$ref": person_id}]));
    }

    let team = if routing.team_id.is_empty() {
        &timeline.team_id
    } else {
        &routing.team_id
    };
    let assigned = !team.is_empty()
        && matches!(
            routing_state,
            RoutingState::Assigned | RoutingState::Released | RoutingState::Cancelled
        );
    if assigned {
        let agent_id = format!("team:{team}");
        let resource_id = format!("{id}:unit:{team}");
        let mut agent = prologue(&agent_id, &updated);
        agent.insert("agentRoleRegistryText".into(), json!(["Responder"]));
        agent.insert("agencyReference".into(), json!({"$ref": RELAY_AGENCY}));
        let (primary, secondary) = unit_status(&timeline, routing_state);
        let mut unit = prologue(&resource_id, &updated);
        unit.insert(
            "emergencyResourceTypeCommonRegistryText".into(),
            json!("CrisisInterventionUnit"),
        );
        let mut attributes = incident.required_capabilities.clone();
        for cap in &triage.required_capabilities {
            if !attributes.contains(cap) {
                attributes.push(cap.clone());
            }
        }
        unit.insert("resourceAttributeRegistryText".into(), json!(["Other"]));
        unit.insert("resourceAttributeInternalText".into(), json!(attributes));
        unit.insert("emergencyResourceName".into(), json!(team));
        unit.insert("primaryUnitStatusRegistryText".into(), json!(primary));
        unit.insert("secondaryUnitStatusRegistryText".into(), json!([secondary]));
        unit.insert(
            "unitStatusInternal".into(),
            json!([routing_state.as_str_name()]),
        );
        unit.insert("agentReference".into(), json!([{"$ref": agent_id}]));
        unit.insert(
            "unitDestinationReference".into(),
            json!({"$ref": location_id}),
        );
        let mut dispatch = prologue(&format!("{id}:dispatch"), &updated);
        dispatch.insert("agencyReference".into(), json!({"$ref": RELAY_AGENCY}));
        dispatch.insert(
            "emergencyResourceReference".into(),
            json!([{"$ref": resource_id}]),
        );
        root.insert("agentComponent".into(), json!([agent]));
        root.insert("emergencyResourceComponent".into(), json!([unit]));
        root.insert("dispatchComponent".into(), json!([dispatch]));
    }

    root.insert("incidentComponent".into(), Value::Object(inc));
    root.insert("agencyComponent".into(), Value::Array(agencies));
    root.insert("locationComponent".into(), json!([location]));
    if !people.is_empty() {
        root.insert("personComponent".into(), Value::Array(people));
        root.insert("callbackComponent".into(), Value::Array(callbacks));
    }
    if !notes.is_empty() {
        root.insert("notesComponent".into(), Value::Array(notes));
    }
    root.insert("additionalDataComponent".into(), Value::Array(additional));
    // References Relay's additional data from the incident's notes would bend the schema;
    // the urlPurpose of each says what it is ("relay:triage", ...).
    let _ = (
        triage_ref,
        routing_ref,
        timeline_ref,
        referrals_ref,
        withheld_ref,
    );
    root.insert(
        "@context".into(),
        json!({"@vocab": "./JSON-LD_Contexts/EmergencyIncidentDataObjectType.jsonld"}),
    );
    Value::Object(root)
}

/// The unit's primary and secondary status (NENA's Unit Status registries) from the
/// timeline: the latest step the team reached.
fn unit_status(
    timeline: &relay_proto::intake::IncidentTimeline,
    state: RoutingState,
) -> (&'static str, &'static str) {
    if timeline.cleared.is_some() {
        ("Available", "Cleared")
    } else if timeline.released.is_some() || state != RoutingState::Assigned {
        ("Available", "Released")
    } else if timeline.transporting.is_some() {
        ("NotAvailable", "Transporting")
    } else if timeline.on_scene.is_some() {
        ("NotAvailable", "OnScene")
    } else if timeline.en_route.is_some() {
        ("NotAvailable", "EnRoute")
    } else {
        ("NotAvailable", "Dispatched")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_gml_point_and_a_civic_address() {
        let xml = "<presence><gp:location-info><gml:Point><gml:pos>44.05 -123.09</gml:pos></gml:Point><civicAddress><country>US</country><A1>OR</A1><A3>Eugene</A3><RD>Main</RD><STS>St</STS><HNO>1234</HNO></civicAddress></gp:location-info></presence>";
        let point = pidf_point(xml).expect("a valid pos").expect("a point");
        assert!((point.latitude - 44.05).abs() < 1e-9);
        assert!((point.longitude + 123.09).abs() < 1e-9);
        assert_eq!(
            pidf_civic_address(xml).as_deref(),
            Some("1234 Main St, Eugene OR, US")
        );
        assert!(pidf_point("<gml:pos>91 0</gml:pos>").is_err());
        assert!(pidf_point("<gml:pos>north</gml:pos>").is_err());
    }

    #[test]
    fn origins_name_the_json_path() {
        let mut origins = Origins::default();
        origins.set("location", "locationComponent[1].locationByValue");
        assert_eq!(
            origins.path_of("location.latitude"),
            "locationComponent[1].locationByValue"
        );
        assert_eq!(origins.path_of("region"), "region");
    }
}
