//! Every request validator fed arbitrary protobuf bytes: the first byte picks a request type
//! of one of the services, the rest is decoded as that message (as tonic would) and checked by
//! the same function the handler calls before touching storage. A validator never panics, and
//! whatever it accepts satisfies what the handler and the stores rely on: coordinates finite
//! and on the globe, timestamps within google.protobuf.Timestamp's range (and the documented
//! clock skew), page sizes and limits within bounds, enums known, schedules evaluable.
//!
//! The body is `relay_fuzz::validators::run` (fuzz/src/targets/validators.rs), which `make test` also
//! runs over the committed corpus and pseudo-random inputs (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_fuzz::validators::run(data));
