//! NENA EIDO in and out, black-box, over HTTP (`POST /EIDO`, `GET /EIDO/{id}`) and gRPC
//! (SubmitEido, GetEido), against real PostgreSQL and the fake routing: NENA's own sample is
//! accepted as is, broken variants of it are refused naming the JSON path and write nothing,
//! and what Relay writes validates against NENA's EIDO schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, path::PathBuf};

use relay_proto::intake::{
    CloseIncidentRequest, CloseOutcome, Disposition, GetEidoRequest, GetIncidentRequest,
    ListIncidentsRequest, RoutingState, SubmitEidoRequest,
};
use relay_tests::TestDatabase;
use serde_json::{Value, json};
use support::{FakeRouting, TestIntake, violated_fields};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// The shared NENA EIDO material (`../shared/eido` beside the repository).
fn shared(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/eido")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing (the shared/ folder beside the repository)",
        path.display()
    );
    path
}

fn sample_text() -> String {
    std::fs::read_to_string(shared("sample-call-transfer.json")).unwrap()
}

fn sample() -> Value {
    serde_json::from_str(&sample_text()).unwrap()
}

/// Replaces every `$ref` that leaves the document (NIEM components NENA does not ship) with
/// an unconstrained schema, and fixes the one malformed keyword (`minItems: 1,` is the string
/// "1," in YAML). Nothing else is changed.
fn convert(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref")
                && !target.starts_with('#')
            {
                map.clear();
                return;
            }
            if let Some(Value::String(min)) = map.get("minItems") {
                let number: u64 = min.trim_end_matches(',').trim().parse().unwrap();
                map.insert("minItems".into(), json!(number));
            }
            for child in map.values_mut() {
                convert(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(convert),
        _ => {}
    }
}

/// NENA's EmergencyIncidentDataObjectType (components/schemas of shared/eido/openapi.yaml) as
/// a JSON Schema validator. OpenAPI 3.0 schemas are a JSON Schema draft 4/5 dialect; the
/// keywords NENA uses (allOf, required, properties, items, enum, format) mean the same.
fn nena_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(shared("openapi.yaml")).unwrap();
    let openapi: Value = serde_norway::from_str(&text).unwrap();
    let mut schemas = openapi["components"]["schemas"].clone();
    convert(&mut schemas);
    let schema = json!({
        "$ref": "#/components/schemas/EmergencyIncidentDataObjectType",
        "components": {"schemas": schemas},
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .expect("NENA's EIDO schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// One HTTP/1.1 exchange: (status, Location header, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let location = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l[9..].trim().to_owned())
        })
        .unwrap_or_default();
    (status, location, body.to_owned())
}

fn now_rfc3339(offset_seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_seconds))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The sample made into a live welfare check with a geodetic point, under a new URN.
fn live_welfare_check(id: &str) -> Value {
    let mut eido = sample();
    let urn = format!("urn:emergency:uid:incidentid:{id}:bcf.state.pa.us");
    eido["$id"] = json!(urn);
    eido["callComponent"][0]["callStartTimestamp"] = json!(now_rfc3339(-60));
    eido["incidentComponent"] = json!({
        "$id": urn,
        "lastUpdateTimeStamp": now_rfc3339(-30),
        "updatedByAgencyReference": {"$ref": "state.pa.us"},
        "incidentTypeCommonRegistryText": "WELFARE",
        "incidentCommonPriorityNumber": 2,
        "locationReference": [{"$ref": "123e4567-dead-12d3-a456-426614174000"}],
    });
    eido["locationComponent"][0]["locationByValue"] = json!(
        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:gp=\"urn:ietf:params:xml:ns:pidf:geopriv10\" xmlns:gml=\"http://www.opengis.net/gml\" entity=\"pres:x@example.com\"><tuple id=\"a\"><status><gp:geopriv><gp:location-info><gml:Point srsName=\"urn:ogc:def:crs:EPSG::4326\"><gml:pos>44.05 -123.09</gml:pos></gml:Point></gp:location-info></gp:geopriv></status></tuple></presence>"
    );
    eido
}

