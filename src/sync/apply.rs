//! The apply stage: the diff's batches go to the destination, split by operation, and what the
//! destination accepted goes to `sent.parquet`. Also the dry-run counterpart ([`plan`]).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, RecordBatch, UInt64Array,
};
use arrow::compute::{filter_record_batch, kernels::cmp::eq};
use arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use serde::Serialize;

use super::mapping::{CURSOR, HASH, KEY};
use super::{SyncError, engine, failpoint};
use crate::config::Behavior;
use crate::destinations::{FinishOutcome, ObjectWriter, WriteOp, WriteTarget};
use crate::history::{RecordKind, RunCounts, SAMPLE_LIMIT, SampleRecord};
use crate::progress::Progress;
use crate::state::{StateError, StateStore};

/// Diff classes (`__bf_op` in sql/diff.sql).
const UNCHANGED: i8 = 0;
const NEW: i8 = 1;
const CHANGED: i8 = 2;
const GONE: i8 = 3;
const NULL_KEY: i8 = 4;
const DUPLICATE_KEY: i8 = 5;
const OP: &str = "__bf_op";
const PREV_KEY: &str = "__bf_prev_key";
pub(crate) const KEEP: &str = "__bf_keep";

/// Counts and samples of a run in progress.
#[derive(Debug, Default)]
pub struct Tally {
    pub counts: RunCounts,
    pub samples: Vec<SampleRecord>,
    invalid_sampled: usize,
    rejected_sampled: usize,
}

impl Tally {
    pub(crate) fn sample(
        &mut self,
        kind: RecordKind,
        key: Option<String>,
        reason: String,
        record: String,
    ) {
        let n = match kind {
            RecordKind::Invalid => &mut self.invalid_sampled,
            RecordKind::Rejected => &mut self.rejected_sampled,
        };
        if *n < SAMPLE_LIMIT {
            *n += 1;
            self.samples.push(SampleRecord {
                kind,
                key,
                reason,
                record,
            });
        }
    }

    /// What a destination reported in `finish` was counted as written until now: move it.
    pub fn finished(&mut self, key: &str, outcome: &FinishOutcome) {
        let skipped = outcome.skipped.min(self.counts.created);
        self.counts.created -= skipped;
        self.counts.skipped += skipped;
        self.counts.retries += outcome.retries;
        for l in &outcome.rejected {
            let c = &mut self.counts;
            if c.updated > 0 {
                c.updated -= 1;
            } else {
                c.created = c.created.saturating_sub(1);
            }
            c.rejected += 1;
            let record = serde_json::json!({ key: scalar_text(&l.key) }).to_string();
            self.sample(
                RecordKind::Rejected,
                Some(scalar_text(&l.key)),
                l.reason.clone(),
                record,
            );
        }
    }
}

/// The cursor values seen, for the next watermark.
pub struct Cursors {
    max_read: Option<MaxAccumulator>,
    min_rejected: Option<MinAccumulator>,
    any_rejected: bool,
}

impl Cursors {
    fn new(cursor_type: Option<&DataType>) -> Result<Cursors, datafusion::error::DataFusionError> {
        Ok(Cursors {
            max_read: cursor_type.map(MaxAccumulator::try_new).transpose()?,
            min_rejected: cursor_type.map(MinAccumulator::try_new).transpose()?,
            any_rejected: false,
        })
    }

    /// The watermark to commit: the highest cursor read, or, when rows were rejected, the
    /// lowest cursor among them, so that the next run reads them again.
    pub fn next_watermark(mut self) -> Option<ScalarValue> {
        if self.any_rejected
            && let Some(v) = self.min_rejected.as_mut().and_then(|a| a.evaluate().ok())
            && !v.is_null()
        {
            return Some(v);
        }
        self.max_read
            .as_mut()
            .and_then(|a| a.evaluate().ok())
            .filter(|v| !v.is_null())
    }
}

