//! Deliberate changes to what a sync's state is about, each a new state version committed
//! under the sync's lock, writing nothing to the destination:
//!
//! - [`rebind`]: the destination moved (a new server address, a database renamed) and holds the
//!   same records: the state is kept and recorded as being about the new address.
//! - [`adopt`]: records already in the destination object become the sync's own, as if it had
//!   sent them (their row hashes unknown): the next run updates those still in the model and,
//!   for a mirror, deletes the others. For a sync whose state was lost.

use datafusion::prelude::{ident, lit};
use serde::Serialize;

use super::map::{HASH, KEY};
use super::{RunOptions, SyncError, SyncRef, clear_cycle_tables, engine, existing, prepare, state};
use crate::project::Project;
use crate::state::{Chain, FORMAT_VERSION, Manifest};

/// What `state rebind` or `state adopt` did.
#[derive(Debug, Clone, Serialize)]
pub struct BindReport {
    pub sync: String,
    /// `rebound`, `adopted` or `unchanged`.
    pub outcome: &'static str,
    /// The state version committed (None when nothing changed).
    pub state_version: Option<u64>,
    /// What the state was about before, and is now (rebind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Keys taken over from the destination (adopt), and keys in state after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

fn problem(sync: &str, message: String) -> SyncError {
    SyncError::StateMismatch {
        sync: sync.to_string(),
        message,
    }
}

/// Record that the sync's state is about its destination at the address the project gives
/// now. Refused when the sync writes to another destination or object than its state is
/// about (that is a new sync: `run --full-resync`).
pub async fn rebind(
    project: &Project,
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
) -> Result<BindReport, SyncError> {
    let sync = SyncRef::new(project, ctx, name, RunOptions::default());
    let config = sync.config;
    let lock = project
        .state
        .acquire(&Chain::sync(name), &sync.run_id)
        .await?;
    let result = async {
        let Some(prev) = project.state.latest(name).await? else {
            return Err(problem(
                name,
                "it has no state yet, so there is nothing to rebind: just run it".into(),
            ));
        };
        if prev.destination != config.to || prev.object != config.object {
            return Err(problem(
                name,
                format!(
                    "its state is about {}/{} but it now writes to {}/{}: rebind only follows \
                     the same destination to a new address; a sync pointed at another \
                     destination or object starts over with `backflow run {name} --full-resync`",
                    prev.destination, prev.object, config.to, config.object
                ),
            ));
        }
        let destination = project
            .destination(&config.to)
            .ok_or_else(|| problem(name, format!("unknown destination \"{}\"", config.to)))?;
        let now = state::portable(&destination.fingerprint(&config.object), &project.dir);
        let before = prev.destination_fingerprint.clone();
        if before
            .as_deref()
            .is_some_and(|b| state::portable(b, &project.dir) == now)
        {
            return Ok(BindReport {
                sync: name.to_string(),
                outcome: "unchanged",
                state_version: None,
                from: before,
                to: Some(now),
                adopted: None,
                keys: None,
            });
        }
        // Rebind is for the same records at a new address: an object with none there is not
        // that (a wrong address, or the records are gone).
        if prev.rows > 0 {
            // (Listing keys needs no fields.)
            let target =
                sync.write_target(std::sync::Arc::new(arrow::datatypes::Schema::empty()), 0);
            let holds = existing::holds_records(destination.as_ref(), &target)
                .await
                .map_err(|source| SyncError::Destination {
                    sync: name.to_string(),
                    source,
                })?;
            if holds == Some(false) {
                return Err(problem(
                    name,
                    format!(
                        "its state holds {} records, but {now} holds none: rebind is for the same \
                         records at a new address. Check the address; if the records are gone, \
                         run `backflow run {name} --full-resync` to send them again",
                        prev.rows
                    ),
                ));
            }
        }
        let version = project.state.newest_version(name).await? + 1;
        let manifest = Manifest {
            version,
            run_id: sync.run_id.clone(),
            committed_at: chrono::Utc::now().to_rfc3339(),
            destination_fingerprint: Some(now.clone()),
            counts: None,
            snapshot_bytes: None,
            checksum: None,
            format: FORMAT_VERSION,
            ..prev
        };
        lock.confirm().await?;
        project.state.commit(&manifest).await?;
        Ok(BindReport {
            sync: name.to_string(),
            outcome: "rebound",
            state_version: Some(version),
            from: before,
            to: Some(now),
            adopted: None,
            keys: None,
        })
    }
    .await;
    lock.release().await;
    if result.is_ok() {
        project.state.vacuum(name).await;
    }
    result
}

/// Take over the records the destination object holds now: each key not in the state is
/// added with an unknown row hash. The watermark is dropped, so the next run reads the whole
/// model once and compares every adopted record with it.
pub async fn adopt(
    project: &Project,
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
) -> Result<BindReport, SyncError> {
    let sync = SyncRef::new(project, ctx, name, RunOptions::default());
    let lock = project
        .state
        .acquire(&Chain::sync(name), &sync.run_id)
        .await?;
    let result = adopt_locked(&sync, &lock).await;
    clear_cycle_tables(ctx);
    lock.release().await;
    if result.is_ok() {
        project.state.vacuum(name).await;
    }
    result
}

async fn adopt_locked(
    sync: &SyncRef<'_>,
    lock: &crate::state::SyncLock,
) -> Result<BindReport, SyncError> {
    let (project, ctx, name, config) = (sync.project, sync.ctx, sync.name, sync.config);
    let df_err = engine(name, "adopt");
    let prepared = prepare(sync).await?;
    let Some(keys) = existing::table(prepared.destination.clone(), &prepared.target) else {
        return Err(problem(
            name,
            format!(
                "destination \"{}\" cannot list the records it holds, so they cannot be \
                 adopted (adopt works with sqlite, postgres and mysql destinations and with file \
                 destinations in snapshot mode)",
                config.to
            ),
        ));
    };
    let state = ctx.table("bf_state").await.map_err(&df_err)?;
    let keep = super::state::keeps_fields(sync);
    let adopted = ctx
        .read_table(keys)
        .and_then(|df| existing::typed(df, &prepared.key_type))
        .and_then(|df| df.distinct())
        .and_then(|df| {
            let known = state.clone().select(vec![ident(KEY).alias("__bf_known")])?;
            df.join(
                known,
                datafusion::common::JoinType::LeftAnti,
                &[KEY],
                &["__bf_known"],
                None,
            )
        })
        .and_then(|df| {
            let mut columns = vec![
                ident(KEY),
                datafusion::logical_expr::cast(
                    lit(datafusion::common::ScalarValue::Null),
                    arrow::datatypes::DataType::UInt64,
                )
                .alias(HASH),
            ];
            columns.extend(super::state::unknown_fields_if(keep));
            df.select(columns)
        })
        .map_err(&df_err)?;
    let before = state.clone().count().await.map_err(&df_err)? as u64;
    let mut columns = vec![ident(KEY), ident(HASH)];
    columns.extend(super::state::fields_of(&state, keep));
    let all = state
        .select(columns)
        .and_then(|s| s.union(adopted))
        .map_err(&df_err)?;
    let version = prepared.target.version;
    let data_dir = project.state.new_data_dir(name, version);
    let snapshot = format!("{data_dir}/snapshot.parquet");
    let rows = project
        .state
        .write_plan(
            all,
            &snapshot,
            Some(super::state::state_schema_of(&prepared.key_type, keep)),
        )
        .await?;
    let previous = prepared.previous.as_ref();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        sync: name.to_string(),
        version,
        run_id: sync.run_id.clone(),
        committed_at: chrono::Utc::now().to_rfc3339(),
        snapshot,
        rows,
        deltas: Vec::new(),
        destination: config.to.clone(),
        object: config.object.clone(),
        behavior: config.behavior.to_string(),
        key: config.key.stored(),
        key_type: prepared.key_type.to_string(),
        watermark: None,
        destination_fingerprint: Some(prepared.fingerprint.clone()),
        // The hashes the state keeps were made under its mapping.
        fields: match previous {
            Some(p) => p.fields.clone(),
            None => Some(prepared.fields.clone()),
        },
        upstream: previous.and_then(|p| p.upstream),
        // What the destination holds is not known to be any version of the source.
        source_version: None,
        snapshot_bytes: None,
        counts: None,
        checksum: None,
    };
    lock.confirm().await?;
    project.state.commit(&manifest).await?;
    // The new snapshot holds the keys of interrupted runs' intents (unknown hashes).
    for rel in prepared.pending.iter().chain(&prepared.covered) {
        if let Err(e) = project.state.delete(rel).await {
            tracing::warn!(sync = name, error = %e, "could not remove an intent file");
        }
    }
    Ok(BindReport {
        sync: name.to_string(),
        outcome: "adopted",
        state_version: Some(version),
        from: None,
        to: None,
        adopted: Some(rows.saturating_sub(before)),
        keys: Some(rows),
    })
}
