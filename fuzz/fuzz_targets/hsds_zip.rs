//! The HSDS package reader on arbitrary zip bytes (`relay_directory::import::import_into`):
//! the archive, its `datapackage.json` and every CSV in it go through the same code as
//! `relay directory import package.zip`, with a session that checks each row instead of
//! storing it. Never a panic; every stored row is one the database and the evaluator accept.
//!
//! The body is `relay_fuzz::hsds_zip::run` (fuzz/src/targets/hsds_zip.rs), which `make test` also
//! runs over the committed corpus and pseudo-random inputs (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_fuzz::hsds_zip::run(data));
