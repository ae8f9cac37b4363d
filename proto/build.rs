//! Compiles every `.proto` under `relay/` with protox, so no system `protoc` is needed.
//!
//! The descriptor set served by reflection also holds the vendored `google/rpc` files
//! (Status, Code and the error details Relay sends), so that a client using reflection can
//! decode `grpc-status-details-bin`. No Rust code is generated for them: Relay's services
//! build their error details with `tonic-types`, which has its own copies of those types.

use std::{env, error::Error, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    collect_protos(&root.join("relay"), &mut files)?;
    collect_protos(&root.join("google").join("rpc"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.join("relay").display());
    println!("cargo:rerun-if-changed={}", root.join("google").display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The descriptor set served by reflection (compile_fds does not write it). Encoded from
    // the pool rather than from `descriptors`, which drops extension options such as each
    // RPC's `(relay.auth.v1.scope)`.
    fs::write(
        out_dir.join("relay_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    fs::write(
        out_dir.join("relay_scopes.rs"),
        scope_table(&compiler.descriptor_pool())?,
    )?;
    tonic_prost_build::configure()
        // google.rpc is in the set for reflection only. Marking it extern makes prost skip
        // its types (as it does for google.protobuf); no Relay message refers to them, so the
        // Rust path is never emitted, but it names where they live: tonic-types.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .client_mod_attribute(".", "#[cfg(feature = \"client\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"server\")]")
        // RPCs that a service does not implement yet answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// The table of every Relay RPC's full path and the scope its `(relay.auth.v1.scope)` option
/// declares, as Rust source. An RPC without the option is listed with an empty scope, so that
/// the descriptor test names it (and the auth layer refuses it to everyone).
fn scope_table(pool: &prost_reflect::DescriptorPool) -> Result<String, Box<dyn Error>> {
    let extension = pool
        .get_extension_by_name("relay.auth.v1.scope")
        .ok_or("relay/auth/v1/options.proto does not declare relay.auth.v1.scope")?;
    let mut rows = Vec::new();
    for service in pool.services() {
        if !service.full_name().starts_with("relay.") {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            let scope = match options.get_extension(&extension).as_enum_number() {
                Some(number) if options.has_extension(&extension) => extension
                    .kind()
                    .as_enum()
                    .and_then(|kind| kind.get_value(number))
                    .map(|value| scope_name(value.name()))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            rows.push(format!(
                "    (\"/{}/{}\", \"{scope}\"),\n",
                service.full_name(),
                method.name()
            ));
        }
    }
    rows.sort();
    Ok(format!(
        "/// Every Relay RPC's path (`/package.Service/Method`) and the scope it requires, from\n\
         /// each RPC's `(relay.auth.v1.scope)` option, sorted by path. An empty scope means the\n\
         /// option is missing.\n\
         pub const METHOD_SCOPES: &[(&str, &str)] = &[\n{}];\n",
        rows.concat()
    ))
}

/// A scope's name in credentials: `SCOPE_INCIDENTS_SUBMIT` is `incidents.submit`;
/// `SCOPE_UNSPECIFIED` is no scope.
fn scope_name(value: &str) -> String {
    match value.strip_prefix("SCOPE_") {
        Some("UNSPECIFIED") | None => String::new(),
        Some(name) => name.to_lowercase().replace('_', "."),
    }
}

fn collect_protos(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
