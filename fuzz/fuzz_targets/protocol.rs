//! The triage protocol file parser (`relay_intake::protocol::Protocol::parse`), then triage
//! with what it accepted: parsing never panics, and an accepted protocol decides every
//! incident type and flag set with a disposition and the reasons for it.
//!
//! The body is `relay_fuzz::protocol::run` (fuzz/src/targets/protocol.rs), which `make test` also
//! runs over the committed corpus and pseudo-random inputs (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_fuzz::protocol::run(data));
