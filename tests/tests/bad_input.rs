//! Issue 18, part 4: a bad-input catalogue. Every unary RPC of every Relay service, taken from
//! the descriptor set (so a new RPC is covered by default), gets a malformed message (a bad
//! varint), a string field that is not UTF-8, and an oversized message (5 MiB). Each must
//! answer INVALID_ARGUMENT (reason UNDECODABLE_REQUEST) or RESOURCE_EXHAUSTED
//! (REQUEST_TOO_LARGE), and write nothing. Then a hand-written table of non-finite
//! coordinates and out-of-range timestamps on the RPCs that take them, each answered
//! INVALID_ARGUMENT naming the field. "Nothing written" is checked twice: every List RPC lists
//! nothing afterwards, and no table of the suite's database and no Redis key of its prefix
//! gained a row or a key.

use std::{collections::BTreeMap, time::SystemTime};

use prost::Message;
use prost_types::{
    DescriptorProto, FileDescriptorSet, Timestamp, field_descriptor_proto::Label,
    field_descriptor_proto::Type,
};
use relay_proto::{
    availability::{
        FindAvailableTeamsRequest, ReportLocationRequest, UpsertTeamRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::GeoPoint,
    directory::{
        SearchServicesRequest, UpdateCapacityRequest,
        directory_service_client::DirectoryServiceClient,
    },
    intake::{
        ListIncidentsRequest, SubmitIncidentRequest, UpdateIncidentRequest,
        intake_service_client::IntakeServiceClient,
    },
    routing::{AssignTeamRequest, routing_service_client::RoutingServiceClient},
};
use relay_tests::{
    raw::raw_call,
    redis_url,
    status::{error_info, violated_fields},
    suite::Suite,
};
use sqlx::{Connection, PgConnection};
use tonic::{Code, Status};

/// One unary RPC from the descriptor set.
struct Rpc {
    package: String,
    path: String,
    input: String,
    output: String,
}

struct Descriptors {
    rpcs: Vec<Rpc>,
    messages: BTreeMap<String, DescriptorProto>,
}

fn descriptors() -> Descriptors {
    let set = FileDescriptorSet::decode(relay_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut rpcs = Vec::new();
    let mut messages = BTreeMap::new();
    for file in &set.file {
        let package = file.package().to_owned();
        for message in &file.message_type {
            collect(&format!(".{package}"), message, &mut messages);
        }
        for service in &file.service {
            for method in &service.method {
                if method.client_streaming() || method.server_streaming() {
                    continue;
                }
                rpcs.push(Rpc {
                    package: package.clone(),
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    input: method.input_type().to_owned(),
                    output: method.output_type().to_owned(),
                });
            }
        }
    }
    Descriptors { rpcs, messages }
}

fn collect(scope: &str, message: &DescriptorProto, into: &mut BTreeMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested, into);
    }
    into.insert(name, message.clone());
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        #[allow(clippy::cast_possible_truncation)]
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn length_delimited(field: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field.unsigned_abs()) << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A message of type `name` whose first string field (searched breadth-first through nested
/// messages, at most three deep) holds bytes that are not UTF-8; `None` when it has none.
fn invalid_utf8(d: &Descriptors, name: &str, depth: usize) -> Option<Vec<u8>> {
    let message = d.messages.get(name)?;
    if let Some(field) = message.field.iter().find(|f| f.r#type() == Type::String) {
        return Some(length_delimited(field.number(), &[0xc3, 0x28]));
    }
    if depth == 0 {
        return None;
    }
    message
        .field
        .iter()
        .filter(|f| f.r#type() == Type::Message)
        .find_map(|f| {
            invalid_utf8(d, f.type_name(), depth - 1)
                .map(|inner| length_delimited(f.number(), &inner))
        })
}

/// The numbers of the top-level fields present in an encoded message.
fn fields_present(mut bytes: &[u8]) -> Vec<u32> {
    fn read_varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0_u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first().expect("a complete varint");
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut present = Vec::new();
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes);
        let skip = match key & 7 {
            0 => {
                read_varint(&mut bytes);
                0
            }
            1 => 8,
            2 => usize::try_from(read_varint(&mut bytes)).expect("length"),
            5 => 4,
            other => panic!("unexpected wire type {other}"),
        };
        bytes = &bytes[skip..];
        present.push(u32::try_from(key >> 3).expect("field number"));
    }
    present
}

fn endpoint_of(suite: &Suite, package: &str) -> String {
    let process = match package {
        "relay.availability.v1" => &suite.availability,
        "relay.routing.v1" => &suite.routing,
        // Intake serves the program reports beside the incidents.
        "relay.intake.v1" | "relay.reports.v1" => &suite.intake,
        "relay.directory.v1" => &suite.directory,
        other => panic!("no process serves {other}: add it to this table"),
    };
    process.endpoint()
}

/// Rows per table of the suite's database (all schemas) and the number of its Redis keys.
/// The audit trail is left out: a refused write is recorded there (issue 14), which is the
/// point, not a change of the service's state.
async fn footprint(suite: &Suite) -> BTreeMap<String, i64> {
    let mut db = PgConnection::connect(suite.database().url())
        .await
        .expect("connect");
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
         AND table_name NOT IN ('_sqlx_migrations', 'audit_log', 'audit_head') \
         AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    .fetch_all(&mut db)
    .await
    .expect("tables");
    let mut counts = BTreeMap::new();
    for (schema, table) in tables {
        let count: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".\"{table}\""))
                .fetch_one(&mut db)
                .await
                .expect("count");
        counts.insert(format!("{schema}.{table}"), count);
    }
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", suite.prefix))
        .query_async(&mut redis)
        .await
        .expect("keys");
    counts.insert(
        String::from("redis keys"),
        i64::try_from(keys.len()).expect("count"),
    );
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unary_rpc_refuses_undecodable_and_oversized_requests_and_writes_nothing() {
    let suite = Suite::start(&[]).await;
    let d = descriptors();
    assert!(d.rpcs.len() >= 20, "only {} unary RPCs found", d.rpcs.len());
    let before = footprint(&suite).await;
    let mut answered = 0;
    for rpc in &d.rpcs {
        let endpoint = endpoint_of(&suite, &rpc.package);
        let utf8 = invalid_utf8(&d, &rpc.input, 3)
            .unwrap_or_else(|| panic!("{} takes no string field: give it a case", rpc.path));
        let cases: [(&str, Vec<u8>, Code, &str); 3] = [
            (
                "bad varint",
                [vec![0x98, 0x06], vec![0xff; 11]].concat(),
                Code::InvalidArgument,
                "UNDECODABLE_REQUEST",
            ),
            (
                "invalid UTF-8",
                utf8,
                Code::InvalidArgument,
                "UNDECODABLE_REQUEST",
            ),
            (
                "5 MiB",
                vec![0; 5 * 1024 * 1024],
                Code::ResourceExhausted,
                "REQUEST_TOO_LARGE",
            ),
        ];
        for (what, body, code, expected_reason) in cases {
            let status = raw_call(&endpoint, &rpc.path, body)
                .await
                .expect_err(&format!("{} accepted {what}", rpc.path));
            assert_eq!(status.code(), code, "{} {what}: {status:?}", rpc.path);
            assert_eq!(
                error_info(&status).map(|i| i.reason).as_deref(),
                Some(expected_reason),
                "{} {what}: {status:?}",
                rpc.path
            );
            answered += 1;
        }
    }
    // Every List RPC, asked for everything, lists nothing.
    let mut lists = 0;
    for rpc in d.rpcs.iter().filter(|r| {
        r.path
            .rsplit('/')
            .next()
            .is_some_and(|m| m.starts_with("List"))
    }) {
        let output = &d.messages[&rpc.output];
        let repeated: Vec<u32> = output
            .field
            .iter()
            .filter(|f| f.label() == Label::Repeated)
            .map(|f| u32::try_from(f.number()).expect("number"))
            .collect();
        let endpoint = endpoint_of(&suite, &rpc.package);
        // Asked for everything; a filter it requires (ListQueue's region) set to the one
        // region the cases above named.
        let response = match raw_call(&endpoint, &rpc.path, Vec::new()).await {
            Ok(response) => response,
            Err(status) if status.code() == Code::InvalidArgument => {
                let input = &d.messages[&rpc.input];
                let mut body = Vec::new();
                for name in violated_fields(&status) {
                    let field = input
                        .field
                        .iter()
                        .find(|f| f.name() == name && f.r#type() == Type::String)
                        .unwrap_or_else(|| panic!("{}: {status:?}", rpc.path));
                    body.extend(length_delimited(field.number(), b"north"));
                }
                raw_call(&endpoint, &rpc.path, body)
                    .await
                    .unwrap_or_else(|status| panic!("{}: {status:?}", rpc.path))
            }
            Err(status) => panic!("{}: {status:?}", rpc.path),
        };
        let listed: Vec<u32> = fields_present(&response)
            .into_iter()
            .filter(|f| repeated.contains(f))
            .collect();
        assert!(
            listed.is_empty(),
            "{} lists something: fields {listed:?}",
            rpc.path
        );
        lists += 1;
    }
    let after = footprint(&suite).await;
    assert_eq!(before, after, "rows or keys appeared");
    eprintln!(
        "{} unary RPCs, {answered} bad requests refused, {lists} List RPCs empty, footprint {after:?}",
        d.rpcs.len()
    );
    suite.clean_up().await;
}

fn now() -> Option<Timestamp> {
    Some(Timestamp::from(SystemTime::now()))
}

fn at(latitude: f64, longitude: f64) -> Option<GeoPoint> {
    Some(GeoPoint {
        latitude,
        longitude,
    })
}

/// Year 10000: past what google.protobuf.Timestamp allows.
fn far_future() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    })
}

