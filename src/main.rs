//! The `chatetl` binary: everything happens in the library.

fn main() -> std::process::ExitCode {
    let code = chatetl::app::main_with_args(std::env::args_os());
    std::process::ExitCode::from(code.code() as u8)
}
