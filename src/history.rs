//! Run history: one Parquet file per run with its counts and status, and one with samples of the
//! records that were invalid (never sent) or rejected by the destination, with reasons. Both are
//! written whole with a create-if-absent put, whatever the run's outcome, and are readable with
//! any Parquet reader.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StructArray, UInt64Array};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_arrow::schema::{SchemaLike, TracingOptions};

use crate::state::{StateError, StateStore};

/// At most this many invalid and this many rejected records are kept per run.
pub const SAMPLE_LIMIT: usize = 100;

pub use crate::state::RunCounts;

/// One run of one sync.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub sync: String,
    pub status: RunStatus,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub full_resync: bool,
    #[serde(flatten)]
    pub counts: RunCounts,
    /// The committed state version, when the run committed.
    pub state_version: Option<u64>,
    pub error: Option<String>,
    /// A sync's behavior, destination and object when it ran (None for hub entities, and in
    /// files written before they were recorded).
    pub behavior: Option<String>,
    pub destination: Option<String>,
    pub object: Option<String>,
    /// What the run warned about (see `SyncReport::warnings`).
    pub warnings: Vec<String>,
    /// What started the run, when a caller said (`backflow serve`: `schedule`, `after`,
    /// `api`, `keys`; None for `backflow run`).
    pub trigger: Option<String>,
    /// How many keys (or source ids) a run for given keys was for.
    pub keys: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// Stopped by SIGINT or SIGTERM (see `interrupt`).
    Interrupted,
    /// Stopped by the mass-delete guard before anything was sent.
    Guarded,
    /// Not run: a scheduled tick found the sync still running, or a sync it runs after
    /// failed (`backflow serve`). The error says which.
    Skipped,
    /// A status this release does not know (written by another release or another tool):
    /// shown as it is.
    Other(String),
}

impl RunStatus {
    pub fn as_str(&self) -> &str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Guarded => "guarded",
            RunStatus::Skipped => "skipped",
            RunStatus::Other(s) => s,
        }
    }

    fn parse(text: &str) -> RunStatus {
        match text {
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            "guarded" => RunStatus::Guarded,
            "skipped" => RunStatus::Skipped,
            other => RunStatus::Other(other.to_string()),
        }
    }
}

impl Serialize for RunStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a record was not synced.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Invalid,
    Rejected,
}

/// A sample record of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SampleRecord {
    pub kind: RecordKind,
    /// The key, as text (empty when NULL).
    pub key: Option<String>,
    pub reason: String,
    /// The record as JSON.
    pub record: String,
}

/// A run as stored: one row of `history/<sync>/runs/*.parquet`. The file's columns are this
/// type's fields in order, derived from it with serde_arrow ([`stored_fields`]): the counts'
/// fields inline (`read`, `invalid`, …), the two instants as UTC timestamps in milliseconds.
#[derive(Serialize, Deserialize)]
struct StoredRun {
    run_id: String,
    sync: String,
    status: String,
    started_at: i64,
    finished_at: i64,
    full_resync: bool,
    counts: RunCounts,
    state_version: Option<i64>,
    error: Option<String>,
    behavior: Option<String>,
    destination: Option<String>,
    object: Option<String>,
    /// The run's warnings, one per line (NULL when none).
    warnings: Option<String>,
    /// What started the run (NULL: not said, and in files written before it was recorded).
    trigger: Option<String>,
    /// Keys of a run for given keys.
    keys: Option<i64>,
}

/// The fields of [`StoredRun`] that hold instants.
const INSTANTS: [&str; 3] = ["started_at", "finished_at", "sent_at"];

/// A sample as stored: one row of `history/<sync>/records/*.parquet`.
#[derive(Serialize, Deserialize)]
struct StoredSample {
    run_id: String,
    /// `invalid` or `rejected`.
    kind: String,
    key: Option<String>,
    reason: String,
    record: String,
}

impl From<&RunRecord> for StoredRun {
    fn from(r: &RunRecord) -> Self {
        StoredRun {
            run_id: r.run_id.clone(),
            sync: r.sync.clone(),
            status: r.status.as_str().to_string(),
            started_at: r.started_at_ms,
            finished_at: r.finished_at_ms,
            full_resync: r.full_resync,
            counts: r.counts.clone(),
            state_version: r.state_version.map(|v| v as i64),
            error: r.error.clone(),
            behavior: r.behavior.clone(),
            destination: r.destination.clone(),
            object: r.object.clone(),
            warnings: (!r.warnings.is_empty()).then(|| r.warnings.join("\n")),
            trigger: r.trigger.clone(),
            keys: r.keys.map(|k| k as i64),
        }
    }
}