#[tokio::test]
async fn nenas_sample_is_accepted_as_is_over_http_and_grpc_and_resubmitting_it_changes_nothing() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let text = sample_text();

    let (status, location, body) = http(app.http, "POST", "/EIDO", &text).await;
    assert_eq!(status, 201, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let incident_id = answer["incidentId"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/EIDO/{incident_id}"));
    assert_eq!(answer["created"], json!(true));

    let (status, location, body) = http(app.http, "POST", "/EIDO", &text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(location, format!("/EIDO/{incident_id}"));
    let again: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["incidentId"], json!(incident_id));
    assert_eq!(again["created"], json!(false));

    let grpc = app
        .client
        .clone()
        .submit_eido(SubmitEidoRequest {
            request_id: String::new(),
            eido_json: text.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!grpc.created);
    assert_eq!(grpc.incident.unwrap().incident_id, incident_id);

    let incident = app
        .client
        .clone()
        .get_incident(GetIncidentRequest {
            incident_id: incident_id.clone(),
            ..GetIncidentRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(incident.cad_system, "idx.state.pa.us");
    assert_eq!(
        incident.cad_incident_id,
        "urn:emergency:uid:incidentid:a56e556d871:bcf.state.pa.us"
    );
    // No incident component, so no type: a dispatcher decides, nothing is routed.
    assert_eq!(
        incident.triage.unwrap().disposition,
        Disposition::NeedsReview as i32
    );
    assert!(routing.assign_calls().is_empty());
    assert_eq!(incident.address, "42 W Cellular Street, Wilmington DE, US");
    assert_eq!(incident.caller.unwrap().phone, "8195551212");
    assert!(incident.narrative.contains("This is an example text."));
    let listed = app
        .client
        .clone()
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(listed.len(), 1, "three submissions, one incident");
    app.stop().await;
    drop(db);
}

#[tokio::test]
async fn relays_eido_of_a_routed_and_closed_incident_validates_against_nenas_schema() {
    let validator = nena_validator();
    assert_eq!(
        schema_errors(&validator, &sample()),
        Vec::<String>::new(),
        "the converted schema accepts NENA's own sample"
    );
    let mut broken = sample();
    broken.as_object_mut().unwrap().remove("agencyComponent");
    assert!(
        !schema_errors(&validator, &broken).is_empty(),
        "the converted schema still checks something"
    );

    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let submitted = app
        .client
        .clone()
        .submit_eido(SubmitEidoRequest {
            request_id: String::new(),
            eido_json: live_welfare_check("w-1").to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(submitted.created);
    let incident = submitted.incident.unwrap();
    assert_eq!(incident.incident_type, "WELFARE");
    assert_eq!(incident.priority, 2);
    let point = incident.location.unwrap();
    assert!((point.latitude - 44.05).abs() < 1e-9 && (point.longitude + 123.09).abs() < 1e-9);
    let routing_outcome = submitted.routing.unwrap();
    assert_eq!(routing_outcome.state, RoutingState::Assigned as i32);
    let team = routing_outcome.team_id;
    let id = incident.incident_id;

    let (status, _, body) = http(app.http, "GET", &format!("/EIDO/{id}"), "").await;
    assert_eq!(status, 200, "{body}");
    let eido: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(schema_errors(&validator, &eido), Vec::<String>::new());
    assert_eq!(
        eido["incidentComponent"]["incidentTypeCommonRegistryText"],
        json!("WELFARE")
    );
    assert_eq!(
        eido["emergencyResourceComponent"][0]["emergencyResourceName"],
        json!(team)
    );
    assert_eq!(
        eido["emergencyResourceComponent"][0]["emergencyResourceTypeCommonRegistryText"],
        json!("CrisisInterventionUnit")
    );
    let purposes: Vec<&str> = eido["additionalDataComponent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["urlPurpose"].as_str().unwrap())
        .collect();
    assert_eq!(
        purposes,
        [
            "relay:triage",
            "relay:routing",
            "relay:timeline",
            "relay:referrals"
        ]
    );
    let triage: Value = serde_json::from_str(
        eido["additionalDataComponent"][0]["additionalDataByValue"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        triage["disposition"],
        json!("DISPOSITION_COMMUNITY_RESPONSE")
    );

    app.client
        .clone()
        .close_incident(CloseIncidentRequest {
            request_id: "close-w-1".into(),
            incident_id: id.clone(),
            outcome: CloseOutcome::Referred as i32,
            referral_ids: vec!["ref-1".into(), "ref-2".into()],
            notes: "referred to the crisis line".into(),
        })
        .await
        .unwrap();
    let closed = app
        .client
        .clone()
        .get_eido(GetEidoRequest {
            incident_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .eido_json;
    let closed: Value = serde_json::from_str(&closed).unwrap();
    assert_eq!(schema_errors(&validator, &closed), Vec::<String>::new());
    let referrals: Value = serde_json::from_str(
        closed["additionalDataComponent"][3]["additionalDataByValue"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(referrals["referralIds"], json!(["ref-1", "ref-2"]));
    let timeline: Value = serde_json::from_str(
        closed["additionalDataComponent"][2]["additionalDataByValue"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(timeline["received"]["recordTime"].is_string());
    assert!(timeline["assigned"]["recordTime"].is_string());
    assert!(timeline["closed"]["recordTime"].is_string());
    assert_eq!(
        closed["incidentComponent"]["dispositionComponent"][0]["dispositionCommonRegistryCode"],
        json!("CLOSE_OUTCOME_REFERRED")
    );

    let (status, _, body) = http(app.http, "GET", "/EIDO/inc-nope", "").await;
    assert_eq!(status, 404, "{body}");
    let missing = app
        .client
        .clone()
        .get_eido(GetEidoRequest {
            incident_id: "inc-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;
    drop(db);
}

/// `live_welfare_check` with its gml:pos replaced by `pos`.
fn welfare_check_at(id: &str, pos: &str) -> Value {
    let mut eido = live_welfare_check(id);
    let xml = eido["locationComponent"][0]["locationByValue"]
        .as_str()
        .unwrap()
        .replace("44.05 -123.09", pos);
    eido["locationComponent"][0]["locationByValue"] = json!(xml);
    eido
}

type Mutation = fn(&mut Value);

#[tokio::test]
async fn broken_eidos_are_refused_naming_the_json_path_and_nothing_is_written() {
    let db = TestDatabase::new().await;
    let routing = FakeRouting::started().await;
    let app = TestIntake::start(db.url(), &routing, None, &[], None).await;
    let cases: Vec<(&str, Mutation)> = vec![
        ("$id", |e| {
            e.as_object_mut().unwrap().remove("$id");
        }),
        ("issuingElementIdentification", |e| {
            e.as_object_mut()
                .unwrap()
                .remove("issuingElementIdentification");
        }),
        ("agencyComponent", |e| {
            e.as_object_mut().unwrap().remove("agencyComponent");
        }),
        ("eidoVersion", |e| e["eidoVersion"] = json!(2)),
        ("lastUpdateTimeStamp", |e| {
            e["lastUpdateTimeStamp"] = json!("yesterday");
        }),
        ("callComponent[0].callStartTimestamp", |e| {
            e["callComponent"][0]
                .as_object_mut()
                .unwrap()
                .remove("callStartTimestamp");
        }),
        ("callComponent[0].direction", |e| {
            e["callComponent"][0]["direction"] = json!(7);
        }),
        ("callComponent", |e| e["callComponent"] = json!("a call")),
        ("personComponent[0].personIncidentRoleRegistryText", |e| {
            e["personComponent"][0]
                .as_object_mut()
                .unwrap()
                .remove("personIncidentRoleRegistryText");
        }),
        ("locationComponent[1].updatedByAgencyReference", |e| {
            e["locationComponent"][1]
                .as_object_mut()
                .unwrap()
                .remove("updatedByAgencyReference");
        }),
        ("incidentComponent.incidentTypeCommonRegistryText", |e| {
            *e = live_welfare_check("bad-type");
            e["incidentComponent"]["incidentTypeCommonRegistryText"] = json!("NOTACODE");
        }),
        ("incidentComponent.incidentCommonPriorityNumber", |e| {
            *e = live_welfare_check("bad-priority");
            e["incidentComponent"]["incidentCommonPriorityNumber"] = json!("high");
        }),
        ("locationComponent[0].locationByValue", |e| {
            *e = welfare_check_at("bad-latitude", "123.09 44.05");
        }),
        ("locationComponent[0].locationByValue", |e| {
            *e = welfare_check_at("bad-pos", "here");
        }),
        ("locationComponent", |e| {
            *e = live_welfare_check("no-point");
            e["locationComponent"][0]
                .as_object_mut()
                .unwrap()
                .remove("locationByValue");
        }),
        ("$", |e| *e = json!(["not", "an", "object"])),
    ];
    for (path, mutate) in cases {
        let mut eido = sample();
        mutate(&mut eido);
        let text = eido.to_string();
        let (status, _, body) = http(app.http, "POST", "/EIDO", &text).await;
        assert_eq!(status, 400, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        let fields: Vec<&str> = error["error"]["fieldViolations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&path), "{path}: {body}");
        let refused = app
            .client
            .clone()
            .submit_eido(SubmitEidoRequest {
                request_id: String::new(),
                eido_json: text,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{path}");
        assert!(
            violated_fields(&refused).iter().any(|f| f == path),
            "{path}"
        );
    }
    let (status, _, body) = http(app.http, "POST", "/EIDO", "{\"$id\": ").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"$\""), "{body}");

    let listed = app
        .client
        .clone()
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert!(listed.is_empty(), "a refused EIDO writes nothing");
    assert!(routing.assign_calls().is_empty());
    app.stop().await;
    drop(db);
}
