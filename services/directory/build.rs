//! `sqlx::migrate!` embeds the migrations when `lib.rs` compiles, but cargo does not know it
//! read them: without this, a new migration file is left out of an incremental build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations_sqlite");
}