/// Nanos out of range.
fn bad_nanos() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_800_000_000,
        nanos: 1_000_000_000,
    })
}

const HERE: (f64, f64) = (45.52, -122.68);

fn submit(location: Option<GeoPoint>, received_at: Option<Timestamp>) -> SubmitIncidentRequest {
    SubmitIncidentRequest {
        cad_system: "cad-bad-input".into(),
        cad_incident_id: relay_tests::unique_name("call"),
        incident_type: "WELFARE".into(),
        priority: 3,
        location,
        address: "1 SW Broadway".into(),
        region: "north".into(),
        narrative: "caller worried about a neighbour".into(),
        received_at,
        ..SubmitIncidentRequest::default()
    }
}

fn report(location: Option<GeoPoint>, recorded_at: Option<Timestamp>) -> ReportLocationRequest {
    ReportLocationRequest {
        team_id: "team-1".into(),
        location,
        recorded_at,
        ..ReportLocationRequest::default()
    }
}

fn find(location: Option<GeoPoint>, radius_meters: f64) -> FindAvailableTeamsRequest {
    FindAvailableTeamsRequest {
        region: "north".into(),
        location,
        radius_meters,
        ..FindAvailableTeamsRequest::default()
    }
}

fn assign(location: Option<GeoPoint>) -> AssignTeamRequest {
    AssignTeamRequest {
        request_id: relay_tests::unique_name("assign"),
        incident_id: relay_tests::unique_name("incident"),
        region: "north".into(),
        location,
        priority: 3,
        cad_system: "cad-bad-input".into(),
        ..AssignTeamRequest::default()
    }
}

