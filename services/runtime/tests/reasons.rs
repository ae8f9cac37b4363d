//! The reasons the runtime's layers give every RPC (authentication, rate limits, the key
//! set) are documented where an integrator reads them: in common.proto, and in the error
//! list above each service. A reason added to the runtime and to no `.proto` fails here.

use std::path::{Path, PathBuf};

use relay_runtime::security::{auth, limits};

/// The reasons any RPC of any service may get from the runtime.
const EVERY_RPC: [&str; 5] = [
    auth::CREDENTIALS_MISSING,
    auth::CREDENTIALS_INVALID,
    auth::SCOPE_MISSING,
    auth::KEYS_UNAVAILABLE,
    limits::RATE_LIMITED,
];

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/relay")
}

/// The comments of a `.proto` file, joined (a reason is listed in a comment).
fn comments(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("proto file");
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn service_protos() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for package in std::fs::read_dir(proto_dir()).expect("proto/relay") {
        let version = package.expect("entry").path().join("v1");
        let Ok(files) = std::fs::read_dir(&version) else {
            continue;
        };
        for file in files {
            let path = file.expect("entry").path();
            if path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with("_service.proto"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_runtime_reason_is_documented_in_common_proto_and_each_service() {
    let services = service_protos();
    assert!(services.len() >= 5, "found {services:?}");
    let common = proto_dir().join("common/v1/common.proto");
    for path in std::iter::once(common).chain(services) {
        let text = comments(&path);
        for reason in EVERY_RPC {
            assert!(
                text.contains(reason),
                "{} does not list the reason {reason}",
                path.display()
            );
        }
    }
}

#[test]
fn the_tenancy_reasons_are_documented_where_they_apply() {
    let text = |service: &str| comments(&proto_dir().join(service));
    let intake = text("intake/v1/intake_service.proto");
    assert!(intake.contains(auth::CAD_SYSTEM_NOT_ALLOWED));
    assert!(intake.contains(auth::REGION_NOT_ALLOWED));
    let availability = text("availability/v1/availability_service.proto");
    assert!(availability.contains(auth::TEAM_NOT_ALLOWED));
    assert!(availability.contains(auth::REGION_NOT_ALLOWED));
    let routing = text("routing/v1/routing_service.proto");
    for reason in [
        auth::CAD_SYSTEM_NOT_ALLOWED,
        auth::TEAM_NOT_ALLOWED,
        auth::REGION_NOT_ALLOWED,
    ] {
        assert!(routing.contains(reason), "routing lacks {reason}");
    }
}
