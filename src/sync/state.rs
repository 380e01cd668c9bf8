//! The sync's state: the keys in sync with their row hashes. A snapshot (Parquet), plus up to
//! [`MAX_DELTAS`] deltas that small runs added; what the diff compares with ([`register`]:
//! `bf_state`, `bf_prev`); what a run accepted (`sent.parquet`, [`SentWriter`]); and the next
//! state ([`next`]): unchanged, the last one plus a delta, or a new snapshot written by
//! `sql/next_state.sql`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::cast;
use datafusion::prelude::{DataFrame, ParquetReadOptions, ident, lit};

use super::intents::Intents;
use super::map::{FIELDS, HASH, KEY, fields_type};
use super::{SyncError, SyncRef, engine};
use crate::destinations::LateRejection;
use crate::state::{Delta, Manifest, StateError, StateStore};

const NEXT_STATE_SQL: &str = include_str!("../../sql/next_state.sql");
const DELTAS_SQL: &str = include_str!("../../sql/state_with_deltas.sql");

/// `sent.parquet` and deltas: whether the key stays in state (false: it left it).
pub(crate) const KEEP: &str = "__bf_keep";

/// Whether the sync's state keeps a hash per field besides the row's (`send = "changed"`):
/// then snapshots, deltas and `sent.parquet` have a [`FIELDS`] column too.
pub(super) fn keeps_fields(sync: &SyncRef<'_>) -> bool {
    sync.config.send == crate::config::SendMode::Changed
}

/// [`FIELDS`] of `df` for a sync that keeps them: the column when `df` has it (a state
/// written before the sync set `send = "changed"` has not: its fields are unknown), else NULL;
/// nothing for a sync that does not keep them.
pub(super) fn fields_of(df: &DataFrame, keep: bool) -> Vec<datafusion::prelude::Expr> {
    if !keep {
        return Vec::new();
    }
    // (Parquet files are read with their binary columns as views; a state written before the
    // hashes were packed holds a list, which says nothing now: unknown.)
    let has = df
        .schema()
        .field_with_unqualified_name(FIELDS)
        .is_ok_and(|f| {
            matches!(
                f.data_type(),
                DataType::Binary | DataType::BinaryView | DataType::LargeBinary
            )
        });
    vec![if has {
        cast(ident(FIELDS), fields_type()).alias(FIELDS)
    } else {
        unknown_fields()
    }]
}

/// Per-field hashes that are not known (NULL): every field counts as changed.
pub(super) fn unknown_fields() -> datafusion::prelude::Expr {
    cast(lit(ScalarValue::Null), fields_type()).alias(FIELDS)
}

/// `[NULL per-field hashes]` for a sync that keeps them, else nothing.
pub(super) fn unknown_fields_if(keep: bool) -> Vec<datafusion::prelude::Expr> {
    if keep {
        vec![unknown_fields()]
    } else {
        Vec::new()
    }
}

/// The state SQL (`next_state.sql`, `state_with_deltas.sql`, `diff.sql`) with its `{fields}`
/// placeholders filled: the per-field hash column where the sync keeps them.
pub(super) fn fields_sql(sql: &str, keep: bool) -> String {
    if keep {
        sql.replace("{s.fields}", &format!(", s.{FIELDS}"))
            .replace("{p.fields}", &format!(", p.{FIELDS} AS __bf_prev_fields"))
            .replace("{fields}", &format!(", {FIELDS}"))
    } else {
        sql.replace("{s.fields}", "")
            .replace("{p.fields}", "")
            .replace("{fields}", "")
    }
}

