//! EIDO out: an [`Incident`] written as an EIDO document.

use super::*;

pub(super) fn rfc3339(time: Option<&prost_types::Timestamp>) -> Option<String> {
    let time = time?;
    let nanos = u32::try_from(time.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(time.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub(super) fn prologue(id: &str, updated: &str) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("$id".into(), json!(id));
    map.insert("lastUpdateTimeStamp".into(), json!(updated));
    map.insert(
        "updatedByAgencyReference".into(),
        json!({"$ref": RELAY_AGENCY}),
    );
    map
}

pub(super) fn step_json(step: Option<&StepTime>) -> Value {
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
    let agencies = agencies(incident, &updated);

    let triage = incident.triage.clone().unwrap_or_default();
    let routing = incident.routing.clone().unwrap_or_default();
    let timeline = incident.timeline.clone().unwrap_or_default();
    let state = IncidentState::try_from(incident.state).unwrap_or(IncidentState::Unspecified);
    let routing_state = RoutingState::try_from(routing.state).unwrap_or_default();
    // Relay's own data goes by value, each part named by its urlPurpose ("relay:triage",
    // ...): referencing it from the incident's notes would bend the schema.
    let additional = additional_data(incident, &updated, &triage, &routing, &timeline);
    let (notes, note_refs) = notes(incident, &updated);
    let mut inc = incident_component(incident, &urn, &updated, state, routing_state, note_refs);
    let location = location_component(incident, &location_id, &updated);
    let (people, callbacks) = caller_components(incident, &updated, &mut inc);
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
        let unit = Unit {
            incident,
            team,
            location_id: &location_id,
            updated: &updated,
            timeline: &timeline,
            routing_state,
        };
        unit.dispatch(&triage, &mut root);
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
    root.insert(
        "@context".into(),
        json!({"@vocab": "./JSON-LD_Contexts/EmergencyIncidentDataObjectType.jsonld"}),
    );
    Value::Object(root)
}

/// Relay's agency, and the CAD's (the call's owner) when known.
fn agencies(incident: &Incident, updated: &str) -> Vec<Value> {
    let mut agencies = vec![Value::Object({
        let mut a = prologue(RELAY_AGENCY, updated);
        a.insert(
            "agencyRoleDescriptionRegistryText".into(),
            json!(["Dispatch"]),
        );
        a.insert("agencyType".into(), json!(["mental_health"]));
        a
    })];
    if !incident.cad_system.is_empty() {
        let mut a = prologue(&incident.cad_system, updated);
        a.insert(
            "agencyRoleDescriptionRegistryText".into(),
            json!(["CallReceiving"]),
        );
        a.insert("agencyType".into(), json!(["psap"]));
        a.insert("incidentOwningAgencyIndicator".into(), json!(true));
        agencies.push(Value::Object(a));
    }
    agencies
}

/// Relay's triage, routing, timeline, referrals (and whether caller details were
/// withheld) as additional data by value.
fn additional_data(
    incident: &Incident,
    updated: &str,
    triage: &relay_proto::intake::TriageDecision,
    routing: &relay_proto::intake::RoutingOutcome,
    timeline: &relay_proto::intake::IncidentTimeline,
) -> Vec<Value> {
    let id = &incident.incident_id;
    let routing_state = RoutingState::try_from(routing.state).unwrap_or_default();
    let mut additional = Vec::new();
    let mut add_data = |name: &str, value: Value| {
        let mut d = prologue(&format!("{id}:{name}"), updated);
        d.insert("additionalDataByValue".into(), json!(value.to_string()));
        d.insert("urlPurpose".into(), json!(format!("relay:{name}")));
        additional.push(Value::Object(d));
        json!({"$ref": format!("{id}:{name}")})
    };
    let disposition = Disposition::try_from(triage.disposition).unwrap_or_default();
    add_data(
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
    add_data(
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
    add_data(
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
    add_data("referrals", json!({ "referralIds": incident.referral_ids }));
    // Without `caller.details.read` the caller, narrative and notes are left out (the
    // incident came here emptied); this says so, as Incident.caller_details_withheld does.
    if incident.caller_details_withheld {
        add_data("caller-details-withheld", json!({ "withheld": true }));
    }
    additional
}

/// The narrative and the notes as notes components, and their references.
fn notes(incident: &Incident, updated: &str) -> (Vec<Value>, Vec<Value>) {
    let id = &incident.incident_id;
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
        note_refs.push(add_note("narrative".into(), &incident.narrative, updated));
    }
    // A note is never empty as stored; an empty one had its text withheld.
    for (i, note) in incident.notes.iter().enumerate() {
        if note.text.is_empty() {
            continue;
        }
        let time = rfc3339(note.create_time.as_ref()).unwrap_or_else(|| updated.to_owned());
        note_refs.push(add_note(format!("note-{i}"), &note.text, &time));
    }
    if !incident.close_notes.is_empty() {
        note_refs.push(add_note(
            "close-notes".into(),
            &incident.close_notes,
            updated,
        ));
    }
    if !incident.cancel_reason.is_empty() {
        note_refs.push(add_note(
            "cancel-reason".into(),
            &incident.cancel_reason,
            updated,
        ));
    }
    (notes, note_refs)
}

/// The incident component: type, status, priority, its location and notes, and its
/// disposition once closed.
fn incident_component(
    incident: &Incident,
    urn: &str,
    updated: &str,
    state: IncidentState,
    routing_state: RoutingState,
    note_refs: Vec<Value>,
) -> Map<String, Value> {
    let id = &incident.incident_id;
    let location_id = format!("{id}:location");
    let mut inc = prologue(urn, updated);
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
        let mut d = prologue(&format!("{id}:disposition"), updated);
        d.insert(
            "dispositionCommonRegistryCode".into(),
            json!(outcome.as_str_name()),
        );
        d.insert("dispositionPrimaryIndicator".into(), json!(true));
        inc.insert("dispositionComponent".into(), json!([d]));
    }
    inc
}

/// The incident's location: a PIDF-LO point by value and the address.
fn location_component(incident: &Incident, location_id: &str, updated: &str) -> Map<String, Value> {
    let id = &incident.incident_id;
    let mut location = prologue(location_id, updated);
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
    location
}

/// The caller as a person with a callback, referenced from the incident component.
fn caller_components(
    incident: &Incident,
    updated: &str,
    inc: &mut Map<String, Value>,
) -> (Vec<Value>, Vec<Value>) {
    let id = &incident.incident_id;
    let mut people = Vec::new();
    let mut callbacks = Vec::new();
    if let Some(caller) = &incident.caller {
        let person_id = format!("{id}:caller");
        let mut p = prologue(&person_id, updated);
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
            let mut c = prologue(&callback_id, updated);
            c.insert("callBackInformationUri".into(), json!(uris));
            callbacks.push(Value::Object(c));
            p.insert("callBackReference".into(), json!({"$ref": callback_id}));
        }
        people.push(Value::Object(p));
        inc.insert("personReference".into(), json!([{"$ref": person_id}]));
    }
    (people, callbacks)
}

/// The team assigned to an incident, as the EIDO's agent, unit and dispatch.
struct Unit<'a> {
    incident: &'a Incident,
    team: &'a str,
    location_id: &'a str,
    updated: &'a str,
    timeline: &'a relay_proto::intake::IncidentTimeline,
    routing_state: RoutingState,
}

impl Unit<'_> {
    /// Adds the agent, emergency resource and dispatch components to `root`.
    fn dispatch(
        &self,
        triage: &relay_proto::intake::TriageDecision,
        root: &mut Map<String, Value>,
    ) {
        let Self {
            incident,
            team,
            location_id,
            updated,
            timeline,
            routing_state,
        } = *self;
        let id = &incident.incident_id;
        let agent_id = format!("team:{team}");
        let resource_id = format!("{id}:unit:{team}");
        let mut agent = prologue(&agent_id, updated);
        agent.insert("agentRoleRegistryText".into(), json!(["Responder"]));
        agent.insert("agencyReference".into(), json!({"$ref": RELAY_AGENCY}));
        let (primary, secondary) = unit_status(timeline, routing_state);
        let mut unit = prologue(&resource_id, updated);
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
        let mut dispatch = prologue(&format!("{id}:dispatch"), updated);
        dispatch.insert("agencyReference".into(), json!({"$ref": RELAY_AGENCY}));
        dispatch.insert(
            "emergencyResourceReference".into(),
            json!([{"$ref": resource_id}]),
        );
        root.insert("agentComponent".into(), json!([agent]));
        root.insert("emergencyResourceComponent".into(), json!([unit]));
        root.insert("dispatchComponent".into(), json!([dispatch]));
    }
}

/// The unit's primary and secondary status (NENA's Unit Status registries) from the
/// timeline: the latest step the team reached.
pub(super) fn unit_status(
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
