//! A sync cycle, as a one-way flow of DataFusion plans and Arrow batches:
//!
//! ```text
//!  read ──► map ──► diff ──────────────► apply ──────────────► state ───────────► commit
//!  model    fields,  FULL/LEFT JOIN       batches to the        next snapshot =    manifest v+1
//!  rows     key,     with last state:     destination by op;    old ANTI JOIN      (create-if-
//!  (cursor  hash     new / changed /      accepted rows to      sent ∪ sent kept   absent), then
//!  ≥ wm)             gone / invalid       sent.parquet                             watermark moves
//! ```
//!
//! Nothing is marked synced that the destination did not accept; the watermark and the
//! snapshot move together, only when the manifest commits. The keys of each batch are written
//! to `pending/` before the batch is sent (write-ahead intents): the next run treats them as
//! unknown, so whatever an interrupted run did to their records is redone or undone. A crash anywhere before that leaves
//! the previous state, and the next run sends again whatever was not committed
//! (at-least-once).

mod apply;
pub mod mapping;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::cast;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, ident, lit};
use serde::Serialize;

use crate::config::{Behavior, SyncConfig};
use crate::destinations::{DestinationError, WriteTarget};
use crate::history::{self, RunCounts, RunRecord, RunStatus, SampleRecord};
use crate::project::Project;
use crate::state::{FORMAT_VERSION, Manifest, StateError, Watermark};
use mapping::{HASH, KEY};

pub use crate::progress::{Delivery, NoProgress, Progress};
pub use apply::{row_json, scalar_text};

const DIFF_SQL: &str = include_str!("../../sql/diff.sql");
const NEXT_STATE_SQL: &str = include_str!("../../sql/next_state.sql");
const DELTAS_SQL: &str = include_str!("../../sql/state_with_deltas.sql");

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync \"{sync}\": {}", problems.join("; "))]
    Mapping { sync: String, problems: Vec<String> },
    #[error("sync \"{sync}\": {stage}: {source}")]
    Engine {
        sync: String,
        stage: &'static str,
        source: DataFusionError,
    },
    #[error("sync \"{sync}\": {message}")]
    StateMismatch { sync: String, message: String },
    #[error("sync \"{sync}\": {message}")]
    Settings { sync: String, message: String },
    #[error("sync \"{sync}\": {source}")]
    Destination {
        sync: String,
        source: DestinationError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("sync \"{sync}\": {source}")]
    Hub {
        sync: String,
        source: Box<crate::hub::HubError>,
    },
    #[error("sync \"{sync}\": injected failure at {point}")]
    Failpoint { sync: String, point: &'static str },
}

/// Stop here when the failpoint `point` is configured with this sync's name (or `*`). The
/// failpoint `point:sync` is evaluated too, for actions meant for one sync only (a test pausing
/// one run while other tests' syncs pass the same point). Compiled in only with the
/// `failpoints` feature (tests).
macro_rules! failpoint {
    ($point:expr, $sync:expr) => {
        #[cfg(not(feature = "failpoints"))]
        let _ = &$sync;
        #[cfg(feature = "failpoints")]
        {
            fail::eval(&format!("{}:{}", $point, $sync), |_| ());
            // `return(<sync>)` fails this sync here; `return(panic:<sync>)` panics.
            if let Some(Some(target)) = fail::eval($point, |arg| arg) {
                if target == format!("panic:{}", $sync) {
                    panic!("failpoint {} for sync {}", $point, $sync);
                }
                if target == $sync || target == "*" {
                    return Err(SyncError::Failpoint {
                        sync: $sync.to_string(),
                        point: $point,
                    });
                }
            }
        }
    };
}
pub(crate) use failpoint;

/// How a run treats its state.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Ignore the stored row hashes and watermark: send every row again. Deletions are still
    /// computed against the stored keys.
    pub full_resync: bool,
}

/// The outcome of one sync's run, as printed and stored in history.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub sync: String,
    pub status: RunStatus,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub behavior: Behavior,
    pub destination: String,
    pub object: String,
    pub run_id: String,
    pub duration_ms: i64,
    pub state_version: Option<u64>,
    pub watermark: Option<String>,
    pub error: Option<String>,
    /// Up to 100 invalid and 100 rejected records, with reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SampleRecord>,
}

/// What a run would do, from `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub sync: String,
    pub status: RunStatus,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub behavior: Behavior,
    pub destination: String,
    pub object: String,
    pub error: Option<String>,
    /// Up to 5 records per action (create, update, delete) and the invalid ones.
    pub samples: apply::PlanSamples,
}

