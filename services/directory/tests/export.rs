//! `relay directory export`: the package it writes is HSDS 3.0 (checked against the
//! specification's own JSON Schemas and descriptor in `../shared/hsds`), and importing it into
//! an empty directory gives every service back as GetService returned it. Both backends.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use common::{Kind, backend, get, shared_hsds, start};
use relay_directory::{
    export::export,
    import::{ImportOptions, import},
    store::{DirectoryStore, Dump, Row},
};
use relay_proto::directory::{Service, UpdateCapacityRequest};
use serde_json::Value;

/// The HSDS 3.1 draft's service_capacity and unit columns (openreferral/specification,
/// `schema/service_capacity.json` and `schema/unit.json`), which 3.0 has no schema for.
const HSDS_31_COLUMNS: &[(&str, &[&str])] = &[
    (
        "service_capacity",
        &[
            "id",
            "service_id",
            "unit_id",
            "available",
            "maximum",
            "description",
            "updated",
        ],
    ),
    ("unit", &["id", "name", "scheme", "identifier", "uri"]),
];

/// Resolves the schemas' relative `$ref`s (`contact.json`) to the files beside them.
struct SchemaFiles(PathBuf);

impl jsonschema::Retrieve for SchemaFiles {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        Ok(serde_json::from_slice(&std::fs::read(self.0.join(name))?)?)
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every way the package in `dir` departs from HSDS 3.0 (empty: none).
///
/// - The descriptor is a tabular data package; each resource that is an HSDS 3.0 table has
///   every field the 3.0 descriptor marks required, and each of its fields is a 3.0 field of
///   the same type, or says it is a Relay extension.
/// - Tables that are not in 3.0 are the 3.1 draft's capacity tables, say so, and use its
///   column names.
/// - Each CSV's header is the descriptor's fields, in order.
/// - Each row, as a JSON object (an empty cell is a missing value, as in Frictionless;
///   `number` fields as numbers), validates against the 3.0 JSON Schema of its table, with
///   formats checked (email, uri, date-time) except `uuid`: Relay keeps the ids of the
///   package it imported, and HSDS 1.x ids are not UUIDs. The columns the schema lists as
///   `tabular_required` are filled.
fn hsds_problems(dir: &Path) -> Vec<String> {
    let reference_dir = shared_hsds();
    let schemas = reference_dir.join("schema");
    let reference = read_json(&reference_dir.join("datapackage.json"));
    let reference: HashMap<String, &Value> = reference["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                &r["schema"]["fields"],
            )
        })
        .collect();
    let descriptor = read_json(&dir.join("datapackage.json"));
    let mut problems = Vec::new();
    if descriptor["profile"] != "tabular-data-package" {
        problems.push(format!("descriptor profile {}", descriptor["profile"]));
    }
    let resources = descriptor["resources"].as_array().unwrap();
    for resource in resources {
        let name = resource["name"].as_str().unwrap();
        let fields: Vec<(&str, &str, bool)> = resource["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let extension = f["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("Relay extension"));
                (
                    f["name"].as_str().unwrap(),
                    f["type"].as_str().unwrap(),
                    extension,
                )
            })
            .collect();
        let file = dir.join(resource["path"].as_str().unwrap());
        let mut csv = csv::Reader::from_path(&file).unwrap();
        let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
        let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
        if header != names {
            problems.push(format!(
                "{name}: header {header:?} is not the descriptor's {names:?}"
            ));
        }
        let Some(reference_fields) = reference.get(name) else {
            match HSDS_31_COLUMNS.iter().find(|(table, _)| *table == name) {
                Some((_, columns)) => {
                    if !resource["description"]
                        .as_str()
                        .is_some_and(|d| d.contains("HSDS 3.1 draft"))
                    {
                        problems.push(format!(
                            "{name}: does not say it is an HSDS 3.1 draft table"
                        ));
                    }
                    for (field, _, extension) in &fields {
                        if !columns.contains(field) && !extension {
                            problems.push(format!("{name}.{field}: not an HSDS 3.1 draft column"));
                        }
                    }
                }
                None => problems.push(format!("{name}: not an HSDS table")),
            }
            continue;
        };
        let reference_fields: HashMap<&str, &Value> = reference_fields
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f))
            .collect();
        for (field, kind, extension) in &fields {
            match reference_fields.get(field) {
                Some(f) if f["type"] != *kind => problems.push(format!(
                    "{name}.{field}: type {kind}, HSDS 3.0 says {}",
                    f["type"]
                )),
                Some(_) => {}
                None if *extension => {}
                None => problems.push(format!("{name}.{field}: not an HSDS 3.0 field")),
            }
        }
        for (field, f) in &reference_fields {
            if f["constraints"]["required"] == true && !names.contains(field) {
                problems.push(format!("{name}.{field}: required by HSDS 3.0 but missing"));
            }
        }
        let schema = read_json(&schemas.join(format!("{name}.json")));
        let validator = jsonschema::options()
            .with_base_uri("https://hsds.invalid/schema/")
            .with_retriever(SchemaFiles(schemas.clone()))
            .should_validate_formats(true)
            .with_format("uuid", |_: &str| true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema {name}.json: {e}"));
        let tabular_required: Vec<&str> = schema["tabular_required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (index, record) in csv.records().enumerate() {
            let record = record.unwrap();
            let line = index + 2;
            let mut object = serde_json::Map::new();
            for ((field, kind, _), cell) in fields.iter().zip(record.iter()) {
                if cell.is_empty() {
                    continue;
                }
                let value = if *kind == "number" {
                    match cell.parse::<f64>() {
                        Ok(n) => serde_json::json!(n),
                        Err(_) => {
                            problems
                                .push(format!("{name}:{line}: {field} `{cell}` is not a number"));
                            continue;
                        }
                    }
                } else {
                    Value::String(cell.to_owned())
                };
                object.insert((*field).to_owned(), value);
            }
            for field in &tabular_required {
                if !object.contains_key(*field) {
                    problems.push(format!(
                        "{name}:{line}: {field} is required in tabular form"
                    ));
                }
            }
            let object = Value::Object(object);
            for error in validator.iter_errors(&object) {
                problems.push(format!(
                    "{name}:{line}: {error} at {}",
                    error.instance_path()
                ));
            }
        }
    }
    problems
}

