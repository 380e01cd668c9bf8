//! `check`: the project against the real sources and destinations, writing nothing.

use std::path::Path;
use std::process::ExitCode;

use super::json::{CheckRecord, Record};
use crate::history::RunStatus;
use crate::project::Project;

pub(super) async fn check(
    dir: &Path,
    offline: bool,
    json: bool,
    selection: &crate::selection::Selection,
) -> Result<ExitCode, String> {
    if offline {
        crate::databases::set_offline();
    }
    let project = Project::load(dir).map_err(|e| e.to_string())?;
    if offline {
        if json {
            let record = serde_json::json!({
                "status": "succeeded",
                "project": project.dir.display().to_string(),
                "offline": true,
            });
            out!("{}", Record::new("check", "project", record).line());
        } else {
            out!(
                "✓ {} is valid offline: {} (sources, destinations and field types were not \
                 checked: run `backflow check` where the servers can be reached)",
                project.dir.display(),
                contents(&project)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Selected: the entities a tag names (or every one with no selection), and the syncs.
    let (entities, syncs): (Vec<String>, Vec<String>) = if selection.is_empty() {
        (
            project.config.entities.keys().cloned().collect(),
            project.config.syncs.keys().cloned().collect(),
        )
    } else {
        let targets = selection.targets(&project).map_err(|e| e.to_string())?;
        let mut entities = Vec::new();
        let mut syncs = Vec::new();
        for t in targets {
            match t {
                crate::project::RunTarget::Entity(n) => entities.push(n),
                crate::project::RunTarget::Sync(n) => syncs.push(n),
            }
        }
        (entities, syncs)
    };
    let ctx = project.session().await.map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let warned: Vec<(String, Vec<String>)> = project
        .source_warnings
        .lock()
        .map(|w| {
            w.iter()
                .filter(|(_, w)| !w.is_empty())
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (name, warnings) in warned {
        records.push(CheckRecord {
            source: Some(name),
            sync: None,
            entity: None,
            status: RunStatus::Succeeded,
            behavior: None,
            destination: None,
            object: None,
            error: None,
            warnings,
        });
    }
    for name in &entities {
        let result = crate::hub::check(&project, &ctx, name).await;
        records.push(CheckRecord {
            source: None,
            sync: None,
            entity: Some(name.clone()),
            status: if result.is_ok() {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            behavior: None,
            destination: None,
            object: None,
            error: result.err().map(|e| e.to_string()),
            warnings: Vec::new(),
        });
    }
    for name in &syncs {
        let config = &project.config.syncs[name];
        let result = crate::sync::check(&project, &ctx, name).await;
        let (status, error, warnings) = match result {
            Ok(w) => (RunStatus::Succeeded, None, w),
            Err(e) => (RunStatus::Failed, Some(e.to_string()), Vec::new()),
        };
        records.push(CheckRecord {
            source: None,
            sync: Some(name.clone()),
            entity: None,
            status,
            behavior: Some(config.behavior.to_string()),
            destination: Some(config.to.clone()),
            object: Some(config.object.clone()),
            error,
            warnings,
        });
    }
    let ok = records.iter().all(|r| r.status == RunStatus::Succeeded);
    if json {
        for r in records {
            let kind = if r.entity.is_some() {
                "entity"
            } else if r.source.is_some() {
                "source"
            } else {
                "sync"
            };
            out!("{}", Record::new("check", kind, r).line());
        }
    } else {
        for r in &records {
            if let Some(e) = &r.error {
                out!("✗ {e}");
            }
            if let Some(source) = &r.source {
                err!("! source \"{source}\":");
            }
            super::output::print_warnings(&r.warnings);
        }
        if ok {
            out!(
                "✓ {} is valid: {}",
                project.dir.display(),
                contents(&project)
            );
        }
    }
    Ok(super::exit(ok))
}

/// What a project holds, for `check`: "2 source(s), 1 model(s), …".
fn contents(project: &Project) -> String {
    let c = &project.config;
    format!(
        "{} source(s), {} model(s), {} segment(s), {} destination(s), {} sync(s){}",
        c.sources.len(),
        project.models.len(),
        c.segments.len(),
        c.destinations.len(),
        c.syncs.len(),
        match c.entities.len() {
            0 => String::new(),
            n => format!(", {n} entit{}", if n == 1 { "y" } else { "ies" }),
        }
    )
}
