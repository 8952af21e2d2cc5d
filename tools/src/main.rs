//! The `ridegate` binary: see `ridegate --help`.

/// mimalloc: the decision path allocates small request strings on one thread and the
/// audit writer frees them on another, which glibc's allocator handles poorly (≈10 % of
/// a card decision in the benchmarks); mimalloc's per-thread free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ridegate_tools::cli::main()
}