impl From<StoredRun> for RunRecord {
    fn from(r: StoredRun) -> Self {
        RunRecord {
            run_id: r.run_id,
            sync: r.sync,
            status: RunStatus::parse(&r.status),
            started_at_ms: r.started_at,
            finished_at_ms: r.finished_at,
            full_resync: r.full_resync,
            counts: r.counts,
            state_version: r.state_version.map(|v| v as u64),
            error: r.error,
            behavior: r.behavior,
            destination: r.destination,
            object: r.object,
            warnings: r
                .warnings
                .map(|w| w.lines().map(str::to_string).collect())
                .unwrap_or_default(),
            trigger: r.trigger,
            keys: r.keys.map(|k| k.max(0) as u64),
        }
    }
}

/// The fields of a stored row type as serde_arrow traces them from the type (a struct field,
/// like the counts, is one struct field here; [`flat_schema`] spreads it).
fn stored_fields<T: for<'de> Deserialize<'de>>() -> Result<Vec<FieldRef>, ArrowError> {
    let fields =
        Vec::<FieldRef>::from_type::<T>(TracingOptions::default().strings_as_large_utf8(false))
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    Ok(fields
        .into_iter()
        .map(|f| {
            if INSTANTS.contains(&f.name().as_str()) {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Timestamp(
                    TimeUnit::Millisecond,
                    Some("UTC".into()),
                )))
            } else {
                f
            }
        })
        .collect())
}

/// The schema of the file: each struct field replaced by its children.
fn flat_schema(fields: &[FieldRef]) -> SchemaRef {
    let flat: Vec<FieldRef> = fields
        .iter()
        .flat_map(|f| match f.data_type() {
            DataType::Struct(children) => children.iter().cloned().collect(),
            _ => vec![f.clone()],
        })
        .collect();
    Arc::new(Schema::new(flat))
}

/// Rows as a batch of the file's (flat) schema.
fn to_batch<T: Serialize>(fields: &[FieldRef], rows: &[T]) -> Result<RecordBatch, ArrowError> {
    let nested = serde_arrow::to_record_batch(fields, &rows)
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    let mut columns = Vec::new();
    for c in nested.columns() {
        match c.as_struct_opt() {
            Some(s) => columns.extend(s.columns().iter().cloned()),
            None => columns.push(c.clone()),
        }
    }
    RecordBatch::try_new(flat_schema(fields), columns)
}

/// The rows of a batch that [`conform`] gave the file's flat schema.
fn from_batch<T: for<'de> Deserialize<'de>>(
    fields: &[FieldRef],
    flat: &RecordBatch,
) -> Result<Vec<T>, ArrowError> {
    let mut at = 0;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
    for f in fields {
        match f.data_type() {
            DataType::Struct(children) => {
                let parts = flat.columns()[at..at + children.len()].to_vec();
                at += children.len();
                columns.push(Arc::new(StructArray::try_new(
                    children.clone(),
                    parts,
                    None,
                )?));
            }
            _ => {
                columns.push(flat.column(at).clone());
                at += 1;
            }
        }
    }
    let nested = RecordBatch::try_new(Arc::new(Schema::new(fields.to_vec())), columns)?;
    serde_arrow::from_record_batch(&nested).map_err(|e| ArrowError::ExternalError(Box::new(e)))
}

fn file_name(run: &RunRecord) -> String {
    format!("{:013}-{}.parquet", run.started_at_ms, run.run_id)
}

/// An alert `backflow serve` sent (or tried to): one row of `alerts/*.parquet`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The `[alerts.NAME]` it came from.
    pub alert: String,
    /// The sync or entity.
    pub target: String,
    /// `failure`, `recovery`, `rejected_over`, `invalid_over` or `no_success_for`.
    pub condition: String,
    pub message: String,
    /// The run it is about, when one.
    pub run_id: Option<String>,
    /// When it was sent (or given up on), UTC milliseconds.
    pub sent_at: i64,
    pub delivered: bool,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// Where alerts are recorded, under the state root.
const ALERTS: &str = "alerts";

/// Record an alert.
pub async fn record_alert(store: &StateStore, alert: &AlertRecord) -> Result<(), StateError> {
    let rel = format!(
        "{ALERTS}/{:013}-{}.parquet",
        alert.sent_at,
        uuid::Uuid::new_v4().simple()
    );
    let bytes = encode(std::slice::from_ref(alert)).map_err(|e| parquet_err(&rel, e))?;
    store.put_new(&rel, bytes).await
}

