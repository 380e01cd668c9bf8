//! Commands that look without writing: `plan` (what a run would send, counted and sampled),
//! `check` (the sync against the real schemas and its destination) and `explain` (the physical
//! plan of its read and diff). Each builds the same plans as a run ([`super::prepare`]).

use arrow::compute::filter_record_batch;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::apply::{Counter, action, destination_batch, tally_invalid};
use super::diff::{CHANGED, GONE, NEW, UNCHANGED, UNOWNED, mask, model_rows, ops_of};
use super::report::{PlanReport, PlanSamples, Tally};
use super::{RunOptions, SyncError, SyncRef, clear_cycle_tables, engine, prepare};
use crate::destinations::WriteTarget;
use crate::history::RunStatus;
use crate::project::Project;
use crate::values::row_json;

/// Dry run: what a run would create, update and delete, with samples. Writes nothing.
pub async fn plan(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    options: RunOptions,
) -> PlanReport {
    let started = std::time::Instant::now();
    let sync = SyncRef::new(project, ctx, name, options);
    let run_id = sync.run_id.clone();
    let mut tally = Tally::default();
    let mut samples = PlanSamples::default();
    let result = async {
        let prepared = prepare(&sync).await?;
        let stream = prepared
            .diff
            .execute_stream()
            .await
            .map_err(engine(name, "diff"))?;
        // Rows a CSV source leaves out are invalid records, and the deletes they may be are
        // held back (as a run does).
        let (quarantined, _) = project.quarantined(&sync.config.from);
        tally.counts.invalid += quarantined;
        let hold_deletes = quarantined > 0;
        count(
            name,
            &prepared.target,
            stream,
            &mut tally,
            &mut samples,
            hold_deletes,
        )
        .await?;
        // What the guard would say of a run.
        let guarded = match (&prepared.previous, super::guard::limit(&sync)) {
            (Some(_), Some(_)) if !hold_deletes => {
                let (in_sync, deletes) = super::guard::count(&sync, prepared.scope).await?;
                super::guard::tripped(&sync, deletes, in_sync)
            }
            _ => None,
        };
        Ok::<_, SyncError>(guarded)
    }
    .await;
    let mut warnings = super::report::warnings(name, sync.config.behavior, &tally.counts);
    if let Ok(Some(stop)) = &result {
        warnings.push(format!("a run would stop here: {stop}"));
    }
    clear_cycle_tables(ctx);
    let sync = sync.config;
    let (status, error) = match result {
        Ok(_) => (RunStatus::Succeeded, None),
        Err(e) => (RunStatus::Failed, Some(e.to_string())),
    };
    PlanReport {
        sync: name.to_string(),
        run_id,
        duration_ms: started.elapsed().as_millis() as i64,
        status,
        warnings,
        counts: tally.counts,
        behavior: sync.behavior,
        destination: sync.to.clone(),
        object: sync.object.clone(),
        error,
        samples,
    }
}

/// Validate one sync against the real schemas (reads source metadata, writes nothing):
/// key, cursor and mapped columns exist, computed fields parse, the destination could be
/// written, and the stored state (if any) is readable and matches. Returns warnings: a
/// mirror without state whose destination object already holds records.
pub async fn check(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
) -> Result<Vec<String>, SyncError> {
    let sync = SyncRef::new(project, ctx, name, RunOptions::default());
    let prepared = prepare(&sync).await;
    clear_cycle_tables(ctx);
    let prepared = prepared?;
    prepared
        .destination
        .check(&prepared.target)
        .await
        .map_err(|source| SyncError::Destination {
            sync: name.to_string(),
            source,
        })?;
    // Building the physical plan catches type errors in computed fields and filters.
    prepared
        .diff
        .create_physical_plan()
        .await
        .map_err(engine(name, "plan"))?;
    let mut warnings = Vec::new();
    if prepared.previous.is_none()
        && sync.config.behavior == crate::behavior::Behavior::Mirror
        && super::existing::holds_records(prepared.destination.as_ref(), &prepared.target)
            .await
            .map_err(|source| SyncError::Destination {
                sync: name.to_string(),
                source,
            })?
            == Some(true)
    {
        warnings.push(format!(
            "sync \"{name}\" has no state, but its destination object already holds records: \
             a run updates those that are in the model and leaves the others alone (a mirror \
             does not delete what nothing says it created). If backflow created them (its state \
             was lost or reset), `backflow state adopt {name}` takes them over"
        ));
    }
    Ok(warnings)
}