/// Everything a cycle needs once the plans are built.
struct Prepared {
    diff: DataFrame,
    target: WriteTarget,
    key_type: DataType,
    cursor_type: Option<DataType>,
    /// Whether the whole model is read despite a stored watermark.
    rescan: bool,
    /// The row-hash header of this run's mapping.
    fields: String,
    destination: Arc<dyn crate::destinations::Destination>,
    fingerprint: String,
    /// The state the diff compares with (None on a first run, or when a full resync discarded
    /// a state that no longer fits).
    previous: Option<Manifest>,
    /// The newest committed version, discarded or not: the next commit is this plus one.
    latest_version: u64,
    /// Intent files of earlier, interrupted runs that this run's state includes.
    pending: Vec<String>,
    /// Intent files the newest commit already covers.
    covered: Vec<String>,
    /// For a hub write-back: the hub version it reads.
    upstream: Option<u64>,
    /// For a hub write-back: how many records its source reported since it last ran (they
    /// change the state even when nothing is sent).
    reported: u64,
}

fn engine(sync: &str, stage: &'static str) -> impl Fn(DataFusionError) -> SyncError {
    let sync = sync.to_string();
    move |source| SyncError::Engine {
        sync: sync.clone(),
        stage,
        source,
    }
}

/// Table names a cycle registers; removed before each cycle.
const CYCLE_TABLES: [&str; 8] = [
    "bf_mapped",
    "bf_state_file",
    "bf_base",
    "bf_deltas",
    "bf_state",
    "bf_prev",
    "bf_sent_file",
    "bf_sent",
];

fn clear_cycle_tables(ctx: &SessionContext) {
    for t in CYCLE_TABLES {
        let _ = ctx.deregister_table(t);
    }
}

/// `value` moved back by `lookback`.
fn behind(value: ScalarValue, lookback: &crate::config::Lookback) -> Result<ScalarValue, String> {
    use crate::config::Lookback;
    use ScalarValue::*;
    let mismatch = |v: &ScalarValue| {
        format!(
            "cursor_lookback = {lookback} does not fit a cursor of type {} (use {} for it)",
            v.data_type(),
            if v.data_type().is_numeric() {
                "a number"
            } else {
                "a duration such as \"2h\""
            }
        )
    };
    let duration = |d: &str| crate::config::parse_duration(d).unwrap_or_default();
    Ok(match (value, lookback) {
        (TimestampSecond(v, tz), Lookback::Duration(d)) => TimestampSecond(
            v.map(|v| v.saturating_sub(duration(d).as_secs() as i64)),
            tz,
        ),
        (TimestampMillisecond(v, tz), Lookback::Duration(d)) => TimestampMillisecond(
            v.map(|v| v.saturating_sub(duration(d).as_millis() as i64)),
            tz,
        ),
        (TimestampMicrosecond(v, tz), Lookback::Duration(d)) => TimestampMicrosecond(
            v.map(|v| v.saturating_sub(duration(d).as_micros() as i64)),
            tz,
        ),
        (TimestampNanosecond(v, tz), Lookback::Duration(d)) => TimestampNanosecond(
            v.map(|v| v.saturating_sub(duration(d).as_nanos() as i64)),
            tz,
        ),
        (Date32(v), Lookback::Duration(d)) => {
            Date32(v.map(|v| v.saturating_sub(duration(d).as_secs().div_ceil(86_400) as i32)))
        }
        (Date64(v), Lookback::Duration(d)) => {
            Date64(v.map(|v| v.saturating_sub(duration(d).as_millis() as i64)))
        }
        (v, Lookback::Amount(n)) if v.data_type().is_numeric() => {
            let amount = Int64(Some(*n))
                .cast_to(&v.data_type())
                .map_err(|e| format!("cursor_lookback = {n}: {e}"))?;
            v.sub_checked(&amount)
                .map_err(|e| format!("cursor_lookback = {n}: {e}"))?
        }
        (v, _) => return Err(mismatch(&v)),
    })
}

/// Parse a stored watermark back into a value of the cursor's current type.
fn watermark_value(
    sync: &str,
    wm: &Watermark,
    current: &DataType,
) -> Result<ScalarValue, SyncError> {
    let stored: DataType = wm.data_type.parse().map_err(|e| SyncError::StateMismatch {
        sync: sync.to_string(),
        message: format!("stored watermark type {} is unreadable: {e}", wm.data_type),
    })?;
    let v = ScalarValue::try_from_string(wm.value.clone(), &stored)
        .and_then(|v| v.cast_to(current))
        .map_err(|e| SyncError::StateMismatch {
            sync: sync.to_string(),
            message: format!(
                "stored watermark {} ({}) does not fit cursor column \"{}\" of type {current}: {e}; run with --full-resync",
                wm.value, wm.data_type, wm.column
            ),
        })?;
    Ok(v)
}

