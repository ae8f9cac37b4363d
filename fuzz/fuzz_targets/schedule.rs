//! The schedule parser and open-at evaluator (`relay_directory::schedule`): any schedule a
//! service can be given is parsed without panicking; for one that parses, `is_open` and
//! `next_open` answer for every instant a request may carry (0001-01-01..9999-12-31, the
//! range the handlers accept) in any time zone, and `next_open` is within the look-ahead and,
//! in UTC (no daylight-saving gaps), an instant at which the place is open.
//!
//! The body is `relay_fuzz::schedule::run` (fuzz/src/targets/schedule.rs), which `make test` also
//! runs over the committed corpus and pseudo-random inputs (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_fuzz::schedule::run(data));
