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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// A status this release does not know (written by another release or another tool):
    /// shown as it is.
    Other(String),
}

impl RunStatus {
    pub fn as_str(&self) -> &str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Other(s) => s,
        }
    }

    fn parse(text: &str) -> RunStatus {
        match text {
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
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
            out.extend(decode_runs(&batch, &rel)?);
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
        let batch = conform(&batch, &records_schema(), &rel)?;
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

fn decode_runs(batch: &RecordBatch, rel: &str) -> Result<Vec<RunRecord>, StateError> {
    let batch = conform(batch, &runs_schema(), rel)?;
    let s = |i: usize| batch.column(i).as_string::<i32>();
    let u = |i: usize| {
        batch
            .column(i)
            .as_primitive::<arrow::datatypes::UInt64Type>()
    };
    let ts = |i: usize| {
        batch
            .column(i)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
    };
    let version = batch
        .column(15)
        .as_primitive::<arrow::datatypes::Int64Type>();
    let full = batch.column(5).as_boolean();
    Ok((0..batch.num_rows())
        .map(|r| RunRecord {
            run_id: s(0).value(r).to_string(),
            sync: s(1).value(r).to_string(),
            status: RunStatus::parse(s(2).value(r)),
            started_at_ms: ts(3).value(r),
            finished_at_ms: ts(4).value(r),
            full_resync: full.value(r),
            counts: RunCounts {
                read: u(6).value(r),
                invalid: u(7).value(r),
                created: u(8).value(r),
                updated: u(9).value(r),
                deleted: u(10).value(r),
                unchanged: u(11).value(r),
                rejected: u(12).value(r),
                skipped: u(13).value(r),
                retries: u(14).value(r),
            },
            state_version: (!version.is_null(r)).then(|| version.value(r) as u64),
            error: (!s(16).is_null(r)).then(|| s(16).value(r).to_string()),
        })
        .collect())
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
