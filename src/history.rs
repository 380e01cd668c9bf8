//! Run history: one Parquet file per run with its counts and status, and one with samples of the
//! records that were invalid (never sent) or rejected by the destination, with reasons. Both are
//! written whole with a create-if-absent put, whatever the run's outcome, and are readable with
//! any Parquet reader.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::state::{StateError, StateStore, writer_properties};

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
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
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

fn runs_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("sync", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started_at", ts.clone(), false),
        Field::new("finished_at", ts, false),
        Field::new("full_resync", DataType::Boolean, false),
        Field::new("read", DataType::UInt64, false),
        Field::new("invalid", DataType::UInt64, false),
        Field::new("created", DataType::UInt64, false),
        Field::new("updated", DataType::UInt64, false),
        Field::new("deleted", DataType::UInt64, false),
        Field::new("unchanged", DataType::UInt64, false),
        Field::new("rejected", DataType::UInt64, false),
        Field::new("skipped", DataType::UInt64, false),
        Field::new("retries", DataType::UInt64, false),
        Field::new("state_version", DataType::Int64, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn records_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
    ]))
}

fn to_parquet(batch: &RecordBatch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(writer_properties()))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf)
}

fn file_name(run: &RunRecord) -> String {
    format!("{:013}-{}.parquet", run.started_at_ms, run.run_id)
}

/// Store a finished run and its samples.
pub async fn record(
    store: &StateStore,
    run: &RunRecord,
    samples: &[SampleRecord],
) -> Result<(), StateError> {
    let c = &run.counts;
    let u = |v: u64| Arc::new(UInt64Array::from(vec![v])) as Arc<dyn Array>;
    let batch = RecordBatch::try_new(
        runs_schema(),
        vec![
            Arc::new(StringArray::from(vec![run.run_id.as_str()])),
            Arc::new(StringArray::from(vec![run.sync.as_str()])),
            Arc::new(StringArray::from(vec![run.status.as_str()])),
            Arc::new(TimestampMillisecondArray::from(vec![run.started_at_ms]).with_timezone("UTC")),
            Arc::new(
                TimestampMillisecondArray::from(vec![run.finished_at_ms]).with_timezone("UTC"),
            ),
            Arc::new(BooleanArray::from(vec![run.full_resync])),
            u(c.read),
            u(c.invalid),
            u(c.created),
            u(c.updated),
            u(c.deleted),
            u(c.unchanged),
            u(c.rejected),
            u(c.skipped),
            u(c.retries),
            Arc::new(Int64Array::from(vec![run.state_version.map(|v| v as i64)])),
            Arc::new(StringArray::from(vec![run.error.as_deref()])),
        ],
    )
    .map_err(|e| parquet_err("runs", e.into()))?;
    let name = file_name(run);
    let runs_rel = format!("history/{}/runs/{name}", run.sync);
    let bytes = to_parquet(&batch).map_err(|e| parquet_err(&runs_rel, e))?;

    if !samples.is_empty() {
        let kinds: Vec<&str> = samples
            .iter()
            .map(|s| match s.kind {
                RecordKind::Invalid => "invalid",
                RecordKind::Rejected => "rejected",
            })
            .collect();
        let batch = RecordBatch::try_new(
            records_schema(),
            vec![
                Arc::new(StringArray::from(vec![run.run_id.as_str(); samples.len()])),
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(
                    samples.iter().map(|s| s.key.as_deref()).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    samples
                        .iter()
                        .map(|s| s.reason.as_str())
                        .collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    samples
                        .iter()
                        .map(|s| s.record.as_str())
                        .collect::<Vec<_>>(),
                )),
            ],
        )
        .map_err(|e| parquet_err("records", e.into()))?;
        let rel = format!("history/{}/records/{name}", run.sync);
        let sample_bytes = to_parquet(&batch).map_err(|e| parquet_err(&rel, e))?;
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
        let rel = format!("history/{sync}/runs/{f}");
        let bytes = store.read(&rel).await?;
        for batch in read_batches(bytes).map_err(|e| parquet_err(&rel, e))? {
            out.extend(decode_runs(&batch));
        }
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
        let col = |i: usize| batch.column(i).as_string::<i32>();
        for r in 0..batch.num_rows() {
            out.push(SampleRecord {
                kind: if col(1).value(r) == "invalid" {
                    RecordKind::Invalid
                } else {
                    RecordKind::Rejected
                },
                key: (!col(2).is_null(r)).then(|| col(2).value(r).to_string()),
                reason: col(3).value(r).to_string(),
                record: col(4).value(r).to_string(),
            });
        }
    }
    Ok(out)
}

fn read_batches(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>, parquet::errors::ParquetError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
}

fn decode_runs(batch: &RecordBatch) -> Vec<RunRecord> {
    let s = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_string::<i32>().clone())
    };
    let u = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_primitive::<arrow::datatypes::UInt64Type>().clone())
    };
    let ts = |name: &str| {
        batch.column_by_name(name).map(|c| {
            c.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .clone()
        })
    };
    let (Some(run_id), Some(sync), Some(status), Some(started), Some(finished)) = (
        s("run_id"),
        s("sync"),
        s("status"),
        ts("started_at"),
        ts("finished_at"),
    ) else {
        return Vec::new();
    };
    let get = |name: &str, r: usize| u(name).map(|c| c.value(r)).unwrap_or(0);
    let error = s("error");
    let version = batch
        .column_by_name("state_version")
        .map(|c| c.as_primitive::<arrow::datatypes::Int64Type>().clone());
    let full = batch
        .column_by_name("full_resync")
        .map(|c| c.as_boolean().clone());
    (0..batch.num_rows())
        .map(|r| RunRecord {
            run_id: run_id.value(r).to_string(),
            sync: sync.value(r).to_string(),
            status: if status.value(r) == "succeeded" {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            started_at_ms: started.value(r),
            finished_at_ms: finished.value(r),
            full_resync: full.as_ref().is_some_and(|f| f.value(r)),
            counts: RunCounts {
                read: get("read", r),
                invalid: get("invalid", r),
                created: get("created", r),
                updated: get("updated", r),
                deleted: get("deleted", r),
                unchanged: get("unchanged", r),
                rejected: get("rejected", r),
                skipped: get("skipped", r),
                // Absent from history written before HTTP destinations: 0.
                retries: get("retries", r),
            },
            state_version: version
                .as_ref()
                .filter(|v| !v.is_null(r))
                .map(|v| v.value(r) as u64),
            error: error
                .as_ref()
                .filter(|e| !e.is_null(r))
                .map(|e| e.value(r).to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

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
