//! The apply stage: the diff's batches go to the destination, gathered per operation into
//! batches of a useful size, each announced in the intent log first; what the destination
//! accepted goes to `sent.parquet`, and the watermark's cursors see every row.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Schema};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use futures::StreamExt;

use super::diff::{
    CHANGED, DUPLICATE_KEY, GONE, NEW, NULL_KEY, PREV_FIELDS, PREV_KEY, UNCHANGED, UNOWNED, mask,
    model_rows, ops_of,
};
use super::intents::IntentLog;
use super::map::{FIELDS, HASH, KEY};
use super::report::Tally;
use super::state::SentWriter;
use super::watermark::Cursors;
use super::{SyncError, engine, failpoint};
use crate::behavior::Behavior;
use crate::destinations::{BatchOutcome, ObjectWriter, Rejection, WriteOp, WriteTarget};
use crate::history::RecordKind;
use crate::keys::key_text_of;
use crate::progress::Progress;
use crate::values::{cell_text, row_json};

/// What the behaviour does with a diff class: the destination operation (None: nothing is
/// sent), and whether the key stays in state.
pub(super) fn action(
    target: &WriteTarget,
    class: i8,
    full_resync: bool,
) -> Option<(Option<WriteOp>, Counter)> {
    use Behavior::*;
    Some(match (target.behavior, class) {
        // A destination without upserts: new records are created, changed ones updated.
        (Upsert | Mirror, NEW) if target.creates_and_updates => {
            (Some(WriteOp::Create), Counter::Created)
        }
        (Upsert | Mirror, CHANGED) if target.creates_and_updates => {
            (Some(WriteOp::Update), Counter::Updated)
        }
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
        (CreateOnly, GONE) if target.forget_gone => (None, Counter::Forgotten),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Counter {
    Created,
    Updated,
    Deleted,
    Forgotten,
}

/// The destination's view of rows: its fields only (deletes: the key only).
pub(super) fn destination_batch(
    target: &WriteTarget,
    rows: &RecordBatch,
    op: WriteOp,
    gone: bool,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if op == WriteOp::Delete {
        let col = if gone { PREV_KEY } else { KEY };
        let key = rows
            .column_by_name(col)
            .cloned()
            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("missing {col}")))?;
        let n = target.key.len();
        let fields: Vec<_> = target.schema.fields().iter().take(n).cloned().collect();
        // A composite key's parts are its struct's children.
        let columns = match key.as_struct_opt() {
            Some(parts) if n > 1 => parts.columns().to_vec(),
            _ => vec![key],
        };
        return RecordBatch::try_new(Arc::new(Schema::new(fields)), columns);
    }
    let columns = target
        .schema
        .fields()
        .iter()
        .map(|f| {
            let c = rows.column_by_name(f.name()).cloned().ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("missing {}", f.name()))
            })?;
            // (A lookup field not found yet holds the value looked up: see `lookup`.)
            if c.data_type() != f.data_type() {
                return arrow::compute::cast(&c, f.data_type());
            }
            Ok(c)
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.schema.clone(), columns)
}

/// `view` (a destination batch) with only the key fields and `only`.
fn only_fields(
    target: &WriteTarget,
    view: RecordBatch,
    only: &[String],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let keep: Vec<usize> = view
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| target.is_key(f.name()) || only.iter().any(|o| o == f.name()))
        .map(|(i, _)| i)
        .collect();
    view.project(&keep)
}

/// Write `view` except the rows of `failed` (their lookups found no record), which are
/// rejected with their reasons; the outcome is in `view`'s row numbers.
async fn write_except(
    sync: &str,
    writer: &mut dyn ObjectWriter,
    op: WriteOp,
    view: &RecordBatch,
    failed: Vec<(usize, String)>,
) -> Result<BatchOutcome, SyncError> {
    let dest_err = |source| SyncError::Destination {
        sync: sync.to_string(),
        source,
    };
    if failed.is_empty() {
        return writer.write(op, view.clone()).await.map_err(dest_err);
    }
    let mut keep = vec![true; view.num_rows()];
    for (row, _) in &failed {
        if let Some(k) = keep.get_mut(*row) {
            *k = false;
        }
    }
    let kept: Vec<usize> = (0..keep.len()).filter(|i| keep[*i]).collect();
    let mut outcome = if kept.is_empty() {
        BatchOutcome::default()
    } else {
        let sub = filter_record_batch(view, &BooleanArray::from(keep))
            .map_err(|e| engine(sync, "apply")(e.into()))?;
        writer
            .write(op, sub)
            .await
            .map_err(dest_err)?
            .mapped_to(&kept)
    };
    outcome.rejected.extend(
        failed
            .into_iter()
            .map(|(row, reason)| Rejection { row, reason }),
    );
    outcome.rejected.sort_by_key(|r| r.row);
    Ok(outcome)
}

