// mimalloc: measured against glibc malloc under the load harness (see
// docs/BENCHMARKS.md); the proxy threads spent their time in malloc locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    taphook::cli::main()
}