/// Build the read → map → diff plans for one sync.
async fn prepare(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    options: RunOptions,
) -> Result<Prepared, SyncError> {
    let sync = &project.config.syncs[name];
    clear_cycle_tables(ctx);
    let df_err = engine(name, "read");
    let mut previous = project.state.latest(name).await?;
    let latest_version = project.state.newest_version(name).await?;

    let hub_err = |source| SyncError::Hub {
        sync: name.to_string(),
        source: Box::new(source),
    };
    // A hub write-back reads the entity's newest golden records.
    let registered = match &sync.hub {
        Some(link) => Some(
            crate::hub::writeback::register(project, ctx, link)
                .await
                .map_err(hub_err)?,
        ),
        None => None,
    };
    let upstream = registered.as_ref().map(|r| r.version());
    // The hub's versions went backwards (its state was removed or rebuilt): the stored
    // watermark and what the source reported are about another history. Start over.
    let hub_restarted = matches!(
        (previous.as_ref().and_then(|p| p.upstream), upstream),
        (Some(before), Some(now)) if before > now
    );
    if hub_restarted {
        tracing::warn!(
            sync = name,
            "the hub entity's state is older than the last write-back: reading all of it again"
        );
    }
    let relation = ctx.table(sync.from.as_str()).await.map_err(&df_err)?;
    let cursor_type = match &sync.cursor {
        Some(c) => relation
            .schema()
            .field_with_unqualified_name(c)
            .ok()
            .map(|f| f.data_type().clone()),
        None => None,
    };

    let mapped = mapping::map(sync, relation).map_err(|p| SyncError::Mapping {
        sync: name.to_string(),
        problems: p.0,
    })?;
    let mapped_schema = mapped.df.schema().clone();
    let dest_fields: Vec<Field> = mapped
        .fields
        .iter()
        .filter_map(|f| mapped_schema.field_with_unqualified_name(f).ok())
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    // An empty CSV has no types to infer: its key column is NULL-typed. Keep the key type the
    // state already has then.
    let Intents {
        pending,
        covered,
        damaged,
    } = pending_intents(project, name, previous.as_ref()).await?;
    let mut key_type = dest_fields[0].data_type().clone();
    if key_type == DataType::Null {
        let stored = previous
            .as_ref()
            .and_then(|p| p.key_type.parse::<DataType>().ok())
            .filter(|t| *t != DataType::Null);
        if let Some(stored) = stored {
            key_type = stored;
        } else if let Some(t) = intent_key_type(project, ctx, &pending).await {
            key_type = t;
        }
    }
    let mut dest_fields = dest_fields;
    dest_fields[0] = dest_fields[0].clone().with_data_type(key_type.clone());
    let dest_schema: SchemaRef = Arc::new(Schema::new(dest_fields));

    let destination = project
        .destination(&sync.to)
        .ok_or_else(|| SyncError::Mapping {
            sync: name.to_string(),
            problems: vec![format!("unknown destination \"{}\"", sync.to)],
        })?;
    let fingerprint = destination.fingerprint(&sync.object);
    if let Some(prev) = &previous {
        let mut changed = Vec::new();
        if prev.destination != sync.to || prev.object != sync.object {
            changed.push(format!(
                "it now writes to {}/{} but its state is about {}/{}",
                sync.to, sync.object, prev.destination, prev.object
            ));
        } else if let Some(stored) = &prev.destination_fingerprint
            && *stored != fingerprint
        {
            changed.push(format!(
                "destination \"{}\" now means {fingerprint} but the state was written for {stored}",
                sync.to
            ));
        }
        if let (Some(wm), Some(cursor)) = (&prev.watermark, &sync.cursor)
            && wm.column != *cursor
        {
            changed.push(format!(
                "its cursor is now \"{cursor}\" but the stored watermark is for \"{}\"",
                wm.column
            ));
        }
        if prev.key != sync.key.destination() {
            changed.push(format!(
                "its key is now \"{}\" but its state is keyed by \"{}\"",
                sync.key.destination(),
                prev.key
            ));
        }
        if !changed.is_empty() {
            if options.full_resync {
                tracing::warn!(sync = name, "discarding state: {}", changed.join("; "));
                previous = None;
            } else {
                return Err(SyncError::StateMismatch {
                    sync: name.to_string(),
                    message: format!(
                        "{}; run it once with --full-resync to start over from the current model (rows synced under the old settings are not deleted)",
                        changed.join("; ")
                    ),
                });
            }
        }
    }

    // A changed mapping re-sends every row once, so a cursor sync reads the whole model once.
    let mapping_changed = previous
        .as_ref()
        .and_then(|p| p.fields.as_ref())
        .is_some_and(|f| *f != mapped.fingerprint);
    let rescan = options.full_resync || mapping_changed || hub_restarted;
    if mapping_changed && sync.cursor.is_some() {
        tracing::info!(
            sync = name,
            "the field mapping changed: reading the whole model once"
        );
    }

    // Incremental read: rows at or past the watermark (ties at the watermark are re-read and
    // dropped by the diff when unchanged). The filter is on the mapped cursor column; DataFusion
    // pushes it through the mapping down to the scan.
    let mut mapped_df = mapped.df;
    if let (Some(ct), Some(wm), false) = (
        &cursor_type,
        previous.as_ref().and_then(|p| p.watermark.as_ref()),
        rescan,
    ) {
        let mut value = watermark_value(name, wm, ct)?;
        if let Some(lookback) = &sync.cursor_lookback {
            value = behind(value, lookback).map_err(|message| SyncError::Settings {
                sync: name.to_string(),
                message,
            })?;
        }
        mapped_df = mapped_df
            .filter(ident(mapping::CURSOR).gt_eq(lit(value)))
            .map_err(&df_err)?;
    }
    let fields_fingerprint = mapped.fingerprint;
    let key_field = sync.key.destination();
    let mapped_df = mapped_df
        .clone()
        .select(
            mapped_df
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let n = f.name();
                    if (n == key_field || n == KEY) && f.data_type() != &key_type {
                        cast(ident(n), key_type.clone()).alias(n)
                    } else {
                        ident(n)
                    }
                })
                .collect::<Vec<_>>(),
        )
        .map_err(&df_err)?;
    ctx.register_table("bf_mapped", mapped_df.into_view())
        .map_err(&df_err)?;

    // What a hub write-back's source reported itself since the sync last ran: the state
    // the diff compares with takes it as what the source has (no echo).
    let mut reported_rows = 0;
    let reported = match (&sync.hub, &registered) {
        (Some(link), Some(registered)) if registered.observable => {
            let since = previous
                .as_ref()
                .and_then(|p| p.upstream)
                .filter(|_| !hub_restarted);
            let rows = crate::hub::writeback::reported(project, ctx, link, registered, since)
                .await
                .map_err(hub_err)?;
            reported_rows = rows.clone().count().await.map_err(&df_err)? as u64;
            let mapped = mapping::map(sync, rows).map_err(|p| SyncError::Mapping {
                sync: name.to_string(),
                problems: p.0,
            })?;
            Some(
                mapped
                    .df
                    .select(vec![
                        cast(ident(KEY), key_type.clone()).alias(KEY),
                        ident(HASH),
                    ])
                    .map_err(&df_err)?,
            )
        }
        _ => None,
    };
    register_state(
        project,
        ctx,
        name,
        previous.as_ref(),
        &key_type,
        options,
        &pending,
        !damaged.is_empty(),
        reported,
    )
    .await?;

    let from = if sync.cursor.is_some() {
        "model m LEFT JOIN bf_prev p ON m.__bf_key = p.__bf_key"
    } else {
        "bf_prev p FULL JOIN model m ON m.__bf_key = p.__bf_key"
    };
    let diff = ctx
        .sql(&DIFF_SQL.replace("{from}", from))
        .await
        .map_err(engine(name, "diff"))?;
    Ok(Prepared {
        diff,
        target: WriteTarget {
            sync: name.to_string(),
            object: sync.object.clone(),
            key: sync.key.destination().to_string(),
            schema: dest_schema,
            behavior: sync.behavior,
            engine: ctx.copied_config(),
            runtime: ctx.runtime_env(),
            progress: Arc::new(NoProgress),
            version: latest_version + 1,
        },
        key_type,
        cursor_type,
        rescan,
        fields: fields_fingerprint,
        destination,
        fingerprint,
        previous,
        latest_version,
        // Damaged intents go with the others once a commit covers them.
        pending: pending.into_iter().chain(damaged).collect(),
        covered,
        upstream,
        reported: reported_rows,
    })
}