/// Rows that changed the same fields: those fields (None: every field) and the rows.
type FieldGroup = (Option<Vec<String>>, RecordBatch);

/// Changed rows grouped by which fields changed: each group with the fields to send (None:
/// all of them, when the state does not know a row's field hashes or they were made under
/// another mapping), in the order the groups first appear.
fn changed_groups(
    target: &WriteTarget,
    rows: &RecordBatch,
    comparable: bool,
) -> Result<Vec<FieldGroup>, arrow::error::ArrowError> {
    use arrow::array::Array;
    let (Some(new), Some(prev), true) = (
        rows.column_by_name(FIELDS)
            .and_then(|c| c.as_binary_opt::<i32>()),
        rows.column_by_name(PREV_FIELDS)
            .and_then(|c| c.as_binary_opt::<i32>()),
        comparable,
    ) else {
        return Ok(vec![(None, rows.clone())]);
    };
    // The hashes are in field-name order (see `map`).
    let mut names: Vec<&String> = target.schema.fields().iter().map(|f| f.name()).collect();
    names.sort();
    let hashes = |packed: &arrow::array::BinaryArray, row: usize| -> Option<Vec<u64>> {
        (!packed.is_null(row)).then(|| crate::hash::unpack_field_hashes(packed.value(row)))
    };
    let mut order: Vec<Option<Vec<bool>>> = Vec::new();
    let mut members: std::collections::HashMap<Option<Vec<bool>>, Vec<u32>> =
        std::collections::HashMap::new();
    for row in 0..rows.num_rows() {
        let mask = match (hashes(new, row), hashes(prev, row)) {
            (Some(n), Some(p)) if n.len() == p.len() && n.len() == names.len() => {
                Some(n.iter().zip(&p).map(|(a, b)| a != b).collect::<Vec<bool>>())
            }
            _ => None,
        };
        let slot = members.entry(mask.clone()).or_insert_with(|| {
            order.push(mask);
            Vec::new()
        });
        slot.push(row as u32);
    }
    let mut out = Vec::with_capacity(order.len());
    for mask in order {
        let indices = arrow::array::UInt32Array::from(members.remove(&mask).unwrap_or_default());
        let group = arrow::compute::take_record_batch(rows, &indices)?;
        let only = mask.map(|m| {
            names
                .iter()
                .zip(m)
                .filter(|(n, changed)| *changed && !target.is_key(n))
                .map(|(n, _)| (*n).clone())
                .collect()
        });
        out.push((only, group));
    }
    Ok(out)
}

/// Rows waiting to be sent, per diff class, and everything needed to send them.
pub(super) struct Outbox<'a> {
    pub sync: &'a str,
    pub target: &'a WriteTarget,
    pub full_resync: bool,
    pub writer: &'a mut dyn ObjectWriter,
    pub sent: &'a mut SentWriter,
    pub intents: Option<&'a mut IntentLog>,
    pub guards: &'a Guards,
    /// Buffered rows of GONE, NEW and CHANGED (in that order: deletes go first).
    buffered: [Vec<RecordBatch>; 3],
    rows: usize,
    /// Keep each record sent, with the destination's answer (test runs).
    show_sent: bool,
    /// Where each record sent is logged, when the sync keeps a record log.
    log: Option<&'a mut super::record_log::RecordLog>,
    /// `send = "changed"`: updates carry only the fields whose hashes differ from the state's
    /// (`Some(true)`), or every field when the state's hashes were made under another mapping
    /// (`Some(false)`); None: every field.
    changed_fields: Option<bool>,
    /// Finds lookup fields by request when rows are sent (see `lookup`).
    resolver: Option<&'a mut super::lookup::Resolver>,
}

