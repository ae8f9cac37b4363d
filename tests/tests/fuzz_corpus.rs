//! The fuzz targets' properties in the ordinary test suite (issue 18): every file of each
//! target's committed corpus (fuzz/corpus/<target>/), then pseudo-random inputs (fresh bytes,
//! and corpus files with bytes flipped, dropped or repeated) for a bounded time, through the
//! same `run` functions libFuzzer calls (fuzz/src/targets/). A debug build, no sanitizer and no
//! coverage guidance: this is a smoke run that keeps the targets compiling and their
//! properties holding on every change, not a substitute for `make fuzz`. A failing input is
//! written to the temporary folder and its path printed, ready to add to the corpus.

#[path = "../../fuzz/src/lib.rs"]
#[allow(
    dead_code,
    clippy::all,
    clippy::pedantic,
    missing_docs,
    unreachable_pub
)]
mod relay_fuzz;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    time::{Duration, Instant},
};

/// Wall time for each target's pseudo-random inputs, after its corpus.
const BUDGET: Duration = Duration::from_secs(3);
/// At most this many pseudo-random inputs per target.
const MAX_INPUTS: usize = 20_000;

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }

    /// A corpus file with a few bytes flipped, dropped or repeated.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..=self.below(4) {
            if out.is_empty() {
                let len = 1 + self.below(64);
                out = self.bytes(len);
                continue;
            }
            let at = self.below(out.len());
            match self.below(3) {
                0 => out[at] ^= self.next().to_le_bytes()[0] | 1,
                1 => {
                    out.remove(at);
                }
                _ => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    let piece = out[at..end].to_vec();
                    out.splice(at..at, piece);
                }
            }
        }
        out
    }
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read a corpus file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    files
}

/// Runs `run` on `input`; on a panic, saves the input and fails naming it.
fn one(target: &str, what: &str, run: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
        let path =
            std::env::temp_dir().join(format!("relay-fuzz-{target}-{}.bin", std::process::id()));
        std::fs::write(&path, input).expect("save the failing input");
        panic!(
            "fuzz target {target} failed on {what}; input saved to {}",
            path.display()
        );
    }
}

fn smoke(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    for (path, bytes) in &files {
        one(target, &path.display().to_string(), run, bytes);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    let start = Instant::now();
    let mut inputs = 0;
    while inputs < MAX_INPUTS && start.elapsed() < BUDGET {
        let input = if inputs % 2 == 0 {
            let len = rng.below(256);
            rng.bytes(len)
        } else {
            let seed = &files[rng.below(files.len())].1;
            rng.mutate(seed)
        };
        one(
            target,
            &format!("pseudo-random input {inputs}"),
            run,
            &input,
        );
        inputs += 1;
    }
    eprintln!(
        "{target}: {} corpus files and {inputs} pseudo-random inputs in {:.1} s, no failure",
        files.len(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn hsds_csv() {
    smoke("hsds_csv", relay_fuzz::hsds_csv::run);
}

#[test]
fn hsds_zip() {
    smoke("hsds_zip", relay_fuzz::hsds_zip::run);
}

#[test]
fn page_token() {
    smoke("page_token", relay_fuzz::page_token::run);
}

#[test]
fn protocol() {
    smoke("protocol", relay_fuzz::protocol::run);
}

#[test]
fn schedule() {
    smoke("schedule", relay_fuzz::schedule::run);
}

#[test]
fn validators() {
    smoke("validators", relay_fuzz::validators::run);
}
