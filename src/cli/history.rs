//! `history`: past runs, newest first.

use std::process::ExitCode;

use super::json::{Record, SyncRecord};
use crate::history::{self, RunRecord};
use crate::project::Project;

pub(super) async fn history_cmd(
    project: &Project,
    sync: Option<String>,
    limit: usize,
    with_samples: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let names = match sync {
        Some(s) if project.config.entities.contains_key(&s) => {
            vec![crate::hub::history_name(&s)]
        }
        Some(s) => {
            project
                .select_syncs(std::slice::from_ref(&s))
                .map_err(|e| e.to_string())?;
            vec![s]
        }
        None => history::syncs(&project.state)
            .await
            .map_err(|e| e.to_string())?,
    };
    let mut runs: Vec<RunRecord> = Vec::new();
    for name in &names {
        runs.extend(
            history::runs(&project.state, name, limit)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
    if runs.is_empty() && !json {
        out!("no runs yet");
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "started (UTC)",
        "sync",
        "status",
        "read",
        "created",
        "updated",
        "deleted",
        "unchanged",
        "invalid",
        "rejected",
        "secs",
        "error",
    ]);
    let mut sample_lines = Vec::new();
    for run in &runs {
        let samples = if with_samples {
            history::samples(&project.state, &run.sync, run)
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        if json {
            let kind = if run.behavior.is_none() && run.sync.starts_with("hub.") {
                "entity"
            } else {
                "sync"
            };
            let record = SyncRecord::from_history(run, &samples);
            out!("{}", Record::new("history", kind, record).line());
            continue;
        }
        let c = &run.counts;
        let started = chrono::DateTime::from_timestamp_millis(run.started_at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        table.add_row(vec![
            started.clone(),
            run.sync.clone(),
            run.status.as_str().to_string(),
            c.read.to_string(),
            c.created.to_string(),
            c.updated.to_string(),
            c.deleted.to_string(),
            c.unchanged.to_string(),
            c.invalid.to_string(),
            c.rejected.to_string(),
            format!(
                "{:.1}",
                (run.finished_at_ms - run.started_at_ms) as f64 / 1000.0
            ),
            run.error.clone().unwrap_or_default(),
        ]);
        if !samples.is_empty() {
            sample_lines.push(format!("{} {} (run {}):", run.sync, started, run.run_id));
            for s in &samples {
                let kind = match s.kind {
                    history::RecordKind::Invalid => "invalid",
                    history::RecordKind::Rejected => "rejected",
                };
                sample_lines.push(format!(
                    "  {kind}: key {} — {}\n      {}",
                    s.key.as_deref().unwrap_or("NULL"),
                    s.reason,
                    s.record
                ));
            }
        }
    }
    if !json && !runs.is_empty() {
        out!("{table}");
        for line in sample_lines {
            out!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `history SYNC --records KEY`: every entry of the sync's record log for one key, oldest
/// first.
pub(super) async fn record_story(
    project: &Project,
    sync: &str,
    key: &str,
    json: bool,
) -> Result<ExitCode, String> {
    use arrow::array::AsArray;
    use datafusion::prelude::{ParquetReadOptions, col, lit};

    project
        .select_syncs(&[sync.to_string()])
        .map_err(|e| e.to_string())?;
    let dir = crate::sync::record_log::dir(sync);
    let files = project
        .state
        .list_files(&dir)
        .await
        .map_err(|e| e.to_string())?;
    if !files.iter().any(|f| f.ends_with(".parquet")) {
        return Err(format!(
            "sync \"{sync}\" has no record log: set `record_log = true` in [syncs.{sync}] (or in \
             [engine]) and its next runs log every record they send"
        ));
    }
    // A composite key as the log writes it, however the user spaced its JSON list.
    let parts = project.config.syncs[sync].key.parts().len();
    let key = &crate::keys::key_parts(key, parts)
        .map(|p| crate::keys::key_text_of(&p))
        .map_err(|why| format!("--records: {why}"))?;
    let ctx = datafusion::prelude::SessionContext::new();
    project.state.register(&ctx).map_err(|e| e.to_string())?;
    let url = project.state.table_url(&dir);
    let batches = ctx
        .read_parquet(
            url,
            ParquetReadOptions::default().schema(&crate::sync::record_log::schema()),
        )
        .await
        .and_then(|df| df.filter(col("key").eq(lit(key.as_str()))))
        .and_then(|df| df.sort(vec![col("at").sort(true, false)]))
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["at (UTC)", "run", "op", "status", "message"]);
    let mut found = 0;
    for b in &batches {
        let text = |name: &str, i: usize| {
            b.column_by_name(name)
                .and_then(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).ok())
                .and_then(|c| {
                    let c = c.as_string::<i32>();
                    (!arrow::array::Array::is_null(c, i)).then(|| c.value(i).to_string())
                })
        };
        for i in 0..b.num_rows() {
            found += 1;
            let at = text("at", i).unwrap_or_default();
            if json {
                let record = serde_json::json!({
                    "sync": sync,
                    "key": key,
                    "at": at,
                    "run_id": text("run_id", i),
                    "op": text("op", i),
                    "status": text("status", i),
                    "message": text("message", i),
                });
                out!(
                    "{}",
                    super::json::Record::new("history", "record", record).line()
                );
            } else {
                table.add_row(vec![
                    at.chars().take(19).collect::<String>().replace('T', " "),
                    text("run_id", i).unwrap_or_default(),
                    text("op", i).unwrap_or_default(),
                    text("status", i).unwrap_or_default(),
                    text("message", i).unwrap_or_default(),
                ]);
            }
        }
    }
    if !json {
        if found == 0 {
            out!("no entry for key {key} in the record log of {sync}");
        } else {
            out!("{table}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
