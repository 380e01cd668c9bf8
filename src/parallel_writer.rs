//! A Parquet writer that encodes the columns of a file side by side.
//!
//! Writing a state file is mostly encoding: each column's values are laid out in pages,
//! compressed and given statistics, one column after the other on one core. When the plan
//! feeding the file is cheap (the transaction log, a scan written back as it is), that one
//! core is the whole stage and the other stands idle. [`ParallelWriter`] gives each column of
//! the row group being written a task of its own (parquet's [`ArrowColumnWriter`], the
//! interface it offers for this), so columns are encoded at once; the row group's chunks are
//! then put together in column order, as [`parquet::arrow::ArrowWriter`] does. (One row group
//! is encoded at a time: letting the next one start while the last is finished was measured
//! to gain nothing.)
//!
//! The file is the same as `ArrowWriter` makes with the same properties: the same row groups
//! (of at most `max_row_group_row_count` rows), the Arrow schema in its metadata. And nothing
//! changes for a crash or a failed run: the file is complete only once [`close`] returns, a
//! writer dropped without `close` completes nothing, and an encoding or storage error is
//! reported by a later `write` or by `close`.
//!
//! [`close`]: ParallelWriter::close

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Leaf arrays handed to a column's task and not yet encoded.
const QUEUED_PER_COLUMN: usize = 2;

type ColumnTask = JoinHandle<Result<ArrowColumnChunk, ParquetError>>;

/// The row group being fed: one task per leaf column.
struct RowGroup {
    senders: Vec<mpsc::Sender<ArrowLeafColumn>>,
    tasks: Vec<ColumnTask>,
    rows: usize,
}

/// A Parquet file written with its columns encoded in parallel (see the module
/// documentation). Needs a tokio runtime.
pub struct ParallelWriter<W: AsyncFileWriter> {
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    sink: W,
    max_rows: usize,
    started: usize,
    current: Option<RowGroup>,
}

impl<W: AsyncFileWriter> ParallelWriter<W> {
    /// A writer of `schema` into `sink` with `properties`.
    pub fn try_new(
        sink: W,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self, ParquetError> {
        let max_rows = properties
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        // `ArrowWriter` sets the file up (the Arrow schema in its metadata); its row groups
        // are then made here.
        let (file, factory) = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))?
            .into_serialized_writer()?;
        Ok(ParallelWriter {
            file,
            factory,
            schema,
            sink,
            max_rows,
            started: 0,
            current: None,
        })
    }

    /// Hand `batch` to the column tasks; finish a row group once it is full.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let group = match self.current.take() {
                Some(group) => group,
                None => self.start()?,
            };
            let n = (self.max_rows - group.rows).min(batch.num_rows() - offset);
            let part = batch.slice(offset, n);
            let group = self.feed(group, &part).await?;
            offset += n;
            if group.rows >= self.max_rows {
                self.end(group).await?;
            } else {
                self.current = Some(group);
            }
        }
        Ok(())
    }

    /// Encode what is left, write the footer and complete the file.
    pub async fn close(mut self) -> Result<(), ParquetError> {
        if let Some(group) = self.current.take()
            && group.rows > 0
        {
            self.end(group).await?;
        }
        self.file.finish()?;
        self.flush().await?;
        self.sink.complete().await
    }

    fn start(&mut self) -> Result<RowGroup, ParquetError> {
        let writers = self.factory.create_column_writers(self.started)?;
        self.started += 1;
        let (senders, tasks) = writers.into_iter().map(spawn_column).unzip();
        Ok(RowGroup {
            senders,
            tasks,
            rows: 0,
        })
    }

    async fn feed(
        &mut self,
        mut group: RowGroup,
        batch: &RecordBatch,
    ) -> Result<RowGroup, ParquetError> {
        let mut senders = group.senders.iter();
        for (array, field) in batch.columns().iter().zip(self.schema.fields()) {
            for leaf in compute_leaves(field, array)? {
                let sent = match senders.next() {
                    Some(tx) => tx.send(leaf).await.is_ok(),
                    None => false,
                };
                if !sent {
                    // A column's task stopped: its error is the file's.
                    drop(senders);
                    group.senders.clear();
                    return Err(first_error(group.tasks).await);
                }
            }
        }
        group.rows += batch.num_rows();
        Ok(group)
    }

    /// The row group is complete: its columns finish encoding (their senders dropped), and
    /// their chunks go into the file in column order.
    async fn end(&mut self, group: RowGroup) -> Result<(), ParquetError> {
        let RowGroup { senders, tasks, .. } = group;
        drop(senders);
        let mut chunks = Vec::with_capacity(tasks.len());
        for task in tasks {
            chunks.push(joined(task.await)?);
        }
        let mut row_group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.flush().await
    }

    /// Hand what the file writer has buffered to the sink.
    async fn flush(&mut self) -> Result<(), ParquetError> {
        let bytes = std::mem::take(self.file.inner_mut());
        if bytes.is_empty() {
            return Ok(());
        }
        self.sink.write(Bytes::from(bytes)).await
    }
}

