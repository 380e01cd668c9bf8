//! `hub show`, `hub log`, `hub quarantine`, `hub resolve` and `hub unmerge`.

use std::process::ExitCode;

use super::HubCommand;
use crate::project::Project;

pub(super) async fn hub_cmd(project: &Project, command: HubCommand) -> Result<ExitCode, String> {
    let entity = match &command {
        HubCommand::Show { entity, .. }
        | HubCommand::Log { entity, .. }
        | HubCommand::Quarantine { entity, .. }
        | HubCommand::Resolve { entity, .. }
        | HubCommand::Unmerge { entity, .. } => entity.clone(),
    };
    if !project.config.entities.contains_key(&entity) {
        let known: Vec<&str> = project.config.entities.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown entity \"{entity}\"{}; the project's entities are: {}",
            crate::names::suggest(&entity, known.iter().copied()),
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    let ctx = crate::session::session_context(&project.config.engine, &project.dir)
        .map_err(|e| e.to_string())?;
    project.state.register(&ctx).map_err(|e| e.to_string())?;
    match command {
        HubCommand::Show {
            golden_id,
            source,
            id,
            json,
            ..
        } => {
            let lookup = match (golden_id, source, id) {
                (Some(g), None, None) => crate::hub::show::Lookup::Golden(g),
                (None, Some(source), Some(id)) => {
                    crate::hub::show::Lookup::SourceRecord { source, id }
                }
                _ => {
                    return Err(
                        "name a golden record: `hub show ENTITY GOLDEN_ID`, or `hub show ENTITY --source SOURCE --id ID`"
                            .into(),
                    );
                }
            };
            let record = crate::hub::show::golden_record(project, &ctx, &entity, &lookup)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                out!("{}", serde_json::to_string(&record).unwrap_or_default());
            } else {
                print_golden(&record);
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Quarantine { all, json, .. } => {
            let entries = crate::hub::show::quarantine(project, &ctx, &entity, all)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                json_lines(&entries);
            } else if entries.is_empty() {
                out!("no records of {entity} in quarantine");
            } else {
                out!("{}", quarantine_table(&entries));
                out!(
                    "settle one with `backflow hub resolve {entity} --source SOURCE --id ID --attach GOLDEN_ID | --new | --drop`"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Resolve {
            source,
            id,
            attach,
            new,
            drop,
            json,
            ..
        } => {
            use crate::hub::quarantine::{Decision, Resolution};
            let decision = match (attach, new, drop) {
                (Some(g), false, false) => Decision::Attach(g),
                (None, true, false) => Decision::New,
                (None, false, true) => Decision::Drop,
                _ => return Err("give one of --attach GOLDEN_ID, --new, --drop".into()),
            };
            let ctx = decision_session(project, &entity).await?;
            crate::interrupt::listen();
            let report = crate::hub::quarantine::resolve(
                project,
                &ctx,
                &entity,
                Resolution {
                    source,
                    id,
                    decision,
                    apart_from: Vec::new(),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(after_decision(project, &ctx, &entity, &report, json).await)
        }
        HubCommand::Unmerge {
            golden_id,
            source,
            id,
            dry_run,
            json,
            ..
        } => {
            let ctx = decision_session(project, &entity).await?;
            crate::interrupt::listen();
            let outcome = crate::hub::unmerge::unmerge(
                project, &ctx, &entity, golden_id, &source, &id, dry_run,
            )
            .await
            .map_err(|e| e.to_string())?;
            match outcome {
                crate::hub::unmerge::Outcome::Ran(report) => {
                    Ok(after_decision(project, &ctx, &entity, &report, json).await)
                }
                crate::hub::unmerge::Outcome::Planned(plan) => {
                    if json {
                        out!(
                            "{}",
                            super::json::Record::new("hub", "entity", &plan).line()
                        );
                    } else {
                        super::output::print_entity_plan(&plan);
                    }
                    Ok(if plan.status == crate::history::RunStatus::Succeeded {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
        HubCommand::Log { limit, json, .. } => {
            let entries = crate::hub::show::recent_log(project, &ctx, &entity, limit)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                json_lines(&entries);
            } else if entries.is_empty() {
                out!("no log entries yet");
            } else {
                out!("{}", log_table(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_golden(r: &crate::hub::show::GoldenRecord) {
    let status = match (r.merged_into, &r.retired_at) {
        (Some(w), _) => format!("  (merged into golden record {w})"),
        (None, Some(at)) => format!(
            "  (retired {at}: {})",
            r.retired_reason.as_deref().unwrap_or("no reason recorded")
        ),
        (None, None) => String::new(),
    };
    out!("{} golden record {}{status}", r.entity, r.golden_id);
    out!(
        "  created {}  updated {}",
        r.created_at.as_deref().unwrap_or("?"),
        r.updated_at.as_deref().unwrap_or("?")
    );
    if !r.absorbed.is_empty() {
        out!(
            "  absorbed: {}",
            r.absorbed
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut fields = comfy_table::Table::new();
    fields.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    fields.set_header(vec!["field", "value", "from"]);
    for f in &r.fields {
        fields.add_row(vec![
            f.field.clone(),
            f.value.clone().unwrap_or_else(|| "NULL".into()),
            f.source.clone().unwrap_or_default(),
        ]);
    }
    out!("{fields}");
    let mut links = comfy_table::Table::new();
    links.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    links.set_header(vec!["source", "id", "linked by", "first read (version)"]);
    for l in &r.links {
        links.add_row(vec![
            l.source.clone(),
            l.source_id.clone(),
            l.linked_by.clone().unwrap_or_default(),
            l.first_version.map(|v| v.to_string()).unwrap_or_default(),
        ]);
    }
    out!("ID mappings:\n{links}");
    if !r.history.is_empty() {
        out!("history:\n{}", log_table(&r.history));
    }
}

fn log_table(entries: &[crate::hub::show::LogEntry]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "version", "at (UTC)", "golden", "op", "field", "old", "new", "source", "detail",
    ]);
    for e in entries {
        let source = match (&e.source, &e.source_id) {
            (Some(s), Some(id)) => format!("{s}:{id}"),
            (Some(s), None) => s.clone(),
            _ => String::new(),
        };
        table.add_row(vec![
            e.version.to_string(),
            e.at.chars().take(19).collect::<String>().replace('T', " "),
            e.golden_id.to_string(),
            e.op.clone(),
            e.field.clone().unwrap_or_default(),
            e.old_value.clone().unwrap_or_default(),
            e.new_value.clone().unwrap_or_default(),
            source,
            e.detail.clone().unwrap_or_default(),
        ]);
    }
    table
}

fn quarantine_table(entries: &[crate::hub::show::QuarantineEntry]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "source",
        "id",
        "kind",
        "candidates",
        "since (UTC)",
        "values",
        "reason",
    ]);
    for e in entries {
        let kind = match &e.decision {
            Some(d) => format!("{} ({d})", e.kind),
            None => e.kind.clone(),
        };
        table.add_row(vec![
            e.source.clone(),
            e.source_id.clone(),
            kind,
            e.candidates
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            e.since
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(19)
                .collect::<String>()
                .replace('T', " "),
            e.values.to_string(),
            e.reason.clone(),
        ]);
    }
    table
}

/// A session for a cycle that carries out a decision: the entity's sources are opened (none of
/// their records is read) and the destinations of its write-backs, which run after it.
async fn decision_session(
    project: &Project,
    entity: &str,
) -> Result<datafusion::prelude::SessionContext, String> {
    let targets = project
        .select_targets(&[entity.to_string()])
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = targets
        .iter()
        .map(|t| match t {
            crate::project::RunTarget::Entity(n) | crate::project::RunTarget::Sync(n) => n.clone(),
        })
        .collect();
    project.session_for(&names).await.map_err(|e| e.to_string())
}

/// Print the cycle that carried out a decision, then run the entity's write-backs so that what
/// changed flows out at once, as after `backflow run ENTITY`.
async fn after_decision(
    project: &Project,
    ctx: &datafusion::prelude::SessionContext,
    entity: &str,
    report: &crate::hub::HubReport,
    json: bool,
) -> ExitCode {
    use crate::history::RunStatus;
    let mut ok = report.status == RunStatus::Succeeded;
    if json {
        out!(
            "{}",
            super::json::Record::new("hub", "entity", super::output::entity_json(report)).line()
        );
    } else {
        super::output::print_hub_run(report);
    }
    if ok {
        let targets = project
            .select_targets(&[entity.to_string()])
            .unwrap_or_default();
        let progress = std::sync::Arc::new(super::progress::TerminalProgress::new(false));
        for target in targets {
            let crate::project::RunTarget::Sync(sync) = target else {
                continue;
            };
            let started = chrono::Utc::now().timestamp_millis();
            let report = crate::sync::run(
                project,
                ctx,
                &sync,
                crate::sync::RunOptions::default(),
                progress.clone(),
            )
            .await;
            ok &= report.status == RunStatus::Succeeded;
            if json {
                out!(
                    "{}",
                    super::json::Record::new(
                        "hub",
                        "sync",
                        super::json::SyncRecord::from_run(&report, started, false)
                    )
                    .line()
                );
            } else {
                super::output::print_run(&report);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One JSON object per line.
fn json_lines<T: serde::Serialize>(items: &[T]) {
    for item in items {
        out!("{}", serde_json::to_string(item).unwrap_or_default());
    }
}
