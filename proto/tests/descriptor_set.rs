//! The descriptor set that reflection serves must let a client decode Relay's error details
//! (issue 16): `grpc-status-details-bin` is a google.rpc.Status whose details are
//! google.rpc.ErrorInfo, BadRequest and RetryInfo, so those types have to be in the set.

use std::collections::HashSet;

use prost::Message;
use prost_types::FileDescriptorSet;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(relay_proto::FILE_DESCRIPTOR_SET).expect("the set decodes")
}

/// Every fully qualified message name in the set, as reflection knows them.
fn message_names(set: &FileDescriptorSet) -> HashSet<String> {
    set.file
        .iter()
        .flat_map(|file| {
            file.message_type
                .iter()
                .map(move |message| format!("{}.{}", file.package(), message.name()))
        })
        .collect()
}

#[test]
fn error_detail_types_are_in_the_descriptor_set() {
    let names = message_names(&descriptor_set());
    for wanted in [
        "google.rpc.Status",
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
        // And Relay's own API is still there beside them.
        "relay.intake.v1.SubmitIncidentRequest",
    ] {
        assert!(
            names.contains(wanted),
            "{wanted} missing from FILE_DESCRIPTOR_SET"
        );
    }
}

#[test]
fn the_vendored_files_keep_their_upstream_names() {
    let set = descriptor_set();
    let files: HashSet<&str> = set.file.iter().map(|file| file.name()).collect();
    for wanted in [
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/rpc/code.proto",
    ] {
        assert!(
            files.contains(wanted),
            "{wanted} missing from FILE_DESCRIPTOR_SET"
        );
    }
    let error_details = set
        .file
        .iter()
        .find(|file| file.name() == "google/rpc/error_details.proto")
        .expect("error_details.proto is in the set");
    assert_eq!(error_details.package(), "google.rpc");
}

#[test]
fn every_import_is_in_the_set_so_reflection_can_resolve_it() {
    let set = descriptor_set();
    let files: HashSet<&str> = set.file.iter().map(|file| file.name()).collect();
    for file in &set.file {
        for dependency in &file.dependency {
            assert!(
                files.contains(dependency.as_str()),
                "{} imports {dependency}, which is not in the set",
                file.name()
            );
        }
    }
}
