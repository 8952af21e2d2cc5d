//! The `ridegate` binary: see `ridegate --help`.

fn main() -> std::process::ExitCode {
    ridegate::cli::main()
}
