//! Importing HSDS tabular data packages: the specification's own 3.0 examples, a 1.x/2.0
//! package written here, a zipped package, re-import and all-or-nothing, on both backends.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::path::{Path, PathBuf};

use common::{
    Kind, backend, database, get, open_at, search_ids, shared_hsds, start_on, ts, zip_folder,
};
use relay_directory::import::{FileSummary, ImportOptions, ImportReport, import};
use relay_proto::directory::{GetServiceRequest, SearchServicesRequest};

async fn run_import(
    url: &str,
    path: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, relay_directory::import::ImportError> {
    let backend = backend(url).await;
    let mut calls = 0_u64;
    let result = with_store!(backend, |store| import(&store, path, options, &mut |_| {
        calls += 1
    })
    .await);
    if result.is_ok() {
        assert!(calls > 0, "progress was reported");
    }
    result
}

async fn shared_examples_import_with_bad_coordinates_reported(kind: Kind) {
    let (url, db, dir) = database(kind).await;
    let options = ImportOptions {
        default_time_zone: "Europe/London".into(),
    };
    let report = run_import(&url, &shared_hsds(), &options).await.unwrap();
    // The one location at latitude 100, longitude 101 is reported, with file and line.
    let coordinates: Vec<_> = report
        .rejections
        .iter()
        .filter(|r| r.file == "locations.csv")
        .collect();
    assert_eq!(coordinates.len(), 1, "{:?}", report.rejections);
    assert_eq!(coordinates[0].line, 2);
    assert!(
        coordinates[0].reason.contains("latitude `100`"),
        "{}",
        coordinates[0].reason
    );
    // Longitude 101 is in range; only the latitude is named.
    assert!(
        !coordinates[0].reason.contains("longitude"),
        "{}",
        coordinates[0].reason
    );
    let stored = |file: &str| {
        report
            .files
            .iter()
            .find(|f| f.file == file)
            .map_or(0, |f| f.stored)
    };
    for file in [
        "organizations.csv",
        "services.csv",
        "locations.csv",
        "addresses.csv",
        "service_at_location.csv",
        "phones.csv",
        "languages.csv",
        "schedules.csv",
        "taxonomy_terms.csv",
    ] {
        assert_eq!(stored(file), 1, "{file}: {:?}", report.files);
    }
    // Re-import: the same counts, nothing duplicated.
    let again = run_import(&url, &shared_hsds(), &options).await.unwrap();
    assert_eq!(again.stored, report.stored);
    let mut h = start_on(kind, url, db, dir).await;
    let service = h
        .client
        .get_service(GetServiceRequest {
            service_id: "ac148810-d857-441c-9679-408f346de14b".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(service.name, "Community Counselling");
    assert_eq!(
        service.organization.as_ref().unwrap().name,
        "Example Organization Inc."
    );
    assert_eq!(service.phones.len(), 1);
    assert_eq!(service.languages, ["ur"]);
    assert_eq!(service.locations.len(), 1);
    let location = &service.locations[0];
    assert!(
        location.point.is_none(),
        "the impossible coordinates were dropped"
    );
    assert_eq!(
        location.address.as_ref().unwrap().address_1,
        "1-30 Main Street"
    );
    // The schedule's timezone "3" is a UTC offset: Etc/GMT-3 (UTC+3).
    assert_eq!(location.time_zone, "Etc/GMT-3");
    assert_eq!(location.schedules.len(), 1);
    assert_eq!(location.schedules[0].byday, "TH,FR");
    assert_eq!(location.schedules[0].opens_at, "10:00");
    let found = h
        .client
        .search_services(SearchServicesRequest {
            query: "counselling".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.results.len(), 1);
    // Valid only on 2005-01-01 (a Saturday): never open on a Thursday in 2026.
    let open = h
        .client
        .search_services(SearchServicesRequest {
            open_at: Some(ts("2026-11-26T10:00:00Z")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(open.results.is_empty());
}

fn write(dir: &Path, name: &str, body: &str) {
    write_bytes(dir, name, body.as_bytes());
}

fn write_bytes(dir: &Path, name: &str, body: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

const ORGANIZATIONS: &str = "id,name\norg-1,Lane County 211\n";
const SERVICES: &str = "id,organization_id,name,description,status\n\
    svc-a,org-1,Night Shelter,Overnight beds,active\n\
    svc-b,org-1,Food Pantry,Groceries,active\n";
const LOCATIONS: &str = "id,name,latitude,longitude\n\
    loc-a,Downtown,44.0521,-123.0868\n\
    loc-b,Westside,44.0490,-123.1300\n";

/// Two services of one organization at two locations, linked through `sal_table` (the
/// name of that table differs between HSDS versions), in `dir`.
fn two_services(dir: &Path, sal_table: &str) {
    write(dir, "organizations.csv", ORGANIZATIONS);
    write(dir, "services.csv", SERVICES);
    write(dir, "locations.csv", LOCATIONS);
    write(
        dir,
        sal_table,
        "id,service_id,location_id,description\nsal-a,svc-a,loc-a,\nsal-b,svc-b,loc-b,\n",
    );
}

/// Defect 1 (issue 13): a package's descriptor says where its CSVs are (`data/...`); the
/// extracted folder was refused as "not an HSDS tabular data package", and in a zip a
/// resource whose file is not named after its table was not read.
async fn descriptor_paths_are_followed_in_a_folder_and_a_zip(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("package");
    write(
        &package,
        "datapackage.json",
        r#"{"name": "x", "resources": [
            {"name": "organization", "path": "data/organizations.csv"},
            {"name": "service", "path": "data/services.csv"},
            {"name": "location", "path": "data/locations.csv"},
            {"name": "service_at_location", "path": "data/service_at_location.csv"}
        ]}"#,
    );
    two_services(&package.join("data"), "service_at_location.csv");
    let options = ImportOptions::default();
    let report = run_import(&url, &package, &options).await.unwrap();
    assert_eq!(report.rejections, []);
    // The same package zipped, with the services file under a name of its own.
    let zipped = dir.path().join("zipped");
    write(
        &zipped,
        "datapackage.json",
        r#"{"name": "x", "resources": [
            {"name": "organization", "path": "data/organizations.csv"},
            {"name": "service", "path": "data/export-services-2026.csv"}
        ]}"#,
    );
    write(&zipped, "data/organizations.csv", ORGANIZATIONS);
    write(
        &zipped,
        "data/export-services-2026.csv",
        "id,organization_id,name\nsvc-zipped,org-1,Zipped Service\n",
    );
    let zip_path = dir.path().join("package.zip");
    zip_folder(&zipped, &zip_path, "export");
    let report = run_import(&url, &zip_path, &options).await.unwrap();
    assert_eq!(report.rejections, []);
    let mut h = start_on(kind, url, db, tmp).await;
    let a = get(&mut h, "svc-a").await;
    assert_eq!(a.locations.len(), 1, "{a:?}");
    assert_eq!(a.locations[0].location_id, "loc-a");
    assert_eq!(get(&mut h, "svc-zipped").await.name, "Zipped Service");
}

/// A descriptor that does not match its package fails the import as a whole, naming the
/// resource, and changes nothing; resources Relay does not use may be missing.
async fn a_descriptor_that_does_not_match_its_package_changes_nothing(kind: Kind) {
    let (url, _db, _tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    two_services(&p.join("data"), "services_at_location.csv");
    let resources = |extra: &str| {
        format!(
            r#"{{"resources": [
                {{"name": "organization", "path": "data/organizations.csv"}},
                {{"name": "service", "path": "data/services.csv"}},
                {{"name": "location", "path": "data/locations.csv"}},
                {{"name": "service_at_location", "path": "data/services_at_location.csv"}},
                {extra}
            ]}}"#
        )
    };
    for (descriptor, error) in [
        (
            resources(r#"{"name": "regular_schedule", "path": "data/regular_schedules.csv"}"#),
            "datapackage.json: resource `regular_schedule` file `data/regular_schedules.csv` is not in the package",
        ),
        (
            resources(r#"{"name": "phone", "path": "../phones.csv"}"#),
            "datapackage.json: resource `phone` path `../phones.csv` points outside the package",
        ),
        (
            resources(r#"{"name": "phone", "path": "https://211.example.org/phones.csv"}"#),
            "a URL; this importer reads only files inside the package",
        ),
        (
            resources(r#"{"name": "phone", "path": ["data/phones-1.csv", "data/phones-2.csv"]}"#),
            "resource `phone` is split over several files",
        ),
        (
            "{\"resources\": [".to_owned(),
            "datapackage.json: not valid JSON",
        ),
        ("{}".to_owned(), "datapackage.json: has no `resources` list"),
    ] {
        write(p, "datapackage.json", &descriptor);
        let failed = run_import(&url, p, &ImportOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(failed.contains(error), "{failed}");
    }
    let backend = backend(&url).await;
    let services = with_store!(backend, |store| {
        relay_directory::store::DirectoryStore::get_services(&store, &["svc-a".to_owned()])
            .await
            .unwrap()
    });
    assert!(services.is_empty(), "a failed import changed nothing");
    // A table Relay does not use may be named and missing (templates list every table), and a
    // resource that is no HSDS table is skipped; both are noted.
    write(
        p,
        "datapackage.json",
        &resources(
            r#"{"name": "contact", "path": "data/contacts.csv"},
               {"name": "board_minutes", "path": "data/minutes.csv"}"#,
        ),
    );
    let report = run_import(&url, p, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.stored, 7);
    assert_eq!(report.notes.len(), 2, "{:?}", report.notes);
    assert!(report.notes[0].contains("`contact`"));
    assert!(report.notes[1].contains("is not an HSDS table"));
}

/// Defect 2 (issue 13): the 1.x table `services_at_location.csv` (and 2.0's
/// `service_attributes.csv`) were not read, so no service had a location.
async fn every_hsds_table_name_is_read(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    two_services(p, "services_at_location.csv");
    write(
        p,
        "taxonomy_terms.csv",
        "id,term,parent_id,taxonomy\nBH,Housing,,AIRS\nBH-1800,Shelter,BH,AIRS\n",
    );
    write(
        p,
        "service_attributes.csv",
        "id,service_id,taxonomy_term_id\nsa-1,svc-a,BH-1800\n",
    );
    write(
        p,
        "regular_schedules.csv",
        "id,service_at_location_id,weekday,opens_at,closes_at\nrs-1,sal-a,1,9:00am,5:00pm\n",
    );
    let report = run_import(&url, p, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.rejections, []);
    let mut h = start_on(kind, url, db, tmp).await;
    let a = get(&mut h, "svc-a").await;
    assert_eq!(a.locations.len(), 1, "{a:?}");
    assert_eq!(a.locations[0].schedules.len(), 1);
    assert_eq!(a.taxonomy_terms.len(), 1, "{a:?}");
    assert_eq!(a.taxonomy_terms[0].name, "Shelter");
    assert_eq!(get(&mut h, "svc-b").await.locations[0].location_id, "loc-b");
}

/// Defect 3 (issue 13): `regular_schedules.csv` rows without an `id` were all rejected ("id
/// is missing"). Nothing refers to a schedule row, so each gets an id derived from what it
/// says: importing again, even with the rows in another order, adds nothing.
async fn schedule_rows_without_an_id_get_a_stable_one(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    two_services(p, "service_at_location.csv");
    let rows = [
        ",,sal-a,Monday,8:00pm,8:00am",
        ",,sal-a,Tuesday,8:00pm,8:00am",
        "svc-b,loc-b,,Wednesday,9:00am,12:00pm",
        // The same hours twice is one schedule.
        "svc-b,loc-b,,Wednesday,9:00am,12:00pm",
    ];
    let header = "service_id,location_id,service_at_location_id,weekday,opens_at,closes_at\n";
    write(
        p,
        "regular_schedules.csv",
        &format!("{header}{}\n", rows.join("\n")),
    );
    let options = ImportOptions::default();
    let first = run_import(&url, p, &options).await.unwrap();
    assert_eq!(first.rejections, []);
    // Again, with the rows reversed.
    let reversed: Vec<_> = rows.iter().rev().copied().collect();
    write(
        p,
        "regular_schedules.csv",
        &format!("{header}{}\n", reversed.join("\n")),
    );
    let again = run_import(&url, p, &options).await.unwrap();
    assert_eq!(again.stored, first.stored);
    let mut h = start_on(kind, url, db, tmp).await;
    let a = get(&mut h, "svc-a").await;
    let mut days: Vec<_> = a.locations[0]
        .schedules
        .iter()
        .map(|s| s.byday.clone())
        .collect();
    days.sort();
    assert_eq!(days, ["MO", "TU"]);
    assert_eq!(get(&mut h, "svc-b").await.locations[0].schedules.len(), 1);
    // Monday 2026-03-02 21:00 UTC: the shelter is open.
    assert_eq!(open_at(&mut h, "2026-03-02T21:00:00Z").await, ["svc-a"]);
}

/// Re-importing a package whose schedules changed leaves exactly the new ones: rows without
/// ids get ids derived from their contents, so the old hours' ids are simply absent from the
/// new package, and were kept (the service was open at both the old and the new hours).
/// Schedules of services and locations the package does not contain are left alone.
async fn a_re_import_replaces_the_schedules_of_the_services_it_contains(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    two_services(p, "service_at_location.csv");
    let header = "service_id,location_id,service_at_location_id,weekday,opens_at,closes_at\n";
    write(
        p,
        "regular_schedules.csv",
        &format!(
            "{header},,sal-a,Monday,8:00pm,11:00pm\n,loc-b,,Tuesday,9:00am,12:00pm\n\
             svc-b,,,Friday,9:00am,5:00pm\n"
        ),
    );
    let options = ImportOptions::default();
    assert_eq!(run_import(&url, p, &options).await.unwrap().rejections, []);
    // Another package holds only svc-c (at loc-c); its hours must survive the re-import.
    let other = tempfile::tempdir().unwrap();
    let o = other.path();
    write(o, "organizations.csv", ORGANIZATIONS);
    write(
        o,
        "services.csv",
        "id,organization_id,name,description,status\nsvc-c,org-1,Clinic,Care,active\n",
    );
    write(
        o,
        "locations.csv",
        "id,name,latitude,longitude\nloc-c,East,44.05,-123.0\n",
    );
    write(
        o,
        "service_at_location.csv",
        "id,service_id,location_id\nsal-c,svc-c,loc-c\n",
    );
    write(
        o,
        "regular_schedules.csv",
        &format!("{header}svc-c,loc-c,,Sunday,10:00am,2:00pm\n"),
    );
    assert_eq!(run_import(&url, o, &options).await.unwrap().rejections, []);
    // The first package again: svc-a moved to Wednesday, loc-b's own hours and svc-b's are gone.
    write(
        p,
        "regular_schedules.csv",
        &format!("{header},,sal-a,Wednesday,8:00pm,11:00pm\n"),
    );
    assert_eq!(run_import(&url, p, &options).await.unwrap().rejections, []);
    let mut h = start_on(kind, url, db, tmp).await;
    let days = |location: &relay_proto::directory::ServiceLocation| {
        location
            .schedules
            .iter()
            .map(|s| s.byday.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(days(&get(&mut h, "svc-a").await.locations[0]), ["WE"]);
    assert_eq!(
        days(&get(&mut h, "svc-b").await.locations[0]),
        Vec::<String>::new()
    );
    assert_eq!(days(&get(&mut h, "svc-c").await.locations[0]), ["SU"]);
    // Monday 2026-03-02 21:30 (the locations' zone is UTC): no longer open; Wednesday is.
    assert_eq!(
        open_at(&mut h, "2026-03-02T21:30:00Z").await,
        Vec::<String>::new()
    );
    assert_eq!(open_at(&mut h, "2026-03-04T21:30:00Z").await, ["svc-a"]);
}

/// The same class of fault as defect 3 in the other tables: a link of a service to a
/// location and a phone number are referred to by nothing Relay keeps, and exports leave
/// their ids out; they get derived ids too, stable across imports.
async fn links_and_phones_without_ids_are_kept(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write(p, "organizations.csv", ORGANIZATIONS);
    write(p, "services.csv", SERVICES);
    write(p, "locations.csv", LOCATIONS);
    write(
        p,
        "services_at_location.csv",
        "service_id,location_id\nsvc-a,loc-a\nsvc-b,loc-b\n",
    );
    write(
        p,
        "phones.csv",
        "id,service_id,number,type\n,svc-a,541-555-0100,voice\n,svc-a,541-555-0101,fax\n",
    );
    write(
        p,
        "regular_schedules.csv",
        "service_id,location_id,weekday,opens_at,closes_at\nsvc-a,loc-a,Monday,9am,5pm\n",
    );
    let first = run_import(&url, p, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(first.rejections, []);
    let again = run_import(&url, p, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(again.stored, first.stored);
    let mut h = start_on(kind, url, db, tmp).await;
    let a = get(&mut h, "svc-a").await;
    assert_eq!(a.locations.len(), 1);
    assert_eq!(a.locations[0].schedules.len(), 1);
    let mut numbers: Vec<_> = a.phones.iter().map(|p| p.number.clone()).collect();
    numbers.sort();
    assert_eq!(numbers, ["541-555-0100", "541-555-0101"]);
    assert_eq!(get(&mut h, "svc-b").await.locations[0].location_id, "loc-b");
}

/// Defect 4 (issue 13): what real exports do. A byte order mark before a quoted header,
/// CRLF line ends, a quoted newline inside a field, optional columns left out, extra
/// columns, empty strings for nulls, weekdays as names, abbreviations or numbers, times
/// such as `0900`, `09:00:00`, `24:00`, and `closed`.
async fn what_real_exports_do_is_read(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let crlf = |text: &str| text.replace('\n', "\r\n");
    write(p, "organizations.csv", ORGANIZATIONS);
    let mut services = b"\xEF\xBB\xBF".to_vec();
    services.extend(
        crlf(
            "\"id\",\"organization_id\",\"name\",\"description\",\"status\",\"legacy_code\"\n\
             svc-a,org-1,Night Shelter,\"Beds.\nBring ID.\",,X-1\n\
             svc-b,org-1,Food Pantry,,Active,X-2\n\
             svc-c,org-1,,No name,active,X-3\n",
        )
        .into_bytes(),
    );
    write_bytes(p, "services.csv", &services);
    // No name column at all, an extra column, an empty longitude and latitude.
    write(
        p,
        "locations.csv",
        "id,latitude,longitude,county\nloc-a,44.0521,-123.0868,Lane\nloc-b,,,Lane\n",
    );
    write(
        p,
        "service_at_location.csv",
        "id,service_id,location_id\nsal-a,svc-a,loc-a\nsal-b,svc-b,loc-b\n",
    );
    write(
        p,
        "regular_schedules.csv",
        &crlf(
            "id,service_at_location_id,weekday,opens_at,closes_at,notes\n\
             rs-1,sal-a,mon,2000,0800,\"ring\nthe bell\"\n\
             rs-2,sal-a,TUESDAY,20:00:00,08:00:00,\n\
             rs-3,sal-b,1,09:00,24:00,\n\
             rs-4,sal-b,6,closed,closed,\n\
             rs-5,sal-b,7,,,\n\
             rs-6,sal-b,Funday,9am,5pm,\n",
        ),
    );
    let report = run_import(&url, p, &ImportOptions::default())
        .await
        .unwrap();
    let lines: Vec<_> = report
        .rejections
        .iter()
        .map(|r| (r.file.as_str(), r.line))
        .collect();
    // The quoted newlines move the lines of later rows down; the line is where a row starts.
    assert_eq!(
        lines,
        [("services.csv", 5), ("regular_schedules.csv", 8)],
        "{:#?}",
        report.rejections
    );
    assert!(report.rejections[0].reason.contains("name is missing"));
    assert!(report.rejections[1].reason.contains("Funday"));
    // Each rejection names its table and column.
    let named: Vec<_> = report
        .rejections
        .iter()
        .map(|r| (r.table.as_str(), r.column.as_str()))
        .collect();
    assert_eq!(
        named,
        [("services", "name"), ("regular_schedules", "weekday")]
    );
    assert_eq!(
        report.rejections[1].to_string(),
        "regular_schedules.csv:8: table regular_schedules, column weekday: \
         weekday `Funday` is not a day of the week (Monday, mon, 1..7)"
    );
    let summary = report
        .files
        .iter()
        .find(|f| f.file == "regular_schedules.csv")
        .unwrap();
    assert_eq!(
        (
            summary.rows,
            summary.stored,
            summary.rejected,
            summary.ignored
        ),
        (6, 3, 1, 2),
        "closed and empty hours are ignored, not rejected"
    );
    let mut h = start_on(kind, url, db, tmp).await;
    let a = get(&mut h, "svc-a").await;
    assert_eq!(a.description, "Beds.\r\nBring ID.");
    let hours: Vec<_> = a.locations[0]
        .schedules
        .iter()
        .map(|s| format!("{} {}-{}", s.byday, s.opens_at, s.closes_at))
        .collect();
    assert_eq!(hours, ["MO 20:00-08:00", "TU 20:00-08:00"]);
    let b = get(&mut h, "svc-b").await;
    assert!(b.locations[0].point.is_none());
    assert_eq!(b.locations[0].schedules.len(), 1);
    assert_eq!(b.locations[0].schedules[0].closes_at, "24:00");
    // Monday 23:30 UTC: the pantry (open until midnight) and the shelter are open;
    // Saturday noon: neither.
    assert_eq!(
        open_at(&mut h, "2026-03-02T23:30:00Z").await,
        ["svc-a", "svc-b"]
    );
    assert!(open_at(&mut h, "2026-03-07T12:00:00Z").await.is_empty());
}

/// A package in the HSDS 1.x/2.0 layout, as many 211s publish it.
fn legacy_package(dir: &Path) {
    write(
        dir,
        "organizations.csv",
        "id,name,description,url,email\norg-1,Lane County 211,Referral line,https://211.example.org,info@211.example.org\n",
    );
    write(
        dir,
        "taxonomy.csv",
        "id,name,parent_id,parent_name,vocabulary\nBH,Basic Needs,,,AIRS\nBH-1800,Housing,BH,Basic Needs,AIRS\n",
    );
    write(
        dir,
        "services.csv",
        "id,organization_id,program_id,name,alternate_name,description,url,email,status,interpretation_services,application_process,wait_time,fees,accreditations,licenses\n\
         svc-shelter,org-1,,Night Shelter,,Overnight beds for adults,https://shelter.example.org,,active,,Walk in,,Free,,\n\
         svc-pantry,org-1,,Food Pantry,,Groceries weekly,,,,,,,,,\n\
         svc-orphan,org-missing,,Orphan Service,,No such organization,,,active,,,,,,\n\
         ,org-1,,No Id,,,,,active,,,,,,\n",
    );
    write(
        dir,
        "locations.csv",
        "id,organization_id,name,alternate_name,description,transportation,latitude,longitude\n\
         loc-1,org-1,Downtown,,,,44.0521,-123.0868\n\
         loc-2,org-1,Westside,,,,44.0490,-123.1300\n",
    );
    write(
        dir,
        "physical_addresses.csv",
        "id,location_id,attention,address_1,address_2,address_3,address_4,city,region,state_province,postal_code,country\n\
         pa-1,loc-1,,100 Main St,Suite 2,,,Eugene,,OR,97401,US\n\
         pa-2,loc-nowhere,,1 Nowhere,,,,Eugene,,OR,97401,US\n",
    );
    // The 1.x name of the table (3.0 calls it service_at_location).
    write(
        dir,
        "services_at_location.csv",
        "id,service_id,location_id,description\nsal-1,svc-shelter,loc-1,\nsal-2,svc-pantry,loc-2,\n",
    );
    write(
        dir,
        "services_taxonomy.csv",
        "id,service_id,taxonomy_id,taxonomy_detail\nst-1,svc-shelter,BH-1800,\nst-2,svc-pantry,BH,\n",
    );
    write(
        dir,
        "languages.csv",
        "id,service_id,location_id,language\nlang-1,svc-shelter,,Spanish\nlang-2,svc-shelter,,English\nlang-3,svc-pantry,,Klingon Dialect Nine\n",
    );
    write(
        dir,
        "phones.csv",
        "id,location_id,service_id,organization_id,contact_id,service_at_location_id,number,extension,type,language,description\nph-1,,svc-shelter,,,,541-555-0100,,voice,,Front desk\n",
    );
    write(
        dir,
        "regular_schedules.csv",
        "id,service_id,location_id,service_at_location_id,weekday,opens_at,closes_at\n\
         rs-1,,,sal-1,Friday,8:00pm,8:00am\n\
         rs-2,svc-pantry,loc-2,,1,9:00am,12:30 PM\n\
         rs-3,svc-pantry,loc-2,,Funday,9am,5pm\n\
         rs-4,svc-pantry,loc-2,,2,nine,5pm\n",
    );
}

async fn legacy_package_imports(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    legacy_package(dir.path());
    let options = ImportOptions {
        default_time_zone: "America/Los_Angeles".into(),
    };
    let report = run_import(&url, dir.path(), &options).await.unwrap();
    let lines: Vec<(String, u64)> = report
        .rejections
        .iter()
        .map(|r| (r.file.clone(), r.line))
        .collect();
    assert_eq!(
        lines,
        [
            ("services.csv".to_owned(), 4),
            ("services.csv".to_owned(), 5),
            ("physical_addresses.csv".to_owned(), 3),
            ("languages.csv".to_owned(), 4),
            ("regular_schedules.csv".to_owned(), 4),
            ("regular_schedules.csv".to_owned(), 5),
        ],
        "{:#?}",
        report.rejections
    );
    assert!(report.rejections[0].reason.contains("org-missing"));
    assert!(report.rejections[1].reason.contains("id is missing"));
    assert!(report.rejections[4].reason.contains("Funday"));
    assert!(report.rejections[5].reason.contains("nine"));
    // Importing twice changes nothing further.
    let again = run_import(&url, dir.path(), &options).await.unwrap();
    assert_eq!(again.stored, report.stored);
    let mut h = start_on(kind, url, db, tmp).await;
    let shelter = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc-shelter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(shelter.languages, ["es", "en"]);
    assert_eq!(shelter.taxonomy_terms[0].code, "BH-1800");
    assert_eq!(shelter.taxonomy_terms[0].parent_id, "BH");
    assert_eq!(shelter.phones.len(), 1);
    let location = &shelter.locations[0];
    assert_eq!(location.address.as_ref().unwrap().address_2, "Suite 2");
    assert_eq!(location.schedules[0].opens_at, "20:00");
    assert_eq!(location.schedules[0].closes_at, "08:00");
    assert_eq!(location.schedules[0].byday, "FR");
    let pantry = h
        .client
        .get_service(GetServiceRequest {
            service_id: "svc-pantry".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(
        pantry.status,
        relay_proto::directory::ServiceStatus::Active as i32,
        "1.x status may be empty"
    );
    assert_eq!(pantry.locations[0].schedules[0].closes_at, "12:30");
    // Friday 2026-03-06 23:00 PST: the shelter (overnight) is open; the pantry is not.
    let open = h
        .client
        .search_services(SearchServicesRequest {
            open_at: Some(ts("2026-03-07T07:00:00Z")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = open
        .results
        .iter()
        .map(|r| r.service.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids, ["svc-shelter"]);
    // The parent code BH matches both through the hierarchy.
    let basic = h
        .client
        .search_services(SearchServicesRequest {
            taxonomy_codes: vec!["BH".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(basic.results.len(), 2);
}

async fn zipped_package_imports_and_a_broken_one_changes_nothing(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    legacy_package(dir.path());
    // Zip it, inside a folder as 211 exports often are.
    let zip_path = dir.path().join("package.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "csv") {
                let name = format!("export/{}", path.file_name().unwrap().to_string_lossy());
                zip.start_file(name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                std::io::Write::write_all(&mut zip, &std::fs::read(&path).unwrap()).unwrap();
            }
        }
        zip.finish().unwrap();
    }
    // A broken copy: the last table is not valid UTF-8, so the import fails as a whole.
    let broken = tempfile::tempdir().unwrap();
    legacy_package(broken.path());
    std::fs::write(
        broken.path().join("regular_schedules.csv"),
        b"id,service_id,weekday,opens_at,closes_at\nrs-1,svc-pantry,\xff\xfe,9am,5pm\n",
    )
    .unwrap();
    let error = run_import(&url, broken.path(), &ImportOptions::default())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("regular_schedules.csv"),
        "{error}"
    );
    let report = run_import(&url, &zip_path, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.rejections.len(), 6);
    let mut h = start_on(kind, url, db, tmp).await;
    let all = h
        .client
        .search_services(SearchServicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.results.len(), 2);
    // Not a package at all.
    let empty = tempfile::tempdir().unwrap();
    let error = run_import(&h.url, empty.path(), &ImportOptions::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not an HSDS"), "{error}");
}

#[tokio::test]
async fn nothing_is_left_of_a_failed_import() {
    // A failed import leaves no trace, even on a database that already had data.
    for kind in [Kind::Postgres, Kind::Sqlite] {
        let (url, _db, _tmp) = database(kind).await;
        let broken = tempfile::tempdir().unwrap();
        legacy_package(broken.path());
        std::fs::write(
            broken.path().join("regular_schedules.csv"),
            b"id,weekday\n\xff,1\n",
        )
        .unwrap();
        assert!(
            run_import(&url, broken.path(), &ImportOptions::default())
                .await
                .is_err()
        );
        let backend = backend(&url).await;
        let services = with_store!(backend, |store| {
            relay_directory::store::DirectoryStore::get_services(
                &store,
                &["svc-shelter".to_owned()],
            )
            .await
            .unwrap()
        });
        assert!(services.is_empty(), "{kind:?}");
    }
}

/// A package of `tests/fixtures`.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture `name` as it is (a folder) and zipped inside a folder, as 211s publish both.
fn both_layouts(name: &str, dir: &Path) -> [PathBuf; 2] {
    let zip_path = dir.join(format!("{name}.zip"));
    zip_folder(&fixture(name), &zip_path, name);
    [fixture(name), zip_path]
}

fn summary<'a>(report: &'a ImportReport, file: &str) -> &'a FileSummary {
    report
        .files
        .iter()
        .find(|f| f.file.ends_with(file))
        .unwrap_or_else(|| panic!("{file} in {:#?}", report.files))
}

fn hours(location: &relay_proto::directory::ServiceLocation) -> Vec<String> {
    let mut hours: Vec<_> = location
        .schedules
        .iter()
        .map(|s| {
            format!(
                "{} {}-{} {}..{}",
                s.byday, s.opens_at, s.closes_at, s.valid_from, s.valid_to
            )
        })
        .collect();
    hours.sort();
    hours
}

/// An HSDS 1.1 package as a US 211 publishes it (`tests/fixtures/hsds-1.1-211`): a
/// descriptor with singular resource names, the CSVs in `data/`, a BOM, CRLF, quoted
/// newlines, schedule rows without ids, weekdays and times in every shape, tables Relay does
/// not model, and a resource the descriptor names but the package lacks. Extracted and
/// zipped, each on a database of its own, imported twice.
async fn hsds_1x_package_of_a_211_imports(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let options = ImportOptions {
        default_time_zone: "America/Los_Angeles".into(),
    };
    for package in both_layouts("hsds-1.1-211", dir.path()) {
        let (url, db, tmp) = database(kind).await;
        let report = run_import(&url, &package, &options).await.unwrap();
        let rejected: Vec<_> = report
            .rejections
            .iter()
            .map(|r| {
                (
                    r.file.rsplit('/').next().unwrap(),
                    r.line,
                    r.column.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rejected,
            [
                ("services.csv", 6, "organization_id"),
                ("regular_schedules.csv", 18, "weekday"),
                ("regular_schedules.csv", 19, "closes_at"),
            ],
            "{package:?}: {:#?}",
            report.rejections
        );
        assert!(report.rejections[0].reason.contains("org-nowhere"));
        assert_eq!(report.rejections[1].table, "regular_schedule");
        // Per table: rows read, imported, rejected, ignored.
        let counts = |file| {
            let f = summary(&report, file);
            (f.table.as_str(), f.rows, f.stored, f.rejected, f.ignored)
        };
        assert_eq!(
            counts("data/regular_schedules.csv"),
            ("regular_schedule", 18, 14, 2, 2)
        );
        assert_eq!(
            counts("data/services_at_location.csv"),
            ("service_at_location", 3, 3, 0, 0)
        );
        assert_eq!(counts("data/services.csv"), ("service", 4, 3, 1, 0));
        assert_eq!(
            counts("data/holiday_schedules.csv"),
            ("holiday_schedule", 2, 1, 0, 1)
        );
        assert_eq!(counts("data/eligibility.csv"), ("eligibility", 1, 0, 0, 1));
        assert_eq!(
            counts("data/postal_addresses.csv"),
            ("postal_address", 1, 0, 0, 1)
        );
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("contact") && n.contains("data/contacts.csv")),
            "{:?}",
            report.notes
        );
        let again = run_import(&url, &package, &options).await.unwrap();
        assert_eq!(again.stored, report.stored);
        assert_eq!(again.rejections, report.rejections);

        let mut h = start_on(kind, url, db, tmp).await;
        let shelter = get(&mut h, "svc-shelter").await;
        assert_eq!(
            shelter.organization.as_ref().unwrap().name,
            "St. Vincent de Paul of Lane County"
        );
        assert_eq!(shelter.languages, ["es", "en"]);
        assert_eq!(shelter.taxonomy_terms[0].code, "BH-1800.8500");
        assert_eq!(shelter.phones.len(), 1);
        assert_eq!(shelter.locations.len(), 1);
        let station = &shelter.locations[0];
        assert_eq!(station.location_id, "loc-station");
        assert_eq!(station.time_zone, "America/Los_Angeles");
        assert_eq!(
            station.address.as_ref().unwrap().address_1,
            "450 Highway 99 N"
        );
        assert_eq!(
            hours(station),
            [
                "FR 19:00-07:00 ..",
                "MO 19:00-07:00 ..",
                "TH 19:00-07:00 ..",
                "TU 19:00-07:00 ..",
                "WE 19:00-07:00 .."
            ]
        );
        let pantry = get(&mut h, "svc-pantry").await;
        assert_eq!(
            hours(&pantry.locations[0]),
            [
                "MO 09:00-12:00 ..",
                "MO,TU,WE,TH,FR,SA,SU 13:00-16:00 2026-12-23..2026-12-23",
                "WE 09:00-12:00 ..",
            ]
        );
        assert_eq!(
            pantry.locations[0].address.as_ref().unwrap().address_2,
            "Building B"
        );
        let crisis = get(&mut h, "svc-crisis").await;
        assert_eq!(crisis.locations[0].schedules.len(), 7);
        assert!(crisis.locations[0].point.is_none());
        // Monday 2026-03-02 20:00 PST: the shelter and the crisis line.
        assert_eq!(
            open_at(&mut h, "2026-03-03T04:00:00Z").await,
            ["svc-crisis", "svc-shelter"]
        );
        // Saturday 10:00 PST: the pantry says "closed", the shelter closed at 7.
        assert_eq!(
            open_at(&mut h, "2026-03-07T18:00:00Z").await,
            ["svc-crisis"]
        );
        // Wednesday 2026-12-23 14:00 PST: the pantry's holiday hours.
        assert_eq!(
            open_at(&mut h, "2026-12-23T22:00:00Z").await,
            ["svc-crisis", "svc-pantry"]
        );
        // Text, taxonomy and distance find what the 1.x tables link.
        let found = search_ids(
            &mut h,
            SearchServicesRequest {
                query: "overnight beds".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(found, ["svc-shelter"]);
        let basic_needs = search_ids(
            &mut h,
            SearchServicesRequest {
                taxonomy_codes: vec!["BD".into()],
                ..Default::default()
            },
        )
        .await;
        assert_eq!(basic_needs, ["svc-pantry", "svc-shelter"]);
        let near = search_ids(
            &mut h,
            SearchServicesRequest {
                location: Some(relay_proto::common::GeoPoint {
                    latitude: 44.0582,
                    longitude: -123.1103,
                }),
                radius_meters: 1000.0,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(near, ["svc-shelter"]);
    }
}

/// An HSDS 2.0 package (`tests/fixtures/hsds-2.0`): plural resource names, RRULE schedules
/// without ids and with a time zone, `service_attributes` and `other_attributes`, taxonomy
/// terms named by `term`. Extracted and zipped.
async fn hsds_2_package_imports(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    for package in both_layouts("hsds-2.0", dir.path()) {
        let (url, db, tmp) = database(kind).await;
        let report = run_import(&url, &package, &ImportOptions::default())
            .await
            .unwrap();
        assert_eq!(report.rejections, [], "{package:?}");
        assert_eq!(report.notes, Vec::<String>::new());
        let other = summary(&report, "other_attributes.csv");
        assert_eq!((other.rows, other.stored, other.ignored), (2, 1, 1));
        let again = run_import(&url, &package, &ImportOptions::default())
            .await
            .unwrap();
        assert_eq!(again.stored, report.stored);
        let mut h = start_on(kind, url, db, tmp).await;
        let day = get(&mut h, "svc-day").await;
        assert_eq!(day.locations[0].time_zone, "America/Chicago");
        assert_eq!(hours(&day.locations[0]), ["MO,TU,WE,TH,FR 08:30-16:00 .."]);
        assert_eq!(day.taxonomy_terms[0].name, "Housing");
        assert_eq!(day.languages, ["es"]);
        let beds = get(&mut h, "svc-beds").await;
        assert_eq!(
            hours(&beds.locations[0]),
            ["MO,TU,WE,TH,FR,SA,SU 20:00-07:00 .."]
        );
        assert_eq!(beds.taxonomy_terms[0].name, "Shelter");
        // Tuesday 2026-03-03 09:00 CST, then 22:00 CST.
        assert_eq!(open_at(&mut h, "2026-03-03T15:00:00Z").await, ["svc-day"]);
        assert_eq!(open_at(&mut h, "2026-03-04T04:00:00Z").await, ["svc-beds"]);
    }
}

/// The specification's own 3.0 examples, zipped inside a folder, import as the folder does.
async fn hsds_3_examples_import_zipped(kind: Kind) {
    let (url, db, tmp) = database(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("hsds-3.zip");
    zip_folder(&shared_hsds(), &zip_path, "hsds");
    let report = run_import(&url, &zip_path, &ImportOptions::default())
        .await
        .unwrap();
    let folder = {
        let (url, _db, _tmp) = database(kind).await;
        run_import(&url, &shared_hsds(), &ImportOptions::default())
            .await
            .unwrap()
    };
    assert_eq!(report.stored, folder.stored);
    assert_eq!(report.rejections.len(), folder.rejections.len());
    assert_eq!(
        summary(&report, "service_at_location.csv").table,
        "service_at_location"
    );
    let mut h = start_on(kind, url, db, tmp).await;
    let service = get(&mut h, "ac148810-d857-441c-9679-408f346de14b").await;
    assert_eq!(service.locations[0].schedules.len(), 1);
}

both!(
    shared_examples_import_with_bad_coordinates_reported,
    legacy_package_imports,
    zipped_package_imports_and_a_broken_one_changes_nothing,
    descriptor_paths_are_followed_in_a_folder_and_a_zip,
    a_descriptor_that_does_not_match_its_package_changes_nothing,
    every_hsds_table_name_is_read,
    schedule_rows_without_an_id_get_a_stable_one,
    a_re_import_replaces_the_schedules_of_the_services_it_contains,
    what_real_exports_do_is_read,
    links_and_phones_without_ids_are_kept,
    hsds_1x_package_of_a_211_imports,
    hsds_2_package_imports,
    hsds_3_examples_import_zipped,
);
