//! `relay-availability`: see the crate documentation.

fn main() -> std::process::ExitCode {
    relay_runtime::cli::main::<relay_availability::Application>()
}
