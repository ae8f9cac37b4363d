//! `relay-routing`: see the crate documentation.

/// mimalloc instead of the system allocator: ranking and the Redis replies allocate many
/// small strings per call, and glibc's malloc/free took about a sixth of routing's CPU in a
/// profile of the benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relay_runtime::cli::main::<relay_routing::Application>()
}
