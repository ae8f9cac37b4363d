//! The HSDS package reader on arbitrary zip bytes (`relay_directory::import::import_into`):
//! the archive, its `datapackage.json` and every CSV in it go through the same code as
//! `relay directory import package.zip`, with a session that checks each row instead of
//! storing it. Never a panic; every stored row is one the database and the evaluator accept.

use std::sync::OnceLock;

fn workdir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
}

/// Runs the target on one input, as libFuzzer would (see the module documentation).
pub fn run(data: &[u8]) {
    let path = workdir().path().join("package.zip");
    std::fs::write(&path, data).expect("write the package");
    super::import_package(&path);
}
