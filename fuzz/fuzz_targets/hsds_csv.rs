//! The HSDS CSV row mappers, one table at a time: the first byte picks the table (every kind
//! the importer maps, in HSDS 3.0 and 1.x names), the rest is that table's CSV file, read by
//! `relay_directory::import::import_into` from a folder package as `relay directory import`
//! reads it, with a session that checks each row instead of storing it.
//!
//! The body is `relay_fuzz::hsds_csv::run` (fuzz/src/targets/hsds_csv.rs), which `make test` also
//! runs over the committed corpus and pseudo-random inputs (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_fuzz::hsds_csv::run(data));