/// What holds a run's writes back.
#[derive(Debug, Default)]
pub struct Guards {
    /// The run's lease (object-store state): checked before every destination batch.
    pub fence: Option<crate::state::lease::Fence>,
    /// Send no deletes: the model's sources left rows out (CSV rows that cannot be read),
    /// and those rows' records must not be deleted for being missing.
    pub hold_deletes: bool,
}

/// The mass-delete guard, still to be decided (see `guard`): from the diff's own counts at its
/// end, or, when the changes fill a destination batch before that, by `count` (a query) before
/// the first batch is sent.
pub(super) struct PendingGuard<'a> {
    /// The error that stops the run with `deletes` of `in_sync` records to delete, if any.
    pub verdict: Box<dyn Fn(u64, u64) -> Option<SyncError> + Send + Sync + 'a>,
    /// (records in sync, deletes), counted by a query.
    pub count: futures::future::BoxFuture<'a, Result<(u64, u64), SyncError>>,
}

/// Rows per destination batch (a batch is one transaction and one intent file).
const DESTINATION_BATCH_ROWS: usize = 16_384;

impl<'a> Outbox<'a> {
    pub fn new(
        sync: &'a str,
        target: &'a WriteTarget,
        full_resync: bool,
        writer: &'a mut dyn ObjectWriter,
        sent: &'a mut SentWriter,
        intents: Option<&'a mut IntentLog>,
        guards: &'a Guards,
    ) -> Self {
        Outbox {
            sync,
            target,
            full_resync,
            writer,
            sent,
            intents,
            guards,
            buffered: [Vec::new(), Vec::new(), Vec::new()],
            rows: 0,
            show_sent: false,
            log: None,
            changed_fields: None,
            resolver: None,
        }
    }

