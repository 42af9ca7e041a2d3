//! The `screamer` binary; the library does the work (see `screamer::cli`).

fn main() -> std::process::ExitCode {
    screamer::cli::main()
}
