//! The `chatetl` binary: everything happens in the library.

/// mimalloc: extract allocates and frees millions of small strings on several threads, where the
/// system allocator spent a quarter of the time (measured with perf; see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let code = chatetl::app::main_with_args(std::env::args_os());
    std::process::ExitCode::from(code.code() as u8)
}