/// Register `bf_state` (the last snapshot, key cast to the current key type, overlaid with
/// what a hub write-back's source `reported`) and `bf_prev` (what the diff compares with).
#[allow(clippy::too_many_arguments)]
async fn register_state(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    previous: Option<&Manifest>,
    key_type: &DataType,
    options: RunOptions,
    pending: &[String],
    damaged: bool,
    reported: Option<DataFrame>,
) -> Result<(), SyncError> {
    let df_err = engine(name, "state");
    let mut state_df = match previous {
        Some(m) => {
            ctx.register_parquet(
                "bf_state_file",
                &project.state.table_url(&m.snapshot),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(&df_err)?;
            let base = ctx
                .table("bf_state_file")
                .await
                .map_err(&df_err)?
                .select(vec![
                    cast(ident(KEY), key_type.clone()).alias(KEY),
                    ident(HASH),
                ])
                .map_err(&df_err)?;
            with_deltas(project, ctx, name, base, &m.deltas, key_type).await?
        }
        None => {
            let schema = state_schema(key_type);
            let empty = MemTable::try_new(schema, vec![vec![]]).map_err(&df_err)?;
            ctx.read_table(Arc::new(empty)).map_err(&df_err)?
        }
    };
    if let Some(reported) = reported {
        let keys = reported
            .clone()
            .select(vec![ident(KEY).alias("__bf_reported_key")])
            .map_err(&df_err)?;
        state_df = state_df
            .join(
                keys,
                datafusion::common::JoinType::LeftAnti,
                &[KEY],
                &["__bf_reported_key"],
                None,
            )
            .and_then(|s| s.union(reported))
            .map_err(&df_err)?;
    }
    // Keys an interrupted run may have written without committing: their destination record
    // may differ from what the state says (created, changed or deleted), so their hash is
    // unknown from now on. The diff then sends them again if they are in the model, and a
    // mirror deletes them if they are not.
    // An intent file that cannot be read whole (damaged after it was written) says nothing
    // about which records an interrupted run touched: every key is then unknown, and the run
    // sends every row again.
    if damaged {
        state_df = state_df
            .select(vec![
                ident(KEY),
                cast(lit(ScalarValue::Null), DataType::UInt64).alias(HASH),
            ])
            .map_err(&df_err)?;
    }
    if !pending.is_empty() {
        let urls: Vec<String> = pending.iter().map(|p| project.state.table_url(p)).collect();
        let intents = ctx
            .read_parquet(urls, ParquetReadOptions::default())
            .await
            .map_err(&df_err)?
            .select(vec![
                cast(ident(KEY), key_type.clone()).alias("__bf_pending_key"),
            ])
            .map_err(&df_err)?
            .distinct()
            .map_err(&df_err)?;
        let untouched = state_df
            .join(
                intents.clone(),
                datafusion::common::JoinType::LeftAnti,
                &[KEY],
                &["__bf_pending_key"],
                None,
            )
            .map_err(&df_err)?;
        let unknown = intents
            .select(vec![
                ident("__bf_pending_key").alias(KEY),
                cast(lit(ScalarValue::Null), DataType::UInt64).alias(HASH),
            ])
            .map_err(&df_err)?;
        state_df = untouched.union(unknown).map_err(&df_err)?;
    }
    let prev_df = if options.full_resync {
        state_df
            .clone()
            .select(vec![
                ident(KEY),
                cast(lit(ScalarValue::Null), DataType::UInt64).alias(HASH),
            ])
            .map_err(&df_err)?
    } else {
        state_df.clone()
    };
    ctx.register_table("bf_state", state_df.into_view())
        .map_err(&df_err)?;
    ctx.register_table("bf_prev", prev_df.into_view())
        .map_err(&df_err)?;
    Ok(())
}

/// The state as `base` (a snapshot) with `deltas` applied: each key's newest delta entry
/// replaces its snapshot row, or removes it (`__bf_keep` false). The deltas (what a few
/// cursor runs accepted) are the build side; the snapshot streams through.
async fn with_deltas(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    base: DataFrame,
    deltas: &[crate::state::Delta],
    key_type: &DataType,
) -> Result<DataFrame, SyncError> {
    if deltas.is_empty() {
        return Ok(base);
    }
    let df_err = engine(name, "state");
    let mut all: Option<DataFrame> = None;
    for (i, d) in deltas.iter().enumerate() {
        let part = ctx
            .read_parquet(
                project.state.table_url(&d.path),
                ParquetReadOptions::default(),
            )
            .await
            .and_then(|df| {
                df.select(vec![
                    cast(ident(KEY), key_type.clone()).alias(KEY),
                    ident(HASH),
                    ident(apply::KEEP),
                    lit(i as i64).alias("__bf_v"),
                ])
            })
            .map_err(&df_err)?;
        all = Some(match all {
            None => part,
            Some(a) => a.union(part).map_err(&df_err)?,
        });
    }
    let Some(all) = all else { return Ok(base) };
    ctx.register_table("bf_deltas", all.into_view())
        .map_err(&df_err)?;
    ctx.register_table("bf_base", base.into_view())
        .map_err(&df_err)?;
    ctx.sql(DELTAS_SQL).await.map_err(&df_err)
}

/// Intent files (relative to the state root): those of interrupted runs, which the state must
/// take into account, and those of the run that made the newest commit, which it covers (that
/// run stopped between its commit and their removal). Both are removed after the next commit.
#[derive(Debug, Default)]
struct Intents {
    /// Of interrupted runs, readable.
    pending: Vec<String>,
    /// Of the run that made the newest commit.
    covered: Vec<String>,
    /// Of interrupted runs, and damaged (they cannot be read whole).
    damaged: Vec<String>,
}

async fn pending_intents(
    project: &Project,
    name: &str,
    previous: Option<&Manifest>,
) -> Result<Intents, SyncError> {
    let mut found = Intents::default();
    for f in project.state.list_files(&pending_dir(name)).await? {
        if !f.ends_with(".parquet") {
            continue;
        }
        let rel = format!("{}/{f}", pending_dir(name));
        if previous.is_some_and(|m| f.starts_with(&format!("{}-", m.run_id))) {
            found.covered.push(rel);
            continue;
        }
        // An intent is small: it is decoded whole, so that damage anywhere in it shows here,
        // not in the middle of the run.
        let bytes = match project.state.read(&rel).await {
            Ok(b) => b,
            // Removed since it was listed (by a run that committed it).
            Err(StateError::Io { source, .. })
                if matches!(*source, object_store::Error::NotFound { .. }) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let whole = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map(|reader| reader.into_iter().all(|batch| batch.is_ok()));
        match whole {
            Ok(true) => found.pending.push(rel),
            _ => {
                tracing::warn!(
                    sync = name,
                    file = rel,
                    "an intent file is damaged: every record is sent again"
                );
                found.damaged.push(rel);
            }
        }
    }
    Ok(found)
}

/// The key type the intent files were written with (for a model too empty to have one).
async fn intent_key_type(
    project: &Project,
    ctx: &SessionContext,
    pending: &[String],
) -> Option<DataType> {
    let first = pending.first()?;
    let df = ctx
        .read_parquet(
            project.state.table_url(first),
            ParquetReadOptions::default(),
        )
        .await
        .ok()?;
    df.schema().fields().first().map(|f| f.data_type().clone())
}

/// Where a sync's write-ahead intents live (relative to the state root).
fn pending_dir(sync: &str) -> String {
    format!("syncs/{sync}/pending")
}

/// The snapshot schema: every key in sync with its row hash.
pub fn state_schema(key_type: &DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(KEY, key_type.clone(), true),
        Field::new(HASH, DataType::UInt64, true),
    ]))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Run one sync: diff, write the changes, commit the state, record history.
