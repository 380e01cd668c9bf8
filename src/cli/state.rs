//! `state rebind` and `state adopt`: deliberate changes to a sync's state.

use std::process::ExitCode;

use super::StateCommand;
use crate::project::Project;
use crate::sync::BindReport;

pub(super) async fn state_cmd(
    project: &Project,
    command: StateCommand,
) -> Result<ExitCode, String> {
    let (sync, json) = match &command {
        StateCommand::Rebind { sync, json } | StateCommand::Adopt { sync, json } => {
            (sync.clone(), *json)
        }
    };
    let names = project
        .select_syncs(std::slice::from_ref(&sync))
        .map_err(|e| e.to_string())?;
    let ctx = project
        .session_for(&names)
        .await
        .map_err(|e| e.to_string())?;
    let report = match command {
        StateCommand::Rebind { .. } => crate::sync::rebind(project, &ctx, &sync).await,
        StateCommand::Adopt { .. } => crate::sync::adopt(project, &ctx, &sync).await,
    }
    .map_err(|e| e.to_string())?;
    if json {
        out!(
            "{}",
            super::json::Record::new("state", "sync", &report).line()
        );
    } else {
        print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print(r: &BindReport) {
    let version = r
        .state_version
        .map(|v| format!(" (state version {v})"))
        .unwrap_or_default();
    match r.outcome {
        "rebound" => out!(
            "✓ {}: state rebound{version}\n    from {}\n    to   {}\n  The next run compares the records at the new address with the state as it was: \
             if that address does not hold the same records, run it once with --full-resync instead.",
            r.sync,
            r.from.as_deref().unwrap_or("(an unrecorded address)"),
            r.to.as_deref().unwrap_or("?"),
        ),
        "adopted" => out!(
            "✓ {}: adopted {} record(s) of the destination{version}; {} key(s) in state now.\n  \
             `backflow plan {}` shows what the next run will update and delete (a mirror's \
             deletes past its max_deletes wait for `run --allow-deletes`).",
            r.sync,
            r.adopted.unwrap_or(0),
            r.keys.unwrap_or(0),
            r.sync,
        ),
        _ => out!(
            "✓ {}: the state is already about {}; nothing to do",
            r.sync,
            r.to.as_deref().unwrap_or("its destination")
        ),
    }
}
