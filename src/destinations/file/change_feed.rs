//! The file destination's `changes` mode: each run writes the changes it sent as one file, a
//! change feed for whatever loads the folder downstream (a lake table, a CDC consumer).
//!
//! ```text
//!  <path>/<object>/v00000000000000000007.<format>     the changes of the run that committed state version 7:
//!                                                     the sync's fields + __bf_op (upsert, update, create,
//!                                                     append, delete — a delete carries only the key)
//! ```
//!
//! Rows stream into the file as the diff produces them; the upload completes (a local rename,
//! an object store's atomic completion) only in `finish`, so a failed run leaves no partial
//! file. The file is named after the state version the run commits: a run repeated after a
//! crash replaces it with the same changes instead of adding a second copy, and a run with no
//! changes writes nothing. Unlike the `snapshot` mode the folder holds no record state, so
//! update-only rows are not checked against existing records and create-only never counts
//! skips.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, new_null_array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use parquet::arrow::AsyncArrowWriter;
use tokio::io::AsyncWriteExt;

use super::format::FileFormat;
use crate::background_writer::BackgroundWriter;
use crate::destinations::{
    BatchOutcome, DestinationError, FinishOutcome, ObjectWriter, WriteOp, WriteTarget,
};

/// The column naming each row's operation.
pub const OP_COLUMN: &str = "__bf_op";

/// The file a run writes into the feed folder `folder` (an object path).
pub fn change_file(folder: &ObjectPath, version: u64, format: FileFormat) -> ObjectPath {
    folder
        .clone()
        .join(format!("v{version:020}.{}", format.extension()))
}

/// The highest version a change file in `folder` has.
pub async fn newest_version(
    store: &dyn ObjectStore,
    folder: &ObjectPath,
) -> Result<Option<u64>, object_store::Error> {
    let listing = match store.list_with_delimiter(Some(folder)).await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(listing
        .objects
        .iter()
        .filter_map(|o| o.location.filename())
        .filter_map(|f| f.strip_prefix('v')?.split('.').next()?.parse::<u64>().ok())
        .max())
}

enum Sink {
    /// Encoded on a task of its own, overlapping the diff (see `background_writer`).
    Parquet(BackgroundWriter),
    Text {
        out: Box<BufWriter>,
        header: bool,
    },
}

/// Streams a run's changes into its file.
pub struct ChangeFeedWriter {
    destination: String,
    target: WriteTarget,
    format: FileFormat,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    schema: SchemaRef,
    sink: Option<Sink>,
}

impl ChangeFeedWriter {
    pub fn new(
        destination: &str,
        target: &WriteTarget,
        format: FileFormat,
        store: Arc<dyn ObjectStore>,
        folder: &ObjectPath,
    ) -> Self {
        let fields = super::format::fields_with_op(target, OP_COLUMN, DataType::Utf8);
        ChangeFeedWriter {
            destination: destination.to_string(),
            target: target.clone(),
            format,
            store,
            path: change_file(folder, target.version, format),
            schema: Arc::new(Schema::new(fields)),
            sink: None,
        }
    }

    fn fail(&self, reason: impl ToString) -> DestinationError {
        DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: reason.to_string(),
        }
    }

    fn open_sink(&self) -> Result<Sink, DestinationError> {
        let out = BufWriter::new(self.store.clone(), self.path.clone());
        Ok(match self.format {
            FileFormat::Parquet => Sink::Parquet(BackgroundWriter::spawn(
                AsyncArrowWriter::try_new(
                    out,
                    self.schema.clone(),
                    Some(crate::state::file_writer_properties(
                        self.target.distinct_field(),
                    )),
                )
                .map_err(|e| self.fail(e))?,
            )),
            FileFormat::Csv | FileFormat::Jsonl => Sink::Text {
                out: Box::new(out),
                header: true,
            },
        })
    }
}

#[async_trait]
impl ObjectWriter for ChangeFeedWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(BatchOutcome::default());
        }
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            if field.name() == OP_COLUMN {
                columns.push(Arc::new(StringArray::from(vec![op.as_str(); rows])) as _);
            } else {
                columns.push(match batch.column_by_name(field.name()) {
                    Some(c) if c.data_type() == field.data_type() => c.clone(),
                    Some(c) => {
                        arrow::compute::cast(c, field.data_type()).map_err(|e| self.fail(e))?
                    }
                    None => new_null_array(field.data_type(), rows),
                });
            }
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| self.fail(e))?;
        if self.sink.is_none() {
            self.sink = Some(self.open_sink()?);
        }
        let format = self.format;
        let failed = |e: String| DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: e,
        };
        match self.sink.as_mut() {
            Some(Sink::Parquet(w)) => w.write(batch).await.map_err(|e| failed(e.to_string()))?,
            Some(Sink::Text { out, header }) => {
                let mut buf = Vec::new();
                match format {
                    FileFormat::Csv => arrow::csv::WriterBuilder::new()
                        .with_header(*header)
                        .build(&mut buf)
                        .write(&batch)
                        .map_err(|e| failed(e.to_string()))?,
                    _ => {
                        let mut w = arrow::json::WriterBuilder::new()
                            .with_explicit_nulls(true)
                            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                        w.write(&batch).map_err(|e| failed(e.to_string()))?;
                        w.finish().map_err(|e| failed(e.to_string()))?;
                    }
                }
                *header = false;
                out.write_all(&buf)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
            None => {}
        }
        Ok(BatchOutcome::default())
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        let this = *self;
        match this.sink {
            Some(Sink::Parquet(w)) => {
                w.close().await.map_err(|e| DestinationError::Write {
                    destination: this.destination.clone(),
                    object: this.target.object.clone(),
                    reason: e.to_string(),
                })?;
            }
            Some(Sink::Text { mut out, .. }) => {
                out.shutdown().await.map_err(|e| DestinationError::Write {
                    destination: this.destination.clone(),
                    object: this.target.object.clone(),
                    reason: e.to_string(),
                })?;
            }
            None => {}
        }
        Ok(FinishOutcome::default())
    }
}
