//! `backflow plan ENTITY`: what the entity's next cycle would do — golden records created,
//! updated, merged, retired, records quarantined — with samples of each, and nothing written.
//!
//! The plan is the cycle itself run to the point of committing: every stage is the same plan
//! over the same state, so what it says is what a run would do. Its scratch files go to a
//! version folder of their own, removed at the end; no manifest, log or history is written
//! and no lock is taken. A run that needs several cycles (more records than `batch_size`)
//! is planned for its first.

use std::collections::BTreeSet;

use datafusion::prelude::SessionContext;
use indexmap::IndexMap;
use serde::Serialize;

use super::context::Cycle;
use super::cycle::{self, CycleOptions};
use super::show::LogEntry;
use super::{HubError, SourceCounts};
use crate::history::RunStatus;
use crate::project::Project;

/// Samples of each kind of change a plan shows.
const SAMPLES: usize = 5;

/// What the next cycle of an entity would do.
#[derive(Debug, Clone, Serialize)]
pub struct EntityPlan {
    pub entity: String,
    pub status: RunStatus,
    pub sources: IndexMap<String, SourceCounts>,
    /// Golden records that would be created.
    pub created: u64,
    /// Golden records whose values would change.
    pub updated: u64,
    /// Golden records touched whose values would stay the same.
    pub unchanged: u64,
    /// Golden records that would be merged into another.
    pub merged: u64,
    /// Golden records that would be retired (their last source record deleted).
    pub retired: u64,
    /// Source records that would go to quarantine.
    pub quarantined: u64,
    /// More records wait than one cycle reads: a run would take more cycles.
    pub more: bool,
    /// The mass-retirement guard's message when a run would stop on it.
    pub guarded: Option<String>,
    /// Up to 5 samples of each kind of change (`op` as in the log, and `quarantine`).
    pub changes: Vec<LogEntry>,
    pub duration_ms: i64,
    pub error: Option<String>,
}

/// Plan the next cycle of entity `name`.
pub async fn plan(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    full_resync: bool,
) -> EntityPlan {
    plan_cycle(project, ctx, name, full_resync, None).await
}

/// Plan the cycle that would carry out a person's decision (`hub unmerge --dry-run`): no
/// source is read.
pub async fn plan_decision(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    resolution: &super::quarantine::Resolution,
) -> EntityPlan {
    plan_cycle(project, ctx, name, false, Some(resolution)).await
}

async fn plan_cycle(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    full_resync: bool,
    resolution: Option<&super::quarantine::Resolution>,
) -> EntityPlan {
    let no_ids = std::collections::BTreeMap::new();
    let started = chrono::Utc::now().timestamp_millis();
    let run_id = format!("plan-{}", uuid::Uuid::new_v4().simple());
    let mut samples = Vec::new();
    let result = cycle::run(
        project,
        ctx,
        name,
        &run_id,
        CycleOptions {
            from_start: full_resync,
            decide_all: full_resync,
            only_ids: resolution.map(|_| &no_ids),
            detect_gone: resolution.is_none(),
            allow_retirements: false,
            retired_before: 0,
            resolution,
            dry_run: true,
        },
        &BTreeSet::new(),
        &mut samples,
        None,
    )
    .await;
    let duration_ms = chrono::Utc::now().timestamp_millis() - started;
    match result {
        Ok(o) => EntityPlan {
            entity: name.to_string(),
            status: RunStatus::Succeeded,
            quarantined: o.sources.values().map(|s| s.quarantined).sum(),
            sources: o.sources,
            created: o.created,
            updated: o.updated,
            unchanged: o.unchanged,
            merged: o.merged,
            retired: o.retired,
            more: o.more,
            guarded: o.guarded,
            changes: o.changes,
            duration_ms,
            error: None,
        },
        Err(e) => EntityPlan {
            entity: name.to_string(),
            status: RunStatus::Failed,
            sources: IndexMap::new(),
            created: 0,
            updated: 0,
            unchanged: 0,
            merged: 0,
            retired: 0,
            quarantined: 0,
            more: false,
            guarded: None,
            changes: Vec::new(),
            duration_ms,
            error: Some(e.to_string()),
        },
    }
}

/// Samples of the changes a planned cycle would make: from its log (up to [`SAMPLES`] per
/// kind) and its quarantine.
pub(super) async fn changes(cycle: &Cycle<'_>) -> Result<Vec<LogEntry>, HubError> {
    let batches = cycle
        .sql(
            "plan",
            &format!(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY op \
                   ORDER BY golden_id, field, source, source_id) AS __bf_rn FROM bf_hub_log) \
                 WHERE __bf_rn <= {SAMPLES} ORDER BY op, golden_id, field, source, source_id"
            ),
        )
        .await?
        .collect()
        .await
        .map_err(cycle.engine("plan"))?;
    let mut out: Vec<LogEntry> = batches
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |r| super::show::log_entry(b, r)))
        .collect();
    for source in cycle.entity.sources.keys() {
        for (id, reason) in super::quarantine::added(cycle, source, SAMPLES).await? {
            out.push(LogEntry {
                version: cycle.version as i64,
                at: String::new(),
                golden_id: 0,
                op: "quarantine".into(),
                field: None,
                old_value: None,
                new_value: None,
                source: Some(source.clone()),
                source_id: Some(id),
                detail: Some(reason),
                run_id: cycle.run_id.to_string(),
            });
        }
    }
    Ok(out)
}