/// A task that encodes one leaf column of a row group from what it is sent.
fn spawn_column(mut writer: ArrowColumnWriter) -> (mpsc::Sender<ArrowLeafColumn>, ColumnTask) {
    let (tx, mut rx) = mpsc::channel::<ArrowLeafColumn>(QUEUED_PER_COLUMN);
    let task = tokio::spawn(async move {
        while let Some(leaf) = rx.recv().await {
            writer.write(&leaf)?;
        }
        writer.close()
    });
    (tx, task)
}

/// The error that stopped one of `tasks` (each is waited for: a task that stopped hands back
/// nothing).
async fn first_error(tasks: Vec<ColumnTask>) -> ParquetError {
    let mut first = None;
    for task in tasks {
        if let Err(e) = joined(task.await) {
            first.get_or_insert(e);
        }
    }
    first.unwrap_or_else(|| {
        ParquetError::General(
            "a column's Parquet writer stopped before the file was finished".into(),
        )
    })
}

fn joined(
    result: Result<Result<ArrowColumnChunk, ParquetError>, tokio::task::JoinError>,
) -> Result<ArrowColumnChunk, ParquetError> {
    result.map_err(|e| ParquetError::General(format!("a column's Parquet writer failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, ListArray, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
                true,
            ),
        ]))
    }

    fn batch(from: i64, n: i64) -> RecordBatch {
        let ids: Vec<i64> = (from..from + n).collect();
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|i| (i % 7 != 0).then(|| format!("name {i}")))
            .collect();
        let tags = ListArray::from_iter_primitive::<Int64Type, _, _>(
            ids.iter()
                .map(|i| (i % 5 != 0).then(|| vec![Some(*i), None, Some(i * 2)])),
        );
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
                Arc::new(tags),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    // The sink the background writer's tests use: collects what is written, fails every
    // write after `fail_after` bytes when set.
    use crate::background_writer::tests::Shared;

    fn properties(rows: usize) -> WriterProperties {
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows))
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build()
    }

    /// The same batches through `ArrowWriter` and through the parallel writer.
    async fn both(batches: &[RecordBatch], rows: usize) -> (Bytes, Bytes) {
        let mut plain = Vec::new();
        let mut w = ArrowWriter::try_new(&mut plain, schema(), Some(properties(rows)))
            .unwrap_or_else(|e| panic!("{e}"));
        for b in batches {
            w.write(b).unwrap_or_else(|e| panic!("{e}"));
        }
        w.close().unwrap_or_else(|e| panic!("{e}"));
        let sink = Shared::default();
        let mut p = ParallelWriter::try_new(sink.clone(), schema(), properties(rows))
            .unwrap_or_else(|e| panic!("{e}"));
        for b in batches {
            p.write(b).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!sink.completed.load(std::sync::atomic::Ordering::SeqCst));
        p.close().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(sink.completed.load(std::sync::atomic::Ordering::SeqCst));
        let parallel = sink.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (Bytes::from(plain), Bytes::from(parallel))
    }

    fn read(bytes: Bytes) -> (Vec<RecordBatch>, Vec<i64>) {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap_or_else(|e| panic!("{e}"));
        let groups = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let batches = builder
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        (batches, groups)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_the_file_arrow_writer_writes() {
        // Batches that cross row group boundaries, a nested column, NULLs.
        let batches: Vec<RecordBatch> = (0..23).map(|i| batch(i * 37, 37)).collect();
        let (plain, parallel) = both(&batches, 100).await;
        let (a, ga) = read(plain);
        let (b, gb) = read(parallel);
        assert_eq!(ga, gb);
        assert_eq!(gb.iter().sum::<i64>(), 23 * 37);
        assert_eq!(
            arrow::compute::concat_batches(&schema(), &a).unwrap_or_else(|e| panic!("{e}")),
            arrow::compute::concat_batches(&schema(), &b).unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[tokio::test]
    async fn an_empty_file_is_a_valid_file() {
        let (plain, parallel) = both(&[], 100).await;
        let (_, ga) = read(plain);
        let (b, gb) = read(parallel);
        assert_eq!(ga, gb);
        assert!(b.iter().all(|b| b.num_rows() == 0));
    }

    #[tokio::test]
    async fn dropped_without_close_completes_nothing() {
        let sink = Shared::default();
        let mut p = ParallelWriter::try_new(sink.clone(), schema(), properties(10))
            .unwrap_or_else(|e| panic!("{e}"));
        p.write(&batch(0, 25))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(p);
        assert!(!sink.completed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failing_sink_fails_a_later_write_or_close_and_completes_nothing() {
        let sink = Shared {
            fail_after: Some(600),
            ..Shared::default()
        };
        let mut p = ParallelWriter::try_new(sink.clone(), schema(), properties(50))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut failed = false;
        for i in 0..40 {
            if p.write(&batch(i * 50, 50)).await.is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            failed = p.close().await.is_err();
        }
        assert!(failed);
        assert!(!sink.completed.load(std::sync::atomic::Ordering::SeqCst));
    }
}