/// A destination's fingerprint with the project's own folder written as `<project>/`: what
/// the state records, so that it stays valid when the project moves (a re-clone, a renamed
/// folder). A place outside the project stays absolute: moving the project does not move it.
/// (A fingerprint stored before this was done is absolute; it is read the same way, so a
/// project that has not moved keeps its state.)
pub(super) fn portable(fingerprint: &str, project_dir: &std::path::Path) -> String {
    let plain = format!(
        "{}/",
        project_dir.display().to_string().trim_end_matches('/')
    );
    let mut out = anchored_replace(fingerprint, &plain);
    if let Ok(url) = url::Url::from_directory_path(project_dir) {
        out = anchored_replace(&out, url.path());
    }
    out
}

/// `text` with each `dir` that starts a path (right after `:` or a URL's `//`) written as
/// `<project>/`; the same characters in the middle of another path are left alone.
fn anchored_replace(text: &str, dir: &str) -> String {
    if dir == "/" || dir.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (at, _) in text.match_indices(dir) {
        let before = &text[..at];
        if at >= rest && (before.ends_with(':') || before.ends_with("//")) {
            out.push_str(&text[rest..at]);
            out.push_str("<project>/");
            rest = at + dir.len();
        }
    }
    out.push_str(&text[rest..]);
    out
}

/// Whether the stored state still describes this sync: the same destination object (and what
/// the destination resolves to), cursor column and key. When it does not, a full resync
/// discards it (None); any other run stops with what changed.
pub(super) fn fits(
    sync: &SyncRef<'_>,
    previous: Option<Manifest>,
    fingerprint: &str,
) -> Result<Option<Manifest>, SyncError> {
    let (config, name) = (sync.config, sync.name);
    let Some(prev) = previous else {
        return Ok(None);
    };
    let mut changed = Vec::new();
    let mut moved_only = false;
    if prev.destination != config.to || prev.object != config.object {
        changed.push(format!(
            "it now writes to {}/{} but its state is about {}/{}",
            config.to, config.object, prev.destination, prev.object
        ));
    } else if let Some(stored) = &prev.destination_fingerprint
        && portable(stored, &sync.project.dir) != fingerprint
    {
        moved_only = true;
        changed.push(format!(
            "destination \"{}\" now means {fingerprint} but the state was written for {stored}",
            config.to
        ));
    }
    if let (Some(wm), Some(cursor)) = (&prev.watermark, &config.cursor)
        && wm.column != *cursor
    {
        changed.push(format!(
            "its cursor is now \"{cursor}\" but the stored watermark is for \"{}\"",
            wm.column
        ));
    }
    let key_changed = prev.key != config.key.stored();
    if key_changed {
        changed.push(format!(
            "its key is now {} but its state is keyed by {}",
            config.key.stored(),
            prev.key
        ));
    }
    if changed.is_empty() {
        return Ok(Some(prev));
    }
    if sync.options.full_resync {
        tracing::warn!(sync = name, "discarding state: {}", changed.join("; "));
        return Ok(None);
    }
    // Only the destination's address changed: the records may well be the same ones.
    let moved = changed.len() == 1 && moved_only;
    let advice = if key_changed {
        "a new key is a new identity for every record, and the destination matches records \
         by it: when the records there already hold the new key's values, run it once with \
         --full-resync; when they do not (the column is new or empty), point the sync at a \
         new object, or empty this one, and then run it with --full-resync (otherwise every \
         record would be sent again as a new one and refused or duplicated)"
            .to_string()
    } else if moved {
        format!(
            "if it is the same destination at a new address (the same records), run \
             `backflow state rebind {name}` to keep the state; otherwise run it once with \
             --full-resync to start over from the current model"
        )
    } else {
        format!(
            "run it once with --full-resync to start over from the current model (records \
             synced under the old settings are then not deleted by a mirror; if they should be, \
             run `backflow state adopt {name}` after that run)"
        )
    };
    Err(SyncError::StateMismatch {
        sync: name.to_string(),
        message: format!("{}; {advice}", changed.join("; ")),
    })
}