/// The physical plan of a sync's read and diff, as text. It shows what reaches each source:
/// for a database source, the SQL sent to the server (with the watermark filter). Writes
/// nothing.
pub async fn explain(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
) -> Result<String, SyncError> {
    let sync = SyncRef::new(project, ctx, name, RunOptions::default());
    let result = async {
        let prepared = prepare(&sync).await?;
        let plan = prepared
            .diff
            .create_physical_plan()
            .await
            .map_err(engine(name, "plan"))?;
        Ok(datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string())
    }
    .await;
    clear_cycle_tables(ctx);
    result
}

const PLAN_SAMPLE: usize = 5;

/// Count what a run would do, without writing anything.
pub(super) async fn count(
    sync: &str,
    target: &WriteTarget,
    mut stream: SendableRecordBatchStream,
    tally: &mut Tally,
    samples: &mut PlanSamples,
    hold_deletes: bool,
) -> Result<(), SyncError> {
    let df_err = engine(sync, "diff");
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(&df_err)?;
        let ops = ops_of(sync, &batch)?;
        tally.counts.read += model_rows(&ops).true_count() as u64;
        tally.counts.unowned += mask(&ops, UNOWNED).true_count() as u64;
        tally.counts.unchanged += mask(&ops, UNCHANGED).true_count() as u64;
        tally_invalid(target, &batch, &ops, tally);
        for class in [NEW, CHANGED, GONE] {
            let m = mask(&ops, class);
            let n = m.true_count();
            if n == 0 {
                continue;
            }
            if class == GONE && hold_deletes {
                tally.counts.held += n as u64;
                continue;
            }
            let Some((op, counter)) = action(target, class, false) else {
                if class != GONE {
                    tally.counts.unchanged += n as u64;
                }
                continue;
            };
            if counter == Counter::Forgotten {
                continue;
            }
            // Rows whose lookups find nothing (database destinations: the diff's join) would
            // be rejected.
            let mut n = n as u64;
            if op != Some(crate::destinations::WriteOp::Delete)
                && batch.column_by_name(super::lookup::REASON).is_some()
            {
                let rows = filter_record_batch(&batch, &m).map_err(|e| df_err(e.into()))?;
                let failed = super::lookup::failures(&rows);
                n -= failed.len() as u64;
                tally.counts.rejected += failed.len() as u64;
                let keys = rows.column_by_name(crate::sync::map::KEY).cloned();
                for (row, reason) in failed {
                    let key = keys.as_ref().and_then(|k| crate::values::cell_text(k, row));
                    let record = destination_batch(
                        target,
                        &rows,
                        crate::destinations::WriteOp::Upsert,
                        false,
                    )
                    .map(|v| row_json(&v, row))
                    .unwrap_or_default();
                    tally.sample(crate::history::RecordKind::Rejected, key, reason, record);
                }
            }
            let (list, count) = match counter {
                Counter::Created => (&mut samples.create, &mut tally.counts.created),
                Counter::Updated => (&mut samples.update, &mut tally.counts.updated),
                Counter::Deleted => (&mut samples.delete, &mut tally.counts.deleted),
                Counter::Forgotten => continue,
            };
            *count += n;
            if list.len() < PLAN_SAMPLE
                && let Some(op) = op
            {
                let mut rows = filter_record_batch(&batch, &m).map_err(|e| df_err(e.into()))?;
                if let Some(reason) = rows.column_by_name(super::lookup::REASON)
                    && op != crate::destinations::WriteOp::Delete
                {
                    let ok = arrow::compute::is_null(reason).map_err(|e| df_err(e.into()))?;
                    rows = filter_record_batch(&rows, &ok).map_err(|e| df_err(e.into()))?;
                }
                let view = destination_batch(target, &rows, op, class == GONE)
                    .map_err(|e| df_err(e.into()))?;
                for r in 0..view.num_rows().min(PLAN_SAMPLE - list.len()) {
                    list.push(
                        serde_json::from_str(&row_json(&view, r))
                            .unwrap_or(serde_json::Value::Null),
                    );
                }
            }
        }
    }
    samples.invalid = std::mem::take(&mut tally.samples);
    Ok(())
}
