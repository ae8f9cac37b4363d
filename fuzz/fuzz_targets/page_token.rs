//! Page-token decoding (`relay_runtime::paging::PageTokens::decode`): a token this server did
//! not sign is always refused with INVALID_PAGE_TOKEN (never a panic, never a cursor), and a
//! cursor it signed comes back exactly, for its own scope only.
//!
//! The body is `relay_fuzz::page_token::run` (fuzz/src/targets/page_token.rs), which `make test` also
//! runs over the committed corpus and pseudo-random inputs (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_fuzz::page_token::run(data));