/// The newest `limit` alerts, newest first.
pub async fn alerts(store: &StateStore, limit: usize) -> Result<Vec<AlertRecord>, StateError> {
    let mut files = store.list_files(ALERTS).await?;
    files.retain(|f| f.ends_with(".parquet"));
    files.sort();
    files.reverse();
    let mut out = Vec::new();
    for f in files.into_iter().take(limit) {
        let rel = format!("{ALERTS}/{f}");
        let bytes = store.read(&rel).await?;
        for batch in read_batches(bytes).map_err(|e| parquet_err(&rel, e))? {
            out.extend(decode::<AlertRecord>(&batch, &rel)?);
        }
    }
    Ok(out)
}

/// Store a finished run and its samples.
pub async fn record(
    store: &StateStore,
    run: &RunRecord,
    samples: &[SampleRecord],
) -> Result<(), StateError> {
    let name = file_name(run);
    let runs_rel = format!("history/{}/runs/{name}", run.sync);
    let bytes = encode(&[StoredRun::from(run)]).map_err(|e| parquet_err(&runs_rel, e))?;
    if !samples.is_empty() {
        let rel = format!("history/{}/records/{name}", run.sync);
        let rows: Vec<StoredSample> = samples
            .iter()
            .map(|s| StoredSample {
                run_id: run.run_id.clone(),
                kind: match s.kind {
                    RecordKind::Invalid => "invalid",
                    RecordKind::Rejected => "rejected",
                }
                .to_string(),
                key: s.key.clone(),
                reason: s.reason.clone(),
                record: s.record.clone(),
            })
            .collect();
        let sample_bytes = encode(&rows).map_err(|e| parquet_err(&rel, e))?;
        store.put_new(&rel, sample_bytes).await?;
    }
    // The run row goes last: a run listed in history always has its samples.
    store.put_new(&runs_rel, bytes).await
}

fn parquet_err(path: &str, source: parquet::errors::ParquetError) -> StateError {
    StateError::Parquet {
        path: path.to_string(),
        source,
    }
}

/// The syncs that have history.
pub async fn syncs(store: &StateStore) -> Result<Vec<String>, StateError> {
    store.list_dirs("history").await
}

/// The newest `limit` runs of a sync, newest first.
pub async fn runs(
    store: &StateStore,
    sync: &str,
    limit: usize,
) -> Result<Vec<RunRecord>, StateError> {
    let mut files = store.list_files(&format!("history/{sync}/runs")).await?;
    files.retain(|f| f.ends_with(".parquet"));
    files.reverse();
    let mut out = Vec::new();
    for f in files.into_iter().take(limit) {
        out.extend(read_runs(store, &format!("history/{sync}/runs/{f}")).await?);
    }
    Ok(out)
}

/// One run of a sync by its id (None when the sync has no such run): only its file is read.
pub async fn run(
    store: &StateStore,
    sync: &str,
    run_id: &str,
) -> Result<Option<RunRecord>, StateError> {
    let suffix = format!("-{run_id}.parquet");
    let files = store.list_files(&format!("history/{sync}/runs")).await?;
    let Some(f) = files.iter().find(|f| f.ends_with(&suffix)) else {
        return Ok(None);
    };
    let runs = read_runs(store, &format!("history/{sync}/runs/{f}")).await?;
    Ok(runs.into_iter().find(|r| r.run_id == run_id))
}

async fn read_runs(store: &StateStore, rel: &str) -> Result<Vec<RunRecord>, StateError> {
    let bytes = store.read(rel).await?;
    let mut out = Vec::new();
    for batch in read_batches(bytes).map_err(|e| parquet_err(rel, e))? {
        let rows: Vec<StoredRun> = decode(&batch, rel)?;
        out.extend(rows.into_iter().map(RunRecord::from));
    }
    Ok(out)
}