/// Text of a scalar as Arrow casts it (parsable back with the same type).
pub fn scalar_text(v: &ScalarValue) -> String {
    v.to_array()
        .ok()
        .and_then(|a| arrow::compute::cast(&a, &DataType::Utf8).ok())
        .filter(|a| !a.is_null(0))
        .map(|a| a.as_string::<i32>().value(0).to_string())
        .unwrap_or_default()
}

/// `sent.parquet`: one row per key the destination accepted in this run.
pub struct SentWriter {
    /// Keys written that the state did not have (new rows accepted and kept).
    pub new_keys: u64,
    store: StateStore,
    writer: AsyncArrowWriter<BufWriter>,
    schema: SchemaRef,
    rel: String,
    rows: u64,
}

impl SentWriter {
    pub fn new(store: &StateStore, rel: &str, key_type: &DataType) -> Result<Self, StateError> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(KEY, key_type.clone(), true),
            Field::new(HASH, DataType::UInt64, true),
            Field::new(KEEP, DataType::Boolean, false),
        ]));
        Ok(SentWriter {
            new_keys: 0,
            store: store.clone(),
            writer: store.parquet_writer(rel, schema.clone())?,
            schema,
            rel: rel.to_string(),
            rows: 0,
        })
    }

    async fn write(
        &mut self,
        keys: ArrayRef,
        hashes: ArrayRef,
        keep: bool,
    ) -> Result<(), SyncError> {
        let mut keep_col = BooleanBuilder::with_capacity(keys.len());
        keep_col.append_n(keys.len(), keep);
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![keys, hashes, Arc::new(keep_col.finish())],
        )
        .map_err(|e| self.err(e.into()))?;
        self.writer.write(&batch).await.map_err(|e| self.err(e))?;
        self.rows += batch.num_rows() as u64;
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

