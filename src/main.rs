use std::process::ExitCode;

fn main() -> ExitCode {
    backflow::cli::main()
}
