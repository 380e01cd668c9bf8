//! `hub show` and `hub log`.

use std::process::ExitCode;

use super::HubCommand;
use crate::project::Project;

pub(super) async fn hub_cmd(project: &Project, command: HubCommand) -> Result<ExitCode, String> {
    let entity = match &command {
        HubCommand::Show { entity, .. } | HubCommand::Log { entity, .. } => entity.clone(),
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
        HubCommand::Log { limit, json, .. } => {
            let entries = crate::hub::show::recent_log(project, &ctx, &entity, limit)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                for e in &entries {
                    out!("{}", serde_json::to_string(e).unwrap_or_default());
                }
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