pub async fn run(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    options: RunOptions,
    progress: Arc<dyn Progress>,
) -> SyncReport {
    let started = now_ms();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let sync = &project.config.syncs[name];
    let mut tally = apply::Tally::default();
    let result = run_cycle(
        project, ctx, name, sync, options, &run_id, &mut tally, progress,
    )
    .await;
    clear_cycle_tables(ctx);
    // Rows a CSV source left out never reached the model: invalid records of this sync.
    let (quarantined, rows) = project.quarantined(&sync.from);
    tally.counts.invalid += quarantined;
    for r in rows {
        tally.sample(
            history::RecordKind::Invalid,
            None,
            format!(
                "source {} {} line {}: {}",
                r.source, r.file, r.line, r.reason
            ),
            serde_json::json!({ "line": r.line, "row": r.record }).to_string(),
        );
    }
    let (status, version, watermark, error) = match result {
        Ok((v, wm)) => (RunStatus::Succeeded, Some(v), wm, None),
        Err(e) => (RunStatus::Failed, None, None, Some(e.to_string())),
    };
    let finished = now_ms();
    let record = RunRecord {
        run_id: run_id.clone(),
        sync: name.to_string(),
        status,
        started_at_ms: started,
        finished_at_ms: finished,
        full_resync: options.full_resync,
        counts: tally.counts.clone(),
        state_version: version,
        error: error.clone(),
    };
    let mut error = error;
    if let Err(e) = history::record(&project.state, &record, &tally.samples).await {
        tracing::warn!(sync = name, error = %e, "could not record run history");
        let note = format!("run history was not recorded: {e}");
        error = Some(match error {
            Some(prev) => format!("{prev}; {note}"),
            None => note,
        });
    }
    SyncReport {
        sync: name.to_string(),
        status,
        counts: tally.counts,
        behavior: sync.behavior,
        destination: sync.to.clone(),
        object: sync.object.clone(),
        run_id,
        duration_ms: finished - started,
        state_version: version,
        watermark,
        error,
        samples: tally.samples,
    }
}