fn search(
    location: Option<GeoPoint>,
    radius_meters: f64,
    open_at: Option<Timestamp>,
) -> SearchServicesRequest {
    SearchServicesRequest {
        location,
        radius_meters,
        open_at,
        ..SearchServicesRequest::default()
    }
}

fn capacity(as_of_time: Option<Timestamp>) -> UpdateCapacityRequest {
    UpdateCapacityRequest {
        request_id: relay_tests::unique_name("capacity"),
        service_id: "service-1".into(),
        location_id: "location-1".into(),
        available: 1,
        total: 2,
        as_of_time,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_coordinates_and_out_of_range_timestamps_are_refused_and_write_nothing() {
    let suite = Suite::start(&[]).await;
    let mut availability = AvailabilityServiceClient::connect(suite.availability.endpoint())
        .await
        .expect("availability");
    let mut intake = IntakeServiceClient::connect(suite.intake.endpoint())
        .await
        .expect("intake");
    let mut routing = RoutingServiceClient::connect(suite.routing.endpoint())
        .await
        .expect("routing");
    let mut directory = DirectoryServiceClient::connect(suite.directory.endpoint())
        .await
        .expect("directory");
    let before = footprint(&suite).await;
    let (lat, lon) = HERE;
    let mut results: Vec<(String, &str, Result<(), Status>)> = Vec::new();
    macro_rules! case {
        ($what:expr, $field:expr, $call:expr) => {
            results.push(($what.to_string(), $field, $call.await.map(drop)));
        };
    }
    for (name, bad) in [
        ("NaN", f64::NAN),
        ("+inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ] {
        case!(
            format!("ReportLocation latitude {name}"),
            "location",
            availability.report_location(report(at(bad, lon), now()))
        );
        case!(
            format!("ReportLocation longitude {name}"),
            "location",
            availability.report_location(report(at(lat, bad), now()))
        );
        case!(
            format!("FindAvailableTeams latitude {name}"),
            "location",
            availability.find_available_teams(find(at(bad, lon), 1000.0))
        );
        case!(
            format!("FindAvailableTeams radius {name}"),
            "radius_meters",
            availability.find_available_teams(find(at(lat, lon), bad))
        );
        case!(
            format!("SubmitIncident latitude {name}"),
            "location",
            intake.submit_incident(submit(at(bad, lon), now()))
        );
        case!(
            format!("SubmitIncident longitude {name}"),
            "location",
            intake.submit_incident(submit(at(lat, bad), now()))
        );
        case!(
            format!("UpdateIncident latitude {name}"),
            "location",
            intake.update_incident(UpdateIncidentRequest {
                request_id: relay_tests::unique_name("update"),
                incident_id: relay_tests::unique_name("incident"),
                location: at(bad, lon),
                ..UpdateIncidentRequest::default()
            })
        );
        case!(
            format!("AssignTeam latitude {name}"),
            "location",
            routing.assign_team(assign(at(bad, lon)))
        );
        case!(
            format!("AssignTeam longitude {name}"),
            "location",
            routing.assign_team(assign(at(lat, bad)))
        );
        case!(
            format!("SearchServices latitude {name}"),
            "location",
            directory.search_services(search(at(bad, lon), 1000.0, None))
        );
        case!(
            format!("SearchServices radius {name}"),
            "radius_meters",
            directory.search_services(search(at(lat, lon), bad, None))
        );
    }
    for (name, bad) in [("year 10000", far_future()), ("nanos 1e9", bad_nanos())] {
        case!(
            format!("ReportLocation recorded_at {name}"),
            "recorded_at",
            availability.report_location(report(at(lat, lon), bad))
        );
        case!(
            format!("UpsertTeam shift_ends_at {name}"),
            "shift_ends_at",
            availability.upsert_team(UpsertTeamRequest {
                request_id: relay_tests::unique_name("upsert"),
                team_id: "team-1".into(),
                display_name: "Team 1".into(),
                region: "north".into(),
                shift_ends_at: bad,
                ..UpsertTeamRequest::default()
            })
        );
        case!(
            format!("SubmitIncident received_at {name}"),
            "received_at",
            intake.submit_incident(submit(at(lat, lon), bad))
        );
        case!(
            format!("ListIncidents received_after {name}"),
            "received_after",
            intake.list_incidents(ListIncidentsRequest {
                received_after: bad,
                ..ListIncidentsRequest::default()
            })
        );
        case!(
            format!("ListIncidents received_before {name}"),
            "received_before",
            intake.list_incidents(ListIncidentsRequest {
                received_before: bad,
                ..ListIncidentsRequest::default()
            })
        );
        case!(
            format!("SearchServices open_at {name}"),
            "open_at",
            directory.search_services(search(at(lat, lon), 1000.0, bad))
        );
        case!(
            format!("UpdateCapacity as_of_time {name}"),
            "as_of_time",
            directory.update_capacity(capacity(bad))
        );
    }
    let mut failures = Vec::new();
    for (what, field, result) in &results {
        match result {
            Err(status) if status.code() == Code::InvalidArgument => {
                let fields = violated_fields(status);
                if !fields
                    .iter()
                    .any(|f| f == field || f.starts_with(&format!("{field}.")))
                {
                    failures.push(format!(
                        "{what}: INVALID_ARGUMENT names {fields:?}, not {field}"
                    ));
                }
            }
            other => failures.push(format!("{what}: {other:?}")),
        }
    }
    let after = footprint(&suite).await;
    eprintln!("{} cases, {} wrong", results.len(), failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(before, after, "rows or keys appeared");
    suite.clean_up().await;
}