/// The samples of one run.
pub async fn samples(
    store: &StateStore,
    sync: &str,
    run: &RunRecord,
) -> Result<Vec<SampleRecord>, StateError> {
    let rel = format!("history/{sync}/records/{}", file_name(run));
    let bytes = match store.read(&rel).await {
        Ok(b) => b,
        Err(StateError::Io { source, .. })
            if matches!(*source, object_store::Error::NotFound { .. }) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for batch in read_batches(bytes).map_err(|e| parquet_err(&rel, e))? {
        let rows: Vec<StoredSample> = decode(&batch, &rel)?;
        out.extend(rows.into_iter().map(|s| SampleRecord {
            kind: if s.kind == "invalid" {
                RecordKind::Invalid
            } else {
                RecordKind::Rejected
            },
            key: s.key,
            reason: s.reason,
            record: s.record,
        }));
    }
    Ok(out)
}

fn read_batches(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>, parquet::errors::ParquetError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
}

/// `batch` with the columns of `schema`, by name, each cast to its type: a file another
/// Parquet writer rewrote (timestamps in microseconds, signed counts, large or view strings,
/// columns in another order or added) reads like one backflow wrote. A column that is missing
/// is NULL when it may be (or 0 for a count written before it existed), an error otherwise; a
/// value that cannot be cast is an error. Nothing here panics on what a file holds.
fn conform(batch: &RecordBatch, schema: &SchemaRef, rel: &str) -> Result<RecordBatch, StateError> {
    let bad = |reason: String| StateError::Corrupt {
        owner: "history".to_string(),
        path: rel.to_string(),
        reason,
    };
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let column = match batch.column_by_name(f.name()) {
            Some(c) => {
                arrow::compute::cast_with_options(c, f.data_type(), &options).map_err(|e| {
                    bad(format!(
                        "column \"{}\" cannot be read as {}: {e}",
                        f.name(),
                        f.data_type()
                    ))
                })?
            }
            None if f.is_nullable() => {
                arrow::array::new_null_array(f.data_type(), batch.num_rows())
            }
            None if f.data_type() == &DataType::UInt64 => {
                Arc::new(UInt64Array::from(vec![0; batch.num_rows()]))
            }
            None if f.data_type() == &DataType::Boolean => {
                Arc::new(BooleanArray::from(vec![false; batch.num_rows()]))
            }
            None => return Err(bad(format!("it has no column \"{}\"", f.name()))),
        };
        if !f.is_nullable() && column.null_count() > 0 {
            return Err(bad(format!("column \"{}\" holds NULLs", f.name())));
        }
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| bad(e.to_string()))
}

/// One stored row type's file as Parquet.
fn encode<T: Serialize + for<'de> Deserialize<'de>>(
    rows: &[T],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let batch = to_batch(&stored_fields::<T>()?, rows)?;
    crate::state::parquet_bytes(&batch)
}

/// The rows of a batch of a stored row type's file, whoever wrote it (see [`conform`]).
fn decode<T: for<'de> Deserialize<'de>>(
    batch: &RecordBatch,
    rel: &str,
) -> Result<Vec<T>, StateError> {
    let corrupt = |e: ArrowError| StateError::Corrupt {
        owner: "history".to_string(),
        path: rel.to_string(),
        reason: e.to_string(),
    };
    let fields = stored_fields::<T>().map_err(corrupt)?;
    let batch = conform(batch, &flat_schema(&fields), rel)?;
    from_batch(&fields, &batch).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

    /// The layout files have always had (other tools read them): derived from the types now,
    /// it must not drift.
    #[test]
    fn stored_layout_is_stable() {
        let runs = flat_schema(&stored_fields::<StoredRun>().unwrap());
        let described: Vec<String> = runs
            .fields()
            .iter()
            .map(|f| format!("{}:{}:{}", f.name(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(
            described.join(" "),
            "run_id:Utf8:false sync:Utf8:false status:Utf8:false \
             started_at:Timestamp(ms, \"UTC\"):false finished_at:Timestamp(ms, \"UTC\"):false \
             full_resync:Boolean:false read:UInt64:false invalid:UInt64:false \
             created:UInt64:false updated:UInt64:false deleted:UInt64:false \
             unchanged:UInt64:false rejected:UInt64:false skipped:UInt64:false \
             retries:UInt64:false held:UInt64:false unowned:UInt64:false \
             state_version:Int64:true error:Utf8:true behavior:Utf8:true \
             destination:Utf8:true object:Utf8:true warnings:Utf8:true trigger:Utf8:true keys:Int64:true"
        );
        let records = flat_schema(&stored_fields::<StoredSample>().unwrap());
        let names: Vec<&str> = records.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["run_id", "kind", "key", "reason", "record"]);
    }

    #[tokio::test]
    async fn runs_and_samples_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(Location::resolve("st", dir.path()).unwrap()).unwrap();
        let run = RunRecord {
            run_id: "abc".into(),
            sync: "s1".into(),
            status: RunStatus::Failed,
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_000_500,
            full_resync: false,
            counts: RunCounts {
                read: 10,
                invalid: 2,
                ..Default::default()
            },
            state_version: None,
            error: Some("boom".into()),
            behavior: Some("mirror".into()),
            destination: Some("db".into()),
            object: None,
            warnings: vec!["one".into(), "two".into()],
            trigger: Some("keys".into()),
            keys: Some(3),
        };
        let samples = vec![SampleRecord {
            kind: RecordKind::Invalid,
            key: None,
            reason: "NULL key".into(),
            record: "{}".into(),
        }];
        record(&store, &run, &samples).await.unwrap();
        let got = runs(&store, "s1", 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].counts, run.counts);
        assert_eq!(got[0].error.as_deref(), Some("boom"));
        let s = self::samples(&store, "s1", &got[0]).await.unwrap();
        assert_eq!(s[0].reason, "NULL key");
        assert_eq!(syncs(&store).await.unwrap(), vec!["s1"]);
    }
}
