use std::process::ExitCode;

fn main() -> ExitCode {
    // Test builds take failpoints from the FAILPOINTS variable (`name=action;…`), so that tests
    // can stop a `backflow` process at a chosen step.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    backflow::cli::main()
}