/// One cycle under the sync's lock (given up when it ends, however it ends: a lease left
/// behind would turn the next run away until it expires).
#[allow(clippy::too_many_arguments)]
async fn run_cycle(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    sync: &SyncConfig,
    options: RunOptions,
    run_id: &str,
    tally: &mut apply::Tally,
    progress: Arc<dyn Progress>,
) -> Result<(u64, Option<String>), SyncError> {
    let lock = project
        .state
        .acquire(&crate::state::Chain::sync(name), run_id)
        .await?;
    let result = locked_cycle(
        project, ctx, name, sync, options, run_id, tally, progress, &lock,
    )
    .await;
    lock.release().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn locked_cycle(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    sync: &SyncConfig,
    options: RunOptions,
    run_id: &str,
    tally: &mut apply::Tally,
    progress: Arc<dyn Progress>,
    lock: &crate::state::SyncLock,
) -> Result<(u64, Option<String>), SyncError> {
    let mut prepared = prepare(project, ctx, name, options).await?;
    prepared.target.progress = progress.clone();
    let destination = prepared.destination.clone();
    failpoint!("after_diff", name);

    let version = prepared.latest_version + 1;
    let data_dir = project.state.new_data_dir(name, version);
    let dest_err = |source| SyncError::Destination {
        sync: name.to_string(),
        source,
    };
    let mut writer = destination.open(&prepared.target).await.map_err(dest_err)?;
    let sent_rel = format!("{data_dir}/sent.parquet");
    let mut sent = apply::SentWriter::new(&project.state, &sent_rel, &prepared.key_type)?;
    // Keys about to be written are written down first (write-ahead), so that a crash between
    // the destination write and the commit cannot leave a record that differs from what the
    // state says. Append-only, create-only and delete syncs need none: they never act on a
    // record that is in their state.
    let mut intents = matches!(
        sync.behavior,
        Behavior::Upsert | Behavior::UpdateOnly | Behavior::Mirror
    )
    .then(|| {
        apply::IntentLog::new(&project.state, &pending_dir(name), run_id).with_fence(lock.fence())
    });

    let stream = prepared
        .diff
        .clone()
        .execute_stream()
        .await
        .map_err(engine(name, "diff"))?;
    let started = std::time::Instant::now();
    let guards = apply::Guards {
        fence: lock.fence(),
        hold_deletes: project.quarantined(&sync.from).0 > 0,
    };
    let cursors = apply::apply(
        name,
        &prepared.target,
        prepared.cursor_type.as_ref(),
        options.full_resync,
        stream,
        writer.as_mut(),
        &mut sent,
        intents.as_mut(),
        &guards,
        tally,
        progress.as_ref(),
    )
    .await?;
    tracing::info!(
        sync = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "diff and apply done"
    );
    failpoint!("before_finish", name);
    // The destination's writes land here for some (files): only under a lease still held.
    lock.confirm().await?;
    let started = std::time::Instant::now();
    let finished = writer.finish().await.map_err(dest_err)?;
    tracing::info!(
        sync = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "destination finished"
    );
    let started = std::time::Instant::now();
    failpoint!("after_destination_write", name);
    tally.finished(&prepared.target.key, &finished);
    let new_keys = sent.new_keys;
    let sent_rows = sent.close().await?;
    let late = finished.rejected;

    // The next state: unchanged when nothing was accepted; for a cursor run (few rows, many
    // keys in state) the last one plus what it accepted, as a delta; else a new snapshot, a
    // plan over the last state and what was accepted (which folds the deltas in).
    let plain = late.is_empty() && prepared.pending.is_empty() && prepared.reported == 0;
    let (snapshot_rel, rows, deltas) = match &prepared.previous {
        Some(prev) if sent_rows == 0 && plain => {
            (prev.snapshot.clone(), prev.rows, prev.deltas.clone())
        }
        Some(prev)
            if plain
                && sync.cursor.is_some()
                && !prepared.rescan
                && delta_fits(prev, sent_rows) =>
        {
            let mut deltas = prev.deltas.clone();
            deltas.push(crate::state::Delta {
                path: sent_rel.clone(),
                rows: sent_rows,
                bytes: None,
            });
            (prev.snapshot.clone(), prev.rows + new_keys, deltas)
        }
        _ => {
            let (rel, rows) = next_snapshot(
                project,
                ctx,
                name,
                &prepared.key_type,
                &data_dir,
                &sent_rel,
                &late,
            )
            .await?;
            (rel, rows, Vec::new())
        }
    };

    tracing::info!(
        sync = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    // The watermark moves to the highest cursor read, or stops at the lowest rejected row. Rows
    // a destination rejected only in `finish` have no cursor at hand: the watermark then stays
    // where it was, so the next run reads them again.
    let previous_watermark = prepared
        .previous
        .as_ref()
        .and_then(|p| p.watermark.clone())
        .filter(|_| !prepared.rescan);
    let watermark = match &sync.cursor {
        None => None,
        Some(_) if !late.is_empty() => previous_watermark,
        Some(column) => match cursors.next_watermark() {
            Some(value) => Some(Watermark {
                column: column.clone(),
                data_type: value.data_type().to_string(),
                value: apply::scalar_text(&value),
            }),
            None => previous_watermark,
        },
    };
    let manifest = Manifest {
        format: FORMAT_VERSION,
        sync: name.to_string(),
        version,
        run_id: run_id.to_string(),
        committed_at: chrono::Utc::now().to_rfc3339(),
        snapshot: snapshot_rel,
        rows,
        destination: sync.to.clone(),
        object: sync.object.clone(),
        behavior: sync.behavior.to_string(),
        key: sync.key.destination().to_string(),
        key_type: prepared.key_type.to_string(),
        watermark: watermark.clone(),
        destination_fingerprint: Some(prepared.fingerprint.clone()),
        fields: Some(prepared.fields.clone()),
        upstream: prepared.upstream,
        deltas,
        // Filled in by the commit.
        snapshot_bytes: None,
        checksum: None,
    };
    failpoint!("before_commit", name);
    lock.confirm().await?;
    project.state.commit(&manifest).await?;
    failpoint!("after_commit", name);
    // The committed snapshot covers every intent read or written by this run.
    let own = intents.map(|i| i.files).unwrap_or_default();
    for rel in prepared
        .pending
        .iter()
        .chain(&prepared.covered)
        .chain(own.iter())
    {
        if let Err(e) = project.state.delete(rel).await {
            tracing::warn!(sync = name, error = %e, "could not remove an intent file");
        }
    }
    project.state.vacuum(name).await;
    Ok((version, watermark.map(|w| w.value)))
}

/// Deltas a state takes before they are folded into a new snapshot.
const MAX_DELTAS: usize = 16;

/// Whether a run that accepted `sent` rows may add them to `prev` as a delta: few deltas, and
/// all of them a small share of the state (reading them with every run must stay cheaper than
/// writing the snapshot again).
fn delta_fits(prev: &Manifest, sent: u64) -> bool {
    let pending: u64 = prev.deltas.iter().map(|d| d.rows).sum();
    prev.deltas.len() < MAX_DELTAS && (pending + sent).saturating_mul(4) <= prev.rows
}

/// Write the sync's next snapshot: `sql/next_state.sql` over the last snapshot and `sent`
/// (minus late rejections). Returns its path (relative to the state root) and row count.
async fn next_snapshot(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    key_type: &DataType,
    data_dir: &str,
    sent_rel: &str,
    late: &[crate::destinations::LateRejection],
) -> Result<(String, u64), SyncError> {
    let df_err = engine(name, "state");
    ctx.register_parquet(
        "bf_sent_file",
        &project.state.table_url(sent_rel),
        ParquetReadOptions::default(),
    )
    .await
    .map_err(&df_err)?;
    let mut sent_df = ctx.table("bf_sent_file").await.map_err(&df_err)?;
    if !late.is_empty() {
        let keys: Vec<ScalarValue> = late.iter().map(|l| l.key.clone()).collect();
        let keys = ScalarValue::iter_to_array(keys).map_err(&df_err)?;
        let keys = arrow::compute::cast(&keys, key_type).map_err(|e| df_err(e.into()))?;
        let batch = arrow::array::RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "__bf_late_key",
                key_type.clone(),
                true,
            )])),
            vec![keys],
        )
        .map_err(|e| df_err(e.into()))?;
        let late_df = ctx.read_batch(batch).map_err(&df_err)?;
        sent_df = sent_df
            .join(
                late_df,
                datafusion::common::JoinType::LeftAnti,
                &[KEY],
                &["__bf_late_key"],
                None,
            )
            .map_err(&df_err)?;
    }
    ctx.register_table("bf_sent", sent_df.into_view())
        .map_err(&df_err)?;
    let next = ctx.sql(NEXT_STATE_SQL).await.map_err(&df_err)?;
    let snapshot_rel = format!("{data_dir}/snapshot.parquet");
    let rows = project
        .state
        .write_plan(next, &snapshot_rel, Some(state_schema(key_type)))
        .await?;
    Ok((snapshot_rel, rows))
}