async fn import_into(
    url: &str,
    path: &Path,
    time_zone: &str,
) -> relay_directory::import::ImportReport {
    let backend = backend(url).await;
    let options = ImportOptions {
        default_time_zone: time_zone.into(),
    };
    with_store!(backend, |store| import(&store, path, &options, &mut |_| {})
        .await
        .unwrap())
}

async fn service_ids(url: &str) -> Vec<String> {
    let backend = backend(url).await;
    let rows = with_store!(backend, |store| store.dump(Dump::Services).await.unwrap());
    rows.into_iter()
        .filter_map(|row| match row {
            Row::Service(service, _) => Some(service.id),
            _ => None,
        })
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// What GetService answers with the server-assigned field left out: `create_time`, the
/// time the service was first stored (an import sets it to the time of the import).
fn comparable(mut service: Service) -> Service {
    service.create_time = None;
    service
}

/// Imports the shared HSDS 3.0 examples, a 211's HSDS 1.1 package and a 2.0 one, reports capacity, exports
/// to a folder and a zip (checked against HSDS 3.0), imports each into an empty directory, and
/// compares every service's GetService answer.
async fn export_is_hsds_3_and_imports_back_identically(kind: Kind) {
    let mut source = start(kind).await;
    import_into(&source.url, &shared_hsds(), "Europe/London").await;
    import_into(&source.url, &fixture("hsds-1.1-211"), "America/Los_Angeles").await;
    import_into(&source.url, &fixture("hsds-2.0"), "America/Chicago").await;
    let ids = service_ids(&source.url).await;
    for id in [
        "ac148810-d857-441c-9679-408f346de14b",
        "svc-shelter",
        "svc-pantry",
        "svc-crisis",
    ] {
        assert!(ids.contains(&id.to_owned()), "{id} was imported: {ids:?}");
    }
    assert!(ids.len() >= 5, "the 2.0 package was imported: {ids:?}");
    // Live capacity of one location, which HSDS 3.0 has no place for.
    let shelter = get(&mut source, "svc-shelter").await;
    let location_id = shelter.locations[0].location_id.clone();
    source
        .client
        .update_capacity(UpdateCapacityRequest {
            request_id: "cap-1".into(),
            service_id: "svc-shelter".into(),
            location_id: location_id.clone(),
            available: 7,
            total: 40,
            as_of_time: Some(common::ts("2026-11-29T18:30:00.250Z")),
        })
        .await
        .unwrap();
    let mut before = HashMap::new();
    for id in &ids {
        before.insert(id.clone(), comparable(get(&mut source, id).await));
    }
    assert_eq!(
        before["svc-shelter"].locations[0]
            .capacity
            .as_ref()
            .map(|c| c.available),
        Some(7)
    );

    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("export");
    let zip = out.path().join("export.zip");
    let backend = backend(&source.url).await;
    let report = with_store!(backend.clone(), |store| export(&store, &folder)
        .await
        .unwrap());
    with_store!(backend, |store| export(&store, &zip).await.unwrap());
    let rows = |file: &str| report.files.iter().find(|f| f.0 == file).unwrap().1;
    assert_eq!(rows("services.csv"), ids.len() as u64);
    assert_eq!(rows("service_capacity.csv"), 1);

    let problems = hsds_problems(&folder);
    assert!(
        problems.is_empty(),
        "not HSDS 3.0:\n{}",
        problems.join("\n")
    );

    for package in [&folder, &zip] {
        let mut target = start(kind).await;
        let report = import_into(&target.url, package, "UTC").await;
        assert_eq!(report.rejected, 0, "{:?}", report.rejections);
        let mut after_ids = service_ids(&target.url).await;
        let mut expected_ids = ids.clone();
        after_ids.sort();
        expected_ids.sort();
        assert_eq!(after_ids, expected_ids);
        for id in &ids {
            let after = comparable(get(&mut target, id).await);
            assert_eq!(
                after,
                before[id],
                "service {id} after export and import of {}",
                package.display()
            );
        }
    }
}

both!(export_is_hsds_3_and_imports_back_identically);
