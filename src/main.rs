// mimalloc: measured against glibc malloc under the load harness (see
// docs/BENCHMARKS.md); the proxy threads spent their time in malloc locks.
// The `system-alloc` feature builds with glibc's malloc instead, so heap
// profilers that hook malloc (heaptrack, massif) see every allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    taphook::cli::main()
}
