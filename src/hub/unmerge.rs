//! `backflow hub unmerge ENTITY GOLDEN_ID --source S --id I`: a source record that should not
//! have joined a golden record (a wrong match, a wrong merge) is taken out into a golden record
//! of its own.
//!
//! It is one cycle that reads no source: the record comes in again as the ID map has it and
//! gets a new golden record (`unmerged (hub unmerge)` in the ID map and the log); the golden
//! record it leaves loses it as if it had been deleted (an `unlink` in the log), so the fields
//! it gave are decided again from the records that remain. The pair is remembered
//! (`apart.parquet`): the merge stage never merges the two again. What changed flows out like
//! any change: a mirror of the entity creates the new record and updates the old one, and
//! write-backs send each source record the values of its golden record. `--dry-run` plans the
//! cycle instead (see `plan.rs`).

use super::quarantine::{Decision, Resolution};
use super::show::Lookup;
use super::{HubError, HubOptions, HubReport};
use crate::project::Project;
use datafusion::prelude::SessionContext;

/// What an unmerge did, or would do.
pub enum Outcome {
    Ran(HubReport),
    Planned(super::plan::EntityPlan),
}

/// Check that `source`:`id` is a contributing record of live golden record `golden` that has
/// others, then take it out (or plan it, with `dry_run`).
pub async fn unmerge(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    golden: i64,
    source: &str,
    id: &str,
    dry_run: bool,
) -> Result<Outcome, HubError> {
    let entity = &project.config.entities[name];
    let refuse = |message: String| HubError::Settings {
        entity: name.to_string(),
        message,
    };
    let Some(config) = entity.sources.get(source) else {
        return Err(refuse(format!(
            "it has no source \"{source}\"{}; its sources are: {}",
            crate::names::suggest(source, entity.sources.keys().map(String::as_str)),
            entity
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if !config.role.contributes() {
        return Err(refuse(format!(
            "source \"{source}\" only receives records: its records give a golden record no \
             values, so there is nothing to take out"
        )));
    }
    let record = super::show::golden_record(project, ctx, name, &Lookup::Golden(golden)).await?;
    if let Some(w) = record.merged_into {
        return Err(refuse(format!(
            "golden record {golden} was merged into golden record {w}; its records are \
             linked to {w} now: `backflow hub unmerge {name} {w} --source {source} --id {id}`"
        )));
    }
    if record.retired_at.is_some() {
        return Err(refuse(format!("golden record {golden} is retired")));
    }
    let ids: Vec<&str> = record
        .links
        .iter()
        .filter(|l| l.source == source)
        .map(|l| l.source_id.as_str())
        .collect();
    let picked = match super::quarantine::pick_id(&ids, id) {
        Ok(p) => Some(p.to_string()),
        Err(Some(several)) => {
            return Err(refuse(format!(
                "records {several} of source \"{source}\" are all \"{id}\" as numbers: name one exactly"
            )));
        }
        Err(None) => None,
    };
    let Some(link) = record
        .links
        .iter()
        .find(|l| l.source == source && Some(&l.source_id) == picked.as_ref())
    else {
        let listed = record
            .links
            .iter()
            .map(|l| format!("{}:{}", l.source, l.source_id))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(refuse(format!(
            "record \"{id}\" of source \"{source}\" is not linked to golden record {golden}; \
             its records are: {listed}"
        )));
    };
    let contributing = record
        .links
        .iter()
        .filter(|l| {
            entity
                .sources
                .get(&l.source)
                .is_some_and(|s| s.role.contributes())
        })
        .count();
    if contributing < 2 {
        return Err(refuse(format!(
            "{source}:{} is the only record golden record {golden} has: there is nothing to \
             take it out of",
            link.source_id
        )));
    }
    let resolution = Resolution {
        source: source.to_string(),
        id: link.source_id.clone(),
        decision: Decision::Unmerge(golden),
        apart_from: vec![golden],
    };
    if dry_run {
        return Ok(Outcome::Planned(
            super::plan::plan_decision(project, ctx, name, &resolution).await,
        ));
    }
    Ok(Outcome::Ran(
        super::run(
            project,
            ctx,
            name,
            HubOptions {
                only_ids: Some(std::collections::BTreeMap::new()),
                resolution: Some(resolution),
                trigger: Some("unmerge".into()),
                ..Default::default()
            },
        )
        .await,
    ))
}
