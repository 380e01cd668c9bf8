//! A Parquet writer that encodes on a task of its own.
//!
//! Encoding a batch (dictionaries, compression, page statistics) is CPU work that the apply
//! stage used to do in line, between reading one diff batch and the next: while it encoded,
//! the diff waited for room ahead of it and a core stood idle. [`BackgroundWriter`] hands each
//! batch to a task that owns an [`AsyncArrowWriter`], so encoding overlaps the diff and the
//! rest of the apply stage.
//!
//! Nothing changes for a crash or a failed run: the file is complete only once [`close`]
//! returns (an object store's upload completes there, as before), and a writer dropped without
//! `close` completes nothing. An encoding or storage error is reported by the next `write`, or
//! at the latest by `close`, so a run cannot commit a file that failed to write.
//!
//! [`close`]: BackgroundWriter::close

use arrow::array::RecordBatch;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Batches handed over and not yet encoded. Two keep the task busy while the next one is
/// made, and hold little memory (the batches exist anyway until they are encoded).
const QUEUED_BATCHES: usize = 2;

enum Message {
    Batch(RecordBatch),
    Close,
}

/// An [`AsyncArrowWriter`] driven by a task of its own (see the module documentation).
pub struct BackgroundWriter {
    tx: mpsc::Sender<Message>,
    task: Option<JoinHandle<Result<(), ParquetError>>>,
}

impl BackgroundWriter {
    /// Start the task that owns `writer`. Needs a tokio runtime.
    pub fn spawn<W: AsyncFileWriter + Send + 'static>(writer: AsyncArrowWriter<W>) -> Self {
        let (tx, mut rx) = mpsc::channel(QUEUED_BATCHES);
        let task = tokio::spawn(async move {
            let mut writer = writer;
            while let Some(message) = rx.recv().await {
                match message {
                    Message::Batch(batch) => writer.write(&batch).await?,
                    Message::Close => {
                        writer.close().await?;
                        return Ok(());
                    }
                }
            }
            // Dropped without `close`: the file is left incomplete, as a failed run's must be.
            Ok(())
        });
        BackgroundWriter {
            tx,
            task: Some(task),
        }
    }

    /// Queue `batch` for encoding. Fails with the error that stopped the task, when an earlier
    /// batch could not be written.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), ParquetError> {
        if self.tx.send(Message::Batch(batch)).await.is_err() {
            return Err(self.stopped().await);
        }
        Ok(())
    }

    /// Encode what is queued and finish the file.
    pub async fn close(mut self) -> Result<(), ParquetError> {
        if self.tx.send(Message::Close).await.is_err() {
            return Err(self.stopped().await);
        }
        // Told to close: the task's own result is the file's.
        match self.task.take() {
            Some(task) => joined(task.await),
            None => Err(stopped_early()),
        }
    }

    /// Why the task stopped before it was told to close.
    async fn stopped(&mut self) -> ParquetError {
        match self.task.take() {
            Some(task) => joined(task.await).err().unwrap_or_else(stopped_early),
            None => stopped_early(),
        }
    }
}

fn stopped_early() -> ParquetError {
    ParquetError::General("the Parquet writer stopped before the file was finished".into())
}

fn joined(
    result: Result<Result<(), ParquetError>, tokio::task::JoinError>,
) -> Result<(), ParquetError> {
    result.map_err(|e| ParquetError::General(format!("the Parquet writer's task failed: {e}")))?
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use bytes::Bytes;
    use futures::future::BoxFuture;

    use super::*;

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (from..from + n).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name {i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Collects what is written into a shared buffer; fails every write after `fail_after`
    /// bytes when set.
    #[derive(Clone, Default)]
    pub(crate) struct Shared {
        pub(crate) bytes: Arc<std::sync::Mutex<Vec<u8>>>,
        pub(crate) completed: Arc<std::sync::atomic::AtomicBool>,
        pub(crate) fail_after: Option<usize>,
    }

    impl AsyncFileWriter for Shared {
        fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
            Box::pin(async move {
                let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
                if self.fail_after.is_some_and(|n| b.len() + bs.len() > n) {
                    return Err(ParquetError::General("disk full".into()));
                }
                b.extend_from_slice(&bs);
                Ok(())
            })
        }
        fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
            Box::pin(async move {
                self.completed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn writes_every_batch_in_order_and_completes_on_close() {
        let sink = Shared::default();
        let first = batch(0, 10);
        let writer = AsyncArrowWriter::try_new(sink.clone(), first.schema(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut w = BackgroundWriter::spawn(writer);
        for i in 0..20 {
            w.write(batch(i * 10, 10))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!sink.completed.load(std::sync::atomic::Ordering::SeqCst));
        w.close().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(sink.completed.load(std::sync::atomic::Ordering::SeqCst));
        let bytes = Bytes::from(sink.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 1024)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<i64> = reader
            .flat_map(|b| {
                let b = b.unwrap_or_else(|e| panic!("{e}"));
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().cloned();
                ids.map(|a| a.values().to_vec()).unwrap_or_default()
            })
            .collect();
        assert_eq!(ids, (0..200).collect::<Vec<i64>>());
    }

    #[tokio::test]
    async fn dropped_without_close_completes_nothing() {
        let sink = Shared::default();
        let b = batch(0, 10);
        let writer = AsyncArrowWriter::try_new(sink.clone(), b.schema(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut w = BackgroundWriter::spawn(writer);
        w.write(b).await.unwrap_or_else(|e| panic!("{e}"));
        drop(w);
        // The task has ended once it has dropped its writer, and with it its sink's clone.
        for _ in 0..1000 {
            if Arc::strong_count(&sink.bytes) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(Arc::strong_count(&sink.bytes), 1, "the task did not end");
        assert!(!sink.completed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_a_later_write_or_by_close() {
        let sink = Shared {
            fail_after: Some(64),
            ..Shared::default()
        };
        let b = batch(0, 1000);
        // Small row groups: every write flushes one, so the sink is written during `write`.
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .build();
        let writer = AsyncArrowWriter::try_new(sink.clone(), b.schema(), Some(props))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut w = BackgroundWriter::spawn(writer);
        let mut failed = None;
        for i in 0..50 {
            if let Err(e) = w.write(batch(i * 1000, 1000)).await {
                failed = Some(e);
                break;
            }
        }
        let error = match failed {
            Some(e) => e,
            None => match w.close().await {
                Err(e) => e,
                Ok(()) => panic!("close succeeded on a sink that refuses writes"),
            },
        };
        assert!(error.to_string().contains("disk full"), "{error}");
        assert!(!sink.completed.load(std::sync::atomic::Ordering::SeqCst));
    }
}
