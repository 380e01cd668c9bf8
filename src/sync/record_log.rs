//! Record logs: with `record_log = true` (on the sync, or in `[engine]` for all), every record a
//! run sends is written down: one Parquet file per run under
//! `history/<sync>/record_log/`, one row per record and operation: run, time, key (as text),
//! operation, status (`sent` or `rejected`) and the destination's message. Readable with any
//! Parquet reader; `backflow history SYNC --records KEY` tells one record's story. Files older
//! than `record_log_retention` (default 30 days) are removed after each successful run.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;

use super::{SyncError, SyncRef};
use crate::state::StateError;

/// Where a sync's record log files are, under the state folder.
pub fn dir(sync: &str) -> String {
    format!("history/{sync}/record_log")
}

/// The columns of a record log file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Utf8, true),
        Field::new("op", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, true),
    ]))
}

/// The days a record log is kept when the project does not say.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// One run's record log being written.
pub struct RecordLog {
    writer: AsyncArrowWriter<BufWriter>,
    rel: String,
    run_id: String,
}

impl RecordLog {
    /// A log for this run when the sync keeps one.
    pub(super) fn open(sync: &SyncRef<'_>, started_ms: i64) -> Result<Option<Self>, SyncError> {
        let engine = &sync.project.config.engine;
        if !sync.config.record_log.unwrap_or(engine.record_log) {
            return Ok(None);
        }
        let rel = format!(
            "{}/{started_ms:013}-{}.parquet",
            dir(sync.name),
            sync.run_id
        );
        // The run, operation and status repeat on every row: dictionaries make them nearly
        // free; snappy keeps the cost of logging every row of a large load low.
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_dictionary_enabled(true)
            .build();
        let writer = sync
            .project
            .state
            .parquet_writer_with(&rel, schema(), properties)?;
        Ok(Some(RecordLog {
            writer,
            rel,
            run_id: sync.run_id.clone(),
        }))
    }

    /// Log `keys` (any type; written as text) sent with `op`; `refused` gives, per row, the
    /// destination's reason when it refused the record.
    pub(super) async fn write(
        &mut self,
        op: &str,
        keys: &ArrayRef,
        refused: &[Option<String>],
    ) -> Result<(), SyncError> {
        let n = keys.len();
        if n == 0 {
            return Ok(());
        }
        let parquet = |source| {
            SyncError::State(StateError::Parquet {
                path: self.rel.clone(),
                source,
            })
        };
        let text: ArrayRef = Arc::new(crate::values::texts(keys));
        let now = chrono::Utc::now().timestamp_millis();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.run_id.as_str(); n])),
            Arc::new(TimestampMillisecondArray::from(vec![now; n]).with_timezone("UTC")),
            text,
            Arc::new(StringArray::from(vec![op; n])),
            Arc::new(StringArray::from_iter_values((0..n).map(|i| {
                if refused.get(i).is_some_and(Option::is_some) {
                    "rejected"
                } else {
                    "sent"
                }
            }))),
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| refused.get(i).cloned().flatten()),
            )),
        ];
        let batch = RecordBatch::try_new(schema(), columns)
            .map_err(|e| parquet(parquet::errors::ParquetError::External(Box::new(e))))?;
        self.writer.write(&batch).await.map_err(parquet)
    }

    /// Finish the file.
    pub(super) async fn close(self) -> Result<(), SyncError> {
        let rel = self.rel;
        self.writer.close().await.map_err(|source| {
            SyncError::State(StateError::Parquet {
                path: rel.clone(),
                source,
            })
        })?;
        Ok(())
    }
}

/// Remove the sync's record log files older than its retention. Best effort.
pub(super) async fn expire(sync: &SyncRef<'_>) {
    let engine = &sync.project.config.engine;
    let retention = sync
        .config
        .record_log_retention
        .as_deref()
        .or(engine.record_log_retention.as_deref())
        .and_then(crate::duration::parse)
        .unwrap_or(DEFAULT_RETENTION);
    let oldest = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
    let state = &sync.project.state;
    let Ok(files) = state.list_files(&dir(sync.name)).await else {
        return;
    };
    for f in files {
        let started: Option<i64> = f.split('-').next().and_then(|s| s.parse().ok());
        if started.is_some_and(|s| s < oldest)
            && let Err(e) = state.delete(&format!("{}/{f}", dir(sync.name))).await
        {
            tracing::warn!(sync = sync.name, error = %e, "could not remove an old record log");
        }
    }
}