    /// Find lookup fields by request before rows are sent (see `lookup`).
    pub fn resolving(mut self, resolver: Option<&'a mut super::lookup::Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Send only the fields of changed rows whose values changed (see `changed_fields`).
    pub fn sending_changed_fields(mut self, comparable: bool) -> Self {
        self.changed_fields = Some(comparable);
        self
    }

    /// Log every record sent (see `record_log`).
    pub fn logging_to(mut self, log: Option<&'a mut super::record_log::RecordLog>) -> Self {
        self.log = log;
        self
    }

    /// Keep every record sent with the destination's answer (a test run's few).
    pub fn showing_sent(mut self) -> Self {
        self.show_sent = true;
        self
    }

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
            // The last diff batch can take the buffer past the limit: no destination batch
            // (one transaction, one intent file) holds more than DESTINATION_BATCH_ROWS.
            let groups = match self.changed_fields {
                Some(comparable) if class == CHANGED => {
                    changed_groups(self.target, &rows, comparable)
                        .map_err(|e| engine(self.sync, "apply")(e.into()))?
                }
                _ => vec![(None, rows)],
            };
            for (only, rows) in groups {
                let mut offset = 0;
                while offset < rows.num_rows() {
                    let len = DESTINATION_BATCH_ROWS.min(rows.num_rows() - offset);
                    self.send(
                        class,
                        rows.slice(offset, len),
                        only.as_deref(),
                        tally,
                        cursors,
                    )
                    .await?;
                    offset += len;
                }
            }
        }
        self.rows = 0;
        Ok(())
    }

    /// One destination batch of one diff class; `only`: the fields to send besides the key
    /// (None: every field).
    async fn send(
        &mut self,
        class: i8,
        rows: RecordBatch,
        only: Option<&[String]>,
        tally: &mut Tally,
        cursors: &mut Cursors,
    ) -> Result<(), SyncError> {
        let sync = self.sync;
        let target = self.target;
        let df_err = engine(sync, "apply");
        let Some((op, counter)) = action(target, class, self.full_resync) else {
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
        let mut created = 0usize;
        let mut rows = rows;
        if let Some(op) = op {
            // Lookup fields: found now (by request), or by the diff's join; rows whose lookups
            // failed are rejected with the reason instead of sent.
            let mut failed = Vec::new();
            if op != WriteOp::Delete {
                if let Some(resolver) = self.resolver.as_deref_mut() {
                    rows = resolver.resolve(sync, &mut *self.writer, rows).await?;
                }
                failed = super::lookup::failures(&rows);
            }
            let view = destination_batch(target, &rows, op, class == GONE)
                .and_then(|v| match only {
                    Some(only) => only_fields(target, v, only),
                    None => Ok(v),
                })
                .map_err(|e| df_err(e.into()))?;
            if let Some(f) = &self.guards.fence {
                f.check()?;
            }
            if let Some(log) = self.intents.as_deref_mut() {
                log.record(sync, &keys).await?;
            }
            let outcome = write_except(sync, &mut *self.writer, op, &view, failed).await?;
            skipped = outcome.skipped;
            created = outcome.created;
            for r in &outcome.rejected {
                if let Some(a) = accepted.get_mut(r.row) {
                    *a = false;
                }
                tally.counts.rejected += 1;
                let record = row_json(&view, r.row);
                tally.sample(
                    RecordKind::Rejected,
                    cell_text(&keys, r.row),
                    r.reason.clone(),
                    record,
                );
            }
            if self.show_sent {
                for row in 0..view.num_rows() {
                    if tally.sent.len() >= super::SAMPLE_SHOWN {
                        break;
                    }
                    let answer = outcome
                        .rejected
                        .iter()
                        .find(|r| r.row == row)
                        .map_or_else(|| "accepted".to_string(), |r| r.reason.clone());
                    tally.sent.push(super::SentRecord {
                        op: op.as_str().to_string(),
                        key: cell_text(&keys, row),
                        record: row_json(&view, row),
                        answer,
                    });
                }
            }
            if let Some(log) = self.log.as_deref_mut() {
                let mut refused: Vec<Option<String>> = vec![None; rows.num_rows()];
                for r in &outcome.rejected {
                    if let Some(slot) = refused.get_mut(r.row) {
                        *slot = Some(r.reason.clone());
                    }
                }
                log.write(op.as_str(), &keys, &refused).await?;
            }
            if !outcome.rejected.is_empty() {
                let rejected_mask: BooleanArray = accepted.iter().map(|a| Some(!a)).collect();
                cursors.missed(&rows, &rejected_mask).map_err(&df_err)?;
            }
        }
        let n_accepted = accepted.iter().filter(|a| **a).count();
        let applied = (n_accepted - skipped.min(n_accepted)) as u64;
        match counter {
            Counter::Created => tally.counts.created += applied,
            Counter::Updated => {
                let created = (created as u64).min(applied);
                tally.counts.created += created;
                tally.counts.updated += applied - created;
            }
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
        if class != NEW && !keep {
            self.sent.left_keys += keys.len() as u64;
        }
        let fields = match rows.column_by_name(FIELDS) {
            Some(f) if keep => {
                Some(arrow::compute::filter(f, &accepted_mask).map_err(|e| df_err(e.into()))?)
            }
            _ => None,
        };
        self.sent.write(keys, hashes, fields, keep).await?;
        failpoint!("after_batch", sync);
        Ok(())
    }
}

/// Diff batches computed ahead while the destination writes the ones before them.
const PREFETCH_BATCHES: usize = 4;

/// `stream` driven by a task of its own, up to [`PREFETCH_BATCHES`] ahead of its reader: the
/// diff (reading the model, hashing, joining with the state) goes on while the destination
/// takes a batch, instead of waiting for it. Dropping the stream stops the task.
fn prefetched(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let mut builder = RecordBatchReceiverStream::builder(stream.schema(), PREFETCH_BATCHES);
    let tx = builder.tx();
    builder.spawn(async move {
        let mut stream = stream;
        while let Some(batch) = stream.next().await {
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        Ok(())
    });
    builder.build()
}

/// Send the diff to the destination through `outbox`. Returns the cursor values seen.
pub(super) async fn apply(
    stream: SendableRecordBatchStream,
    mut outbox: Outbox<'_>,
    cursor_type: Option<&DataType>,
    tally: &mut Tally,
    progress: &dyn Progress,
    mut guard: Option<PendingGuard<'_>>,
) -> Result<Cursors, SyncError> {
    let (sync, target, full_resync, guards) = (
        outbox.sync,
        outbox.target,
        outbox.full_resync,
        outbox.guards,
    );
    let df_err = engine(sync, "diff");
    let mut stream = prefetched(stream);
    let mut cursors = Cursors::new(cursor_type).map_err(&df_err)?;
    let mut processed = 0u64;
    let mut held = 0u64;
    // What the guard needs, counted from the diff: state keys seen, and those gone.
    let (mut in_sync, mut gone) = (0u64, 0u64);
    while let Some(batch) = stream.next().await {
        if crate::interrupt::requested() {
            return Err(SyncError::Interrupted {
                sync: sync.to_string(),
            });
        }
        let batch = batch.map_err(&df_err)?;
        let ops = ops_of(sync, &batch)?;
        processed += batch.num_rows() as u64;

        let model_rows = model_rows(&ops);
        if guard.is_some() {
            gone += mask(&ops, GONE).true_count() as u64;
            in_sync += batch
                .column_by_name(PREV_KEY)
                .map_or(0, |c| (c.len() - c.null_count()) as u64);
        }
        tally.counts.read += model_rows.true_count() as u64;
        tally.counts.unowned += mask(&ops, UNOWNED).true_count() as u64;
        cursors.read(&batch, &model_rows).map_err(&df_err)?;
        tally.counts.unchanged += mask(&ops, UNCHANGED).true_count() as u64;
        tally_invalid(target, &batch, &ops, tally);
        // Invalid rows hold the watermark back like rejected ones: they are read (and reported)
        // again until they are fixed, rather than skipped for good.
        let invalid =
            arrow::compute::kernels::boolean::or(&mask(&ops, NULL_KEY), &mask(&ops, DUPLICATE_KEY))
                .map_err(|e| df_err(e.into()))?;
        cursors.missed(&batch, &invalid).map_err(&df_err)?;

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
            if action(target, class, full_resync).is_none() {
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
            // Too many changes to hold back until the diff ends: ask before the first batch.
            if let Some(g) = guard.take() {
                let (in_sync, deletes) = g.count.await?;
                if let Some(stop) = (g.verdict)(deletes, in_sync) {
                    return Err(stop);
                }
            }
            outbox.flush(tally, &mut cursors).await?;
        }
        progress.rows(sync, processed);
    }
    if let Some(g) = guard.take()
        && let Some(stop) = (g.verdict)(gone, in_sync)
    {
        return Err(stop);
    }
    outbox.flush(tally, &mut cursors).await?;
    if held > 0 {
        tally.counts.held += held;
        tracing::warn!(
            sync,
            held,
            "records that left the model were not deleted: the model's sources left out rows they could not read, which may be them"
        );
    }
    Ok(cursors)
}

/// Count and sample the invalid rows of a diff batch.
pub(super) fn tally_invalid(
    target: &WriteTarget,
    batch: &RecordBatch,
    ops: &arrow::array::Int8Array,
    tally: &mut Tally,
) {
    let key = target.key_label();
    for (class, reason) in [
        (NULL_KEY, format!("the key {key} is NULL")),
        (
            DUPLICATE_KEY,
            format!("the key {key} appears more than once in this run; none of its rows is sent"),
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
                if !tally.samples_invalid() {
                    break;
                }
                let (key, reason) = if class == NULL_KEY && target.key.len() > 1 {
                    // Which parts are NULL.
                    let nulls: Vec<&str> = target
                        .key
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| view.column(*i).is_null(r))
                        .map(|(_, k)| k.as_str())
                        .collect();
                    (
                        None,
                        format!("the key {key} has NULL parts: {}", nulls.join(", ")),
                    )
                } else {
                    let parts: Option<Vec<String>> = (0..target.key.len())
                        .map(|i| cell_text(view.column(i), r))
                        .collect();
                    (parts.map(|p| key_text_of(&p)), reason.clone())
                };
                tally.sample(RecordKind::Invalid, key, reason, row_json(&view, r));
            }
        }
    }
}
