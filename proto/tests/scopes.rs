//! Every RPC declares the scope it requires, once, in its `.proto` (issue 14): the method
//! option `(relay.auth.v1.scope)`. These tests read the descriptor set that reflection
//! serves, so a new RPC without a scope fails here, and check that the table the auth layer
//! reads (`relay_proto::scopes::METHOD_SCOPES`) says the same.

use std::collections::BTreeMap;

use prost_reflect::DescriptorPool;

fn pool() -> DescriptorPool {
    DescriptorPool::decode(relay_proto::FILE_DESCRIPTOR_SET).expect("the set decodes")
}

/// Every Relay RPC's path and the name of the `Scope` value its option holds (`None` when
/// the option is missing).
fn declared() -> BTreeMap<String, Option<String>> {
    let pool = pool();
    let extension = pool
        .get_extension_by_name("relay.auth.v1.scope")
        .expect("relay.auth.v1.scope is declared");
    let scope_enum = extension.kind().as_enum().expect("an enum").clone();
    let mut rpcs = BTreeMap::new();
    for service in pool.services() {
        if !service.full_name().starts_with("relay.") {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            let value = options
                .has_extension(&extension)
                .then(|| options.get_extension(&extension).as_enum_number())
                .flatten()
                .and_then(|number| scope_enum.get_value(number))
                .map(|value| value.name().to_owned());
            rpcs.insert(format!("/{}/{}", service.full_name(), method.name()), value);
        }
    }
    rpcs
}

#[test]
fn every_rpc_of_every_service_declares_a_scope() {
    let rpcs = declared();
    // The five services of v1 (intake, availability, routing, directory, reports).
    assert!(rpcs.len() >= 33, "only {} RPCs found", rpcs.len());
    let missing: Vec<&String> = rpcs
        .iter()
        .filter(|(_, scope)| {
            scope
                .as_deref()
                .is_none_or(|name| name == "SCOPE_UNSPECIFIED")
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "RPCs without option (relay.auth.v1.scope): {missing:?}"
    );
}

#[test]
fn the_scope_table_matches_the_descriptors() {
    let from_descriptors: BTreeMap<String, String> = declared()
        .into_iter()
        .map(|(path, scope)| {
            let name = scope
                .as_deref()
                .and_then(|name| name.strip_prefix("SCOPE_"))
                .filter(|name| *name != "UNSPECIFIED")
                .map(|name| name.to_lowercase().replace('_', "."))
                .unwrap_or_default();
            (path, name)
        })
        .collect();
    let table: BTreeMap<String, String> = relay_proto::scopes::METHOD_SCOPES
        .iter()
        .map(|(path, scope)| ((*path).to_owned(), (*scope).to_owned()))
        .collect();
    assert_eq!(table, from_descriptors);
    assert_eq!(
        relay_proto::scopes::scope_of("/relay.intake.v1.IntakeService/SubmitIncident"),
        Some("incidents.submit")
    );
    assert_eq!(
        relay_proto::scopes::scope_of("/relay.availability.v1.AvailabilityService/StreamLocations"),
        Some("teams.report")
    );
    assert_eq!(
        relay_proto::scopes::scope_of("/grpc.health.v1.Health/Check"),
        None
    );
}