/// What the behaviour does with a diff class: the destination operation (None: nothing is
/// sent), and whether the key stays in state.
fn action(behavior: Behavior, class: i8, full_resync: bool) -> Option<(Option<WriteOp>, Counter)> {
    use Behavior::*;
    Some(match (behavior, class) {
        // A full resync sends every row again; for create-only that re-creates records missing
        // from the destination and leaves the others alone.
        (CreateOnly, CHANGED) if full_resync => (Some(WriteOp::Create), Counter::Created),
        (Upsert | Mirror, NEW) => (Some(WriteOp::Upsert), Counter::Created),
        (Upsert | Mirror, CHANGED) => (Some(WriteOp::Upsert), Counter::Updated),
        (Mirror, GONE) => (Some(WriteOp::Delete), Counter::Deleted),
        (UpdateOnly, NEW | CHANGED) => (Some(WriteOp::Update), Counter::Updated),
        (CreateOnly, NEW) => (Some(WriteOp::Create), Counter::Created),
        (AppendOnly, NEW | CHANGED) => (Some(WriteOp::Append), Counter::Created),
        (Delete, NEW | CHANGED) => (Some(WriteOp::Delete), Counter::Deleted),
        // A key that left a delete sync's list leaves its state, so it is deleted again if it
        // comes back.
        (Delete, GONE) => (None, Counter::Forgotten),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Counter {
    Created,
    Updated,
    Deleted,
    Forgotten,
}

fn mask(ops: &arrow::array::Int8Array, class: i8) -> BooleanArray {
    let scalar = arrow::array::Int8Array::new_scalar(class);
    eq(ops, &scalar).unwrap_or_else(|_| BooleanArray::from(vec![false; ops.len()]))
}

fn ops_of(sync: &str, batch: &RecordBatch) -> Result<arrow::array::Int8Array, SyncError> {
    batch
        .column_by_name(OP)
        .and_then(|c| c.as_primitive_opt::<Int8Type>())
        .cloned()
        .ok_or_else(|| SyncError::Mapping {
            sync: sync.to_string(),
            problems: vec!["the diff lost its op column (this is a bug in backflow)".into()],
        })
}

/// The destination's view of rows: its fields only (deletes: the key only).
fn destination_batch(
    target: &WriteTarget,
    rows: &RecordBatch,
    op: WriteOp,
    gone: bool,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if op == WriteOp::Delete {
        let key_field = target.schema.field(0).clone();
        let col = if gone { PREV_KEY } else { KEY };
        let key = rows
            .column_by_name(col)
            .cloned()
            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("missing {col}")))?;
        return RecordBatch::try_new(Arc::new(Schema::new(vec![key_field])), vec![key]);
    }
    let columns = target
        .schema
        .fields()
        .iter()
        .map(|f| {
            rows.column_by_name(f.name()).cloned().ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("missing {}", f.name()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.schema.clone(), columns)
}

/// One row of the destination fields as a JSON object.
pub fn row_json(batch: &RecordBatch, row: usize) -> String {
    let mut buf = Vec::new();
    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
    if w.write(&batch.slice(row, 1)).is_err() || w.finish().is_err() {
        return "{}".into();
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

fn key_text(array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    ScalarValue::try_from_array(array, row)
        .ok()
        .map(|v| scalar_text(&v))
}

/// Count and sample the invalid rows of a diff batch.
fn tally_invalid(
    target: &WriteTarget,
    batch: &RecordBatch,
    ops: &arrow::array::Int8Array,
    tally: &mut Tally,
) {
    for (class, reason) in [
        (NULL_KEY, format!("the key \"{}\" is NULL", target.key)),
        (
            DUPLICATE_KEY,
            format!(
                "the key \"{}\" appears more than once in this run; none of its rows is sent",
                target.key
            ),
        ),
    ] {
        let m = mask(ops, class);
        let n = m.true_count();
        if n == 0 {
            continue;
        }
        tally.counts.invalid += n as u64;
        if let Ok(rows) = filter_record_batch(batch, &m)
            && let Ok(view) = destination_batch(target, &rows, WriteOp::Upsert, false)
        {
            for r in 0..rows.num_rows() {
                if tally.invalid_sampled >= SAMPLE_LIMIT {
                    break;
                }
                tally.sample(
                    RecordKind::Invalid,
                    key_text(view.column(0), r),
                    reason.clone(),
                    row_json(&view, r),
                );
            }
        }
    }
}

/// Rows waiting to be sent, per diff class, and everything needed to send them.
struct Outbox<'a> {
    sync: &'a str,
    target: &'a WriteTarget,
    full_resync: bool,
    writer: &'a mut dyn ObjectWriter,
    sent: &'a mut SentWriter,
    intents: Option<&'a mut IntentLog>,
    guards: &'a Guards,
    /// Buffered rows of GONE, NEW and CHANGED (in that order: deletes go first).
    buffered: [Vec<RecordBatch>; 3],
    rows: usize,
}

/// What holds a run's writes back.
#[derive(Debug, Default)]
pub struct Guards {
    /// The run's lease (object-store state): checked before every destination batch.
    pub fence: Option<crate::lease::Fence>,
    /// Send no deletes: the model's sources left rows out (CSV rows that cannot be read),
    /// and those rows' records must not be deleted for being missing.
    pub hold_deletes: bool,
}

/// Rows per destination batch (a batch is one transaction and one intent file).
const DESTINATION_BATCH_ROWS: usize = 16_384;

impl Outbox<'_> {
    fn push(&mut self, class: i8, rows: RecordBatch) {
        let slot = match class {
            GONE => 0,
            NEW => 1,
            _ => 2,
        };
        self.rows += rows.num_rows();
        self.buffered[slot].push(rows);
    }

    fn full(&self) -> bool {
        self.rows >= DESTINATION_BATCH_ROWS
    }

    /// Send everything buffered: deletes first, so that a record that moved to a new key
    /// leaves before it is created again (other unique columns would refuse the create).
    async fn flush(&mut self, tally: &mut Tally, cursors: &mut Cursors) -> Result<(), SyncError> {
        for (slot, class) in [GONE, NEW, CHANGED].into_iter().enumerate() {
            let batches = std::mem::take(&mut self.buffered[slot]);
            if batches.is_empty() {
                continue;
            }
            let rows = arrow::compute::concat_batches(&batches[0].schema(), &batches)
                .map_err(|e| engine(self.sync, "apply")(e.into()))?;
            self.send(class, rows, tally, cursors).await?;
        }
        self.rows = 0;
        Ok(())
    }

    /// One destination batch of one diff class.
    async fn send(
        &mut self,
        class: i8,
        rows: RecordBatch,
        tally: &mut Tally,
        cursors: &mut Cursors,
    ) -> Result<(), SyncError> {
        let sync = self.sync;
        let target = self.target;
        let df_err = engine(sync, "apply");
        let Some((op, counter)) = action(target.behavior, class, self.full_resync) else {
            return Ok(());
        };
        let key_col = if class == GONE { PREV_KEY } else { KEY };
        let keys = rows.column_by_name(key_col).cloned().ok_or_else(|| {
            df_err(datafusion::error::DataFusionError::Internal(format!(
                "diff output lacks {key_col}"
            )))
        })?;
        let mut accepted = vec![true; rows.num_rows()];
        let mut skipped = 0usize;
        if let Some(op) = op {
            let view = destination_batch(target, &rows, op, class == GONE)
                .map_err(|e| df_err(e.into()))?;
            if let Some(f) = &self.guards.fence {
                f.check()?;
            }
            if let Some(log) = self.intents.as_deref_mut() {
                log.record(sync, &keys).await?;
            }
            let outcome = self
                .writer
                .write(op, view.clone())
                .await
                .map_err(|source| SyncError::Destination {
                    sync: sync.to_string(),
                    source,
                })?;
            skipped = outcome.skipped;
            for r in &outcome.rejected {
                if let Some(a) = accepted.get_mut(r.row) {
                    *a = false;
                }
                tally.counts.rejected += 1;
                cursors.any_rejected = true;
                let record = row_json(&view, r.row);
                tally.sample(
                    RecordKind::Rejected,
                    key_text(view.column(0), r.row),
                    r.reason.clone(),
                    record,
                );
            }
            if !outcome.rejected.is_empty()
                && let (Some(acc), Some(cursor)) =
                    (cursors.min_rejected.as_mut(), rows.column_by_name(CURSOR))
            {
                let rejected_mask: BooleanArray = accepted.iter().map(|a| Some(!a)).collect();
                let c =
                    arrow::compute::filter(cursor, &rejected_mask).map_err(|e| df_err(e.into()))?;
                acc.update_batch(&[c]).map_err(&df_err)?;
            }
        }
        let n_accepted = accepted.iter().filter(|a| **a).count();
        let applied = (n_accepted - skipped.min(n_accepted)) as u64;
        match counter {
            Counter::Created => tally.counts.created += applied,
            Counter::Updated => tally.counts.updated += applied,
            Counter::Deleted => tally.counts.deleted += applied,
            Counter::Forgotten => {}
        }
        tally.counts.skipped += skipped as u64;

        // What is now in sync: accepted rows keep their new hash; deleted and forgotten
        // keys leave the state.
        // A delete sync keeps the keys it deleted (so they are not sent again); a mirror's
        // deleted keys leave the state.
        let keep = match (op, counter) {
            (_, Counter::Forgotten) => false,
            (Some(WriteOp::Delete), _) => target.behavior == Behavior::Delete,
            _ => true,
        };
        let accepted_mask = BooleanArray::from(accepted);
        let keys = arrow::compute::filter(&keys, &accepted_mask).map_err(|e| df_err(e.into()))?;
        let hashes: ArrayRef = if keep {
            let h = rows
                .column_by_name(HASH)
                .cloned()
                .unwrap_or_else(|| Arc::new(UInt64Array::new_null(rows.num_rows())));
            arrow::compute::filter(&h, &accepted_mask).map_err(|e| df_err(e.into()))?
        } else {
            Arc::new(UInt64Array::new_null(keys.len()))
        };
        if class == NEW && keep {
            self.sent.new_keys += keys.len() as u64;
        }
        self.sent.write(keys, hashes, keep).await?;
        failpoint!("after_batch", sync);
        Ok(())
    }
}

/// Send the diff to the destination. Returns the cursor values seen.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    sync: &str,
    target: &WriteTarget,
    cursor_type: Option<&DataType>,
    full_resync: bool,
    mut stream: SendableRecordBatchStream,
    writer: &mut dyn ObjectWriter,
    sent: &mut SentWriter,
    intents: Option<&mut IntentLog>,
    guards: &Guards,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> Result<Cursors, SyncError> {
    let df_err = engine(sync, "diff");
    let mut cursors = Cursors::new(cursor_type).map_err(&df_err)?;
    let mut processed = 0u64;
    let mut outbox = Outbox {
        sync,
        target,
        full_resync,
        writer,
        sent,
        intents,
        guards,
        buffered: [Vec::new(), Vec::new(), Vec::new()],
        rows: 0,
    };
    let mut held = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(&df_err)?;
        let ops = ops_of(sync, &batch)?;
        processed += batch.num_rows() as u64;

        let model_rows = arrow::compute::kernels::boolean::not(&mask(&ops, GONE))
            .map_err(|e| df_err(e.into()))?;
        tally.counts.read += model_rows.true_count() as u64;
        if let (Some(acc), Some(cursor)) = (cursors.max_read.as_mut(), batch.column_by_name(CURSOR))
        {
            let seen = arrow::compute::filter(cursor, &model_rows).map_err(|e| df_err(e.into()))?;
            acc.update_batch(&[seen]).map_err(&df_err)?;
        }
        tally.counts.unchanged += mask(&ops, UNCHANGED).true_count() as u64;
        tally_invalid(target, &batch, &ops, tally);
        // Invalid rows hold the watermark back like rejected ones: they are read (and reported)
        // again until they are fixed, rather than skipped for good.
        if let (Some(acc), Some(cursor)) =
            (cursors.min_rejected.as_mut(), batch.column_by_name(CURSOR))
        {
            let invalid = arrow::compute::kernels::boolean::or(
                &mask(&ops, NULL_KEY),
                &mask(&ops, DUPLICATE_KEY),
            )
            .map_err(|e| df_err(e.into()))?;
            if invalid.true_count() > 0 {
                cursors.any_rejected = true;
                let c = arrow::compute::filter(cursor, &invalid).map_err(|e| df_err(e.into()))?;
                acc.update_batch(&[c]).map_err(&df_err)?;
            }
        }

        // Rows to send are gathered per class into destination batches of a useful size.
        for class in [GONE, NEW, CHANGED] {
            let m = mask(&ops, class);
            let n = m.true_count();
            if n == 0 {
                continue;
            }
            if class == GONE && guards.hold_deletes {
                held += n as u64;
                continue;
            }
            if action(target.behavior, class, full_resync).is_none() {
                // Changes the behaviour does not send (create-only updates, upsert's gone rows).
                if class != GONE {
                    tally.counts.unchanged += n as u64;
                }
                continue;
            }
            let rows = filter_record_batch(&batch, &m).map_err(|e| df_err(e.into()))?;
            outbox.push(class, rows);
        }
        if outbox.full() {
            outbox.flush(tally, &mut cursors).await?;
        }
        progress.rows(sync, processed);
    }
    outbox.flush(tally, &mut cursors).await?;
    if held > 0 {
        tally.sample(
            RecordKind::Invalid,
            None,
            format!(
                "{held} record(s) that left the model were not deleted: the model's sources left out rows they could not read, which may be them (fix the rows and run again)"
            ),
            "{}".into(),
        );
    }
    Ok(cursors)
}

/// Write-ahead intents: the keys a run is about to write, one small Parquet file per batch,
/// put (create-if-absent) before the batch goes to the destination.
pub struct IntentLog {
    store: StateStore,
    dir: String,
    run_id: String,
    /// The files written, relative to the state root.
    pub files: Vec<String>,
    fence: Option<crate::lease::Fence>,
}

impl IntentLog {
    pub fn new(store: &StateStore, dir: &str, run_id: &str) -> Self {
        IntentLog {
            store: store.clone(),
            dir: dir.to_string(),
            run_id: run_id.to_string(),
            files: Vec::new(),
            fence: None,
        }
    }

    /// Check `fence` (the run's lease) before every batch: a run that lost its lease writes
    /// nothing more.
    pub fn with_fence(mut self, fence: Option<crate::lease::Fence>) -> Self {
        self.fence = fence;
        self
    }

    async fn record(&mut self, sync: &str, keys: &ArrayRef) -> Result<(), SyncError> {
        if let Some(f) = &self.fence {
            f.check()?;
        }
        let rel = format!(
            "{}/{}-{:06}.parquet",
            self.dir,
            self.run_id,
            self.files.len()
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            KEY,
            keys.data_type().clone(),
            true,
        )]));
        let err = |e: parquet::errors::ParquetError| {
            SyncError::State(StateError::Parquet {
                path: rel.clone(),
                source: e,
            })
        };
        let batch =
            RecordBatch::try_new(schema.clone(), vec![keys.clone()]).map_err(|e| err(e.into()))?;
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            &mut buf,
            schema,
            Some(crate::state::writer_properties()),
        )
        .map_err(err)?;
        w.write(&batch).map_err(err)?;
        w.close().map_err(err)?;
        if let Err(e) = self.store.put_new(&rel, buf).await {
            // Nothing of this batch was sent: an intent that did not arrive whole announces
            // nothing, and must not be read by the next run.
            let _ = self.store.delete(&rel).await;
            return Err(e.into());
        }
        self.files.push(rel);
        failpoint!("after_intent", sync);
        Ok(())
    }
}

