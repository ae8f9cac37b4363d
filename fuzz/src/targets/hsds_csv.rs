//! The HSDS CSV row mappers, one table at a time: the first byte picks the table (every kind
//! the importer maps, in HSDS 3.0 and 1.x names), the rest is that table's CSV file, read by
//! `relay_directory::import::import_into` from a folder package as `relay directory import`
//! reads it, with a session that checks each row instead of storing it.

use std::sync::OnceLock;

/// File names of every table kind the importer maps (and one it only counts).
const TABLES: [&str; 16] = [
    "organizations.csv",
    "taxonomy_terms.csv",
    "services.csv",
    "locations.csv",
    "addresses.csv",
    "service_at_location.csv",
    "attributes.csv",
    "services_taxonomy.csv",
    "languages.csv",
    "phones.csv",
    "schedules.csv",
    "regular_schedules.csv",
    "holiday_schedules.csv",
    "service_capacity.csv",
    "physical_addresses.csv",
    "contacts.csv",
];

fn workdir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
}

/// Runs the target on one input, as libFuzzer would (see the module documentation).
pub fn run(data: &[u8]) {
    let Some((&kind, csv)) = data.split_first() else {
        return;
    };
    let table = TABLES[usize::from(kind) % TABLES.len()];
    // One folder per table kind, holding that one file.
    let folder = workdir().path().join(table.trim_end_matches(".csv"));
    std::fs::create_dir_all(&folder).expect("create the package folder");
    std::fs::write(folder.join(table), csv).expect("write the table");
    super::import_package(&folder);
}
