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

    let descriptors = protox::compile(&files, [&root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The descriptor set served by reflection (compile_fds does not write it).
    fs::write(
        out_dir.join("relay_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
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