/// Dry run: what a run would create, update and delete, with samples. Writes nothing.
pub async fn plan(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    options: RunOptions,
) -> PlanReport {
    let sync = &project.config.syncs[name];
    let mut tally = apply::Tally::default();
    let mut samples = apply::PlanSamples::default();
    let result = async {
        let prepared = prepare(project, ctx, name, options).await?;
        let stream = prepared
            .diff
            .execute_stream()
            .await
            .map_err(engine(name, "diff"))?;
        apply::plan(name, &prepared.target, stream, &mut tally, &mut samples).await
    }
    .await;
    clear_cycle_tables(ctx);
    let (status, error) = match result {
        Ok(()) => (RunStatus::Succeeded, None),
        Err(e) => (RunStatus::Failed, Some(e.to_string())),
    };
    PlanReport {
        sync: name.to_string(),
        status,
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
/// written, and the stored state (if any) is readable and matches.
pub async fn check(project: &Project, ctx: &SessionContext, name: &str) -> Result<(), SyncError> {
    let prepared = prepare(project, ctx, name, RunOptions::default()).await;
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
    Ok(())
}

/// The physical plan of a sync's read and diff, as text. It shows what reaches each source:
/// for a database source, the SQL sent to the server (with the watermark filter). Writes
/// nothing.
pub async fn explain(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
) -> Result<String, SyncError> {
    let result = async {
        let prepared = prepare(project, ctx, name, RunOptions::default()).await?;
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