/// Samples of what a run would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanSamples {
    pub create: Vec<serde_json::Value>,
    pub update: Vec<serde_json::Value>,
    pub delete: Vec<serde_json::Value>,
    pub invalid: Vec<SampleRecord>,
}

const PLAN_SAMPLE: usize = 5;

/// Count what a run would do, without writing anything.
pub async fn plan(
    sync: &str,
    target: &WriteTarget,
    mut stream: SendableRecordBatchStream,
    tally: &mut Tally,
    samples: &mut PlanSamples,
) -> Result<(), SyncError> {
    let df_err = engine(sync, "diff");
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(&df_err)?;
        let ops = ops_of(sync, &batch)?;
        let gone = mask(&ops, GONE).true_count();
        tally.counts.read += (batch.num_rows() - gone) as u64;
        tally.counts.unchanged += mask(&ops, UNCHANGED).true_count() as u64;
        tally_invalid(target, &batch, &ops, tally);
        for class in [NEW, CHANGED, GONE] {
            let m = mask(&ops, class);
            let n = m.true_count();
            if n == 0 {
                continue;
            }
            let Some((op, counter)) = action(target.behavior, class, false) else {
                if class != GONE {
                    tally.counts.unchanged += n as u64;
                }
                continue;
            };
            let (list, count) = match counter {
                Counter::Created => (&mut samples.create, &mut tally.counts.created),
                Counter::Updated => (&mut samples.update, &mut tally.counts.updated),
                Counter::Deleted => (&mut samples.delete, &mut tally.counts.deleted),
                Counter::Forgotten => continue,
            };
            *count += n as u64;
            if list.len() < PLAN_SAMPLE
                && let Some(op) = op
            {
                let rows = filter_record_batch(&batch, &m).map_err(|e| df_err(e.into()))?;
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