/// Register `bf_state` (the last snapshot, key cast to the current key type, overlaid with
/// what a hub write-back's source `reported`) and `bf_prev` (what the diff compares with: the
/// destination's `foreign` keys instead, for a sync without state).
pub(super) async fn register(
    sync: &SyncRef<'_>,
    previous: Option<&Manifest>,
    key_type: &DataType,
    intents: &Intents,
    reported: Option<DataFrame>,
    foreign: Option<DataFrame>,
) -> Result<(), SyncError> {
    let (project, ctx, name) = (sync.project, sync.ctx, sync.name);
    let pending = &intents.pending;
    let damaged = !intents.damaged.is_empty();
    let df_err = engine(name, "state");
    let keep = keeps_fields(sync);
    let mut state_df = match previous {
        Some(m) => {
            ctx.register_parquet(
                "bf_state_file",
                &project.state.table_url(&m.snapshot),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(&df_err)?;
            let file = ctx.table("bf_state_file").await.map_err(&df_err)?;
            let mut columns = vec![cast(ident(KEY), key_type.clone()).alias(KEY), ident(HASH)];
            columns.extend(fields_of(&file, keep));
            let base = file.select(columns).map_err(&df_err)?;
            with_deltas(sync, base, &m.deltas, key_type).await?
        }
        None => {
            let schema = state_schema_of(key_type, keep);
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
        let mut columns = vec![
            ident(KEY),
            cast(lit(ScalarValue::Null), DataType::UInt64).alias(HASH),
        ];
        columns.extend(unknown_fields_if(keep));
        state_df = state_df.select(columns).map_err(&df_err)?;
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
        let mut columns = vec![
            ident("__bf_pending_key").alias(KEY),
            cast(lit(ScalarValue::Null), DataType::UInt64).alias(HASH),
        ];
        columns.extend(unknown_fields_if(keep));
        let unknown = intents.select(columns).map_err(&df_err)?;
        state_df = untouched.union(unknown).map_err(&df_err)?;
    }
    // A sync without state compares with the destination's keys, every hash unknown (see
    // `existing`).
    let unknown = || {
        let mut columns = vec![
            ident(KEY),
            cast(lit(ScalarValue::Null), DataType::UInt64).alias(HASH),
        ];
        columns.extend(unknown_fields_if(keep));
        columns
    };
    let prev_df = if let Some(keys) = foreign {
        keys.select(unknown()).map_err(&df_err)?
    } else if sync.options.full_resync || sync.options.sample.is_some() {
        // (A test run sends the rows it picked whatever the state says of them.)
        state_df.clone().select(unknown()).map_err(&df_err)?
    } else {
        state_df.clone()
    };
    // A run for given keys compares them with what the state says of those keys only: a key
    // the state holds and the model lacks is gone, the others are not the run's business.
    let prev_df = match &sync.options.only_keys {
        Some(keys) => {
            let composite = sync.config.key.is_composite();
            let wanted = super::keys_filter(sync, key_type, keys, "keys", |_, field| {
                if composite {
                    datafusion::functions::core::expr_fn::get_field(ident(KEY), field)
                } else {
                    ident(KEY)
                }
            })?;
            prev_df.filter(wanted).map_err(&df_err)?
        }
        None => prev_df,
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
    sync: &SyncRef<'_>,
    base: DataFrame,
    deltas: &[Delta],
    key_type: &DataType,
) -> Result<DataFrame, SyncError> {
    if deltas.is_empty() {
        return Ok(base);
    }
    let (project, ctx, name) = (sync.project, sync.ctx, sync.name);
    let df_err = engine(name, "state");
    let keep = keeps_fields(sync);
    let mut all: Option<DataFrame> = None;
    for (i, d) in deltas.iter().enumerate() {
        let part = ctx
            .read_parquet(
                project.state.table_url(&d.path),
                ParquetReadOptions::default(),
            )
            .await
            .and_then(|df| {
                let mut columns = vec![cast(ident(KEY), key_type.clone()).alias(KEY), ident(HASH)];
                columns.extend(fields_of(&df, keep));
                columns.push(ident(KEEP));
                columns.push(lit(i as i64).alias("__bf_v"));
                df.select(columns)
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
    ctx.sql(&fields_sql(DELTAS_SQL, keep))
        .await
        .map_err(&df_err)
}

/// `sent.parquet`: one row per key the destination accepted in this run.
pub struct SentWriter {
    /// Keys written that the state did not have (new rows accepted and kept).
    pub new_keys: u64,
    /// Keys written that leave the state (deleted, forgotten).
    pub left_keys: u64,
    store: StateStore,
    /// Encoded on a task of its own, overlapping the diff (see `background_writer`).
    writer: crate::background_writer::BackgroundWriter,
    schema: SchemaRef,
    rel: String,
    rows: u64,
}

impl SentWriter {
    /// `fields`: the sync keeps per-field hashes (see [`keeps_fields`]).
    pub fn new(
        store: &StateStore,
        rel: &str,
        key_type: &DataType,
        fields: bool,
    ) -> Result<Self, StateError> {
        let mut columns = vec![
            Field::new(KEY, key_type.clone(), true),
            Field::new(HASH, DataType::UInt64, true),
        ];
        if fields {
            columns.push(Field::new(FIELDS, fields_type(), true));
        }
        columns.push(Field::new(KEEP, DataType::Boolean, false));
        let schema = Arc::new(Schema::new(columns));
        Ok(SentWriter {
            new_keys: 0,
            left_keys: 0,
            store: store.clone(),
            writer: crate::background_writer::BackgroundWriter::spawn(
                store.parquet_writer(rel, schema.clone())?,
            ),
            schema,
            rel: rel.to_string(),
            rows: 0,
        })
    }

    /// `fields`: the per-field hashes, for a writer made to keep them (NULL: unknown).
    pub(super) async fn write(
        &mut self,
        keys: ArrayRef,
        hashes: ArrayRef,
        fields: Option<ArrayRef>,
        keep: bool,
    ) -> Result<(), SyncError> {
        let mut keep_col = BooleanBuilder::with_capacity(keys.len());
        keep_col.append_n(keys.len(), keep);
        let n = keys.len();
        let mut columns = vec![keys, hashes];
        if self.schema.column_with_name(FIELDS).is_some() {
            columns.push(fields.unwrap_or_else(|| arrow::array::new_null_array(&fields_type(), n)));
        }
        columns.push(Arc::new(keep_col.finish()));
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| self.err(e.into()))?;
        let n = batch.num_rows() as u64;
        if let Err(e) = self.writer.write(batch).await {
            return Err(self.err(e));
        }
        self.rows += n;
        Ok(())
    }

    fn err(&self, source: parquet::errors::ParquetError) -> SyncError {
        SyncError::State(StateError::Parquet {
            path: self.rel.clone(),
            source,
        })
    }

    /// Finish the file; returns how many keys it holds.
    pub async fn close(self) -> Result<u64, SyncError> {
        let rel = self.rel;
        self.writer.close().await.map_err(|source| {
            SyncError::State(StateError::Parquet {
                path: rel.clone(),
                source,
            })
        })?;
        self.store.verify(&rel, None).await?;
        Ok(self.rows)
    }
}

/// The state a commit records.
pub(super) struct NextState {
    /// The snapshot, relative to the state root.
    pub snapshot: String,
    /// Keys in sync.
    pub rows: u64,
    pub deltas: Vec<Delta>,
}

/// What a run accepted, for the next state.
pub(super) struct Accepted<'a> {
    /// `sent.parquet` (relative to the state root) and its rows.
    pub sent: &'a str,
    pub rows: u64,
    /// Keys the state did not have.
    pub new_keys: u64,
    /// Keys that leave the state.
    pub left_keys: u64,
    /// Rows the destination refused only when the run finished.
    pub late: &'a [LateRejection],
    /// Whether the run's state holds more than the last state and what was sent: intents of
    /// interrupted runs, what a write-back's source reported.
    pub overlaid: bool,
}

/// The next state: unchanged when nothing was accepted; for a run that accepted few rows for
/// the keys in state (a cursor run, an incremental run of a full scan) the last one plus what
/// it accepted, as a delta; else a new snapshot, a plan over the last state and what was
/// accepted (which folds the deltas in).
pub(super) async fn next(
    sync: &SyncRef<'_>,
    previous: Option<&Manifest>,
    rescan: bool,
    key_type: &DataType,
    data_dir: &str,
    accepted: Accepted<'_>,
) -> Result<NextState, SyncError> {
    let plain = accepted.late.is_empty() && !accepted.overlaid;
    match previous {
        Some(prev) if accepted.rows == 0 && plain => Ok(NextState {
            snapshot: prev.snapshot.clone(),
            rows: prev.rows,
            deltas: prev.deltas.clone(),
        }),
        Some(prev) if plain && !rescan && delta_fits(prev, accepted.rows) => {
            let mut deltas = prev.deltas.clone();
            deltas.push(Delta {
                path: accepted.sent.to_string(),
                rows: accepted.rows,
                bytes: None,
            });
            Ok(NextState {
                snapshot: prev.snapshot.clone(),
                rows: (prev.rows + accepted.new_keys).saturating_sub(accepted.left_keys),
                deltas,
            })
        }
        _ => {
            let (snapshot, rows) =
                next_snapshot(sync, key_type, data_dir, accepted.sent, accepted.late).await?;
            Ok(NextState {
                snapshot,
                rows,
                deltas: Vec::new(),
            })
        }
    }
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
    sync: &SyncRef<'_>,
    key_type: &DataType,
    data_dir: &str,
    sent_rel: &str,
    late: &[LateRejection],
) -> Result<(String, u64), SyncError> {
    let (project, ctx, name) = (sync.project, sync.ctx, sync.name);
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
    let keep = keeps_fields(sync);
    let next = ctx
        .sql(&fields_sql(NEXT_STATE_SQL, keep))
        .await
        .map_err(&df_err)?;
    let snapshot_rel = format!("{data_dir}/snapshot.parquet");
    let rows = project
        .state
        .write_plan(next, &snapshot_rel, Some(state_schema_of(key_type, keep)))
        .await?;
    Ok((snapshot_rel, rows))
}

/// The snapshot schema: every key in sync with its row hash.
pub fn state_schema(key_type: &DataType) -> SchemaRef {
    state_schema_of(key_type, false)
}

/// The snapshot schema, with the per-field hashes when the sync keeps them.
pub(super) fn state_schema_of(key_type: &DataType, fields: bool) -> SchemaRef {
    let mut columns = vec![
        Field::new(KEY, key_type.clone(), true),
        Field::new(HASH, DataType::UInt64, true),
    ];
    if fields {
        columns.push(Field::new(FIELDS, fields_type(), true));
    }
    Arc::new(Schema::new(columns))
}

#[cfg(test)]
mod tests {
    use super::portable;
    use std::path::Path;

    #[test]
    fn fingerprints_inside_the_project_do_not_name_its_folder() {
        let dir = Path::new("/srv/my project");
        assert_eq!(
            portable("sqlite:/srv/my project/out/app.db:customers", dir),
            "sqlite:<project>/out/app.db:customers"
        );
        assert_eq!(
            portable("file:csv:file:///srv/my%20project/out/a.csv", dir),
            "file:csv:file://<project>/out/a.csv"
        );
        // Outside the project, or a folder whose name only starts the same: unchanged.
        for outside in [
            "sqlite:/var/db/app.db:customers",
            "sqlite:/srv/my project-2/app.db:customers",
            // The project's path in the middle of another path is not the project.
            "sqlite:/backup/srv/my project/app.db:customers",
            "postgres:db.internal:5432/app:public.customers",
        ] {
            assert_eq!(portable(outside, dir), outside);
        }
    }
}
