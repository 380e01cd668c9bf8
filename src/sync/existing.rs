//! What the destination object already holds, for a sync that has no state (its first run, or
//! a run after the state was lost): the object's keys ([`Destination::keys`]) as a table the
//! diff compares with. A model row whose key is there is an update, not a create; a record that
//! is there and not in the model is *unowned*: counted and left alone, since nothing says this
//! sync created it (`backflow state adopt` says so, deliberately).

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;

use super::map::KEY;
use crate::destinations::{Destination, DestinationError, KeyStream, WriteTarget};

/// The schema of a destination's keys: one text column, [`KEY`].
fn keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(KEY, DataType::Utf8, false)]))
}

/// The object's keys as a table (read again each time a plan over it runs), or None when the
/// destination cannot list its records.
pub(crate) fn table(
    destination: Arc<dyn Destination>,
    target: &WriteTarget,
) -> Option<Arc<StreamingTable>> {
    // Asking once tells whether it can (the stream reads nothing until polled).
    drop(destination.keys(target)?);
    let keys = DestinationKeys {
        destination,
        target: target.clone(),
        schema: keys_schema(),
    };
    StreamingTable::try_new(keys_schema(), vec![Arc::new(keys)])
        .ok()
        .map(Arc::new)
}

/// Chunks of keys as record batches of [`keys_schema`].
fn batches(keys: KeyStream) -> impl futures::Stream<Item = Result<RecordBatch, DataFusionError>> {
    keys.map(|chunk| {
        let chunk = chunk.map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(RecordBatch::try_new(
            keys_schema(),
            vec![Arc::new(StringArray::from(chunk))],
        )?)
    })
}

/// Whether the object holds at least one record (None: the destination cannot tell).
pub(crate) async fn holds_records(
    destination: &dyn Destination,
    target: &WriteTarget,
) -> Result<Option<bool>, DestinationError> {
    let Some(mut keys) = destination.keys(target) else {
        return Ok(None);
    };
    while let Some(chunk) = keys.next().await {
        if !chunk?.is_empty() {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

#[derive(Debug)]
struct DestinationKeys {
    destination: Arc<dyn Destination>,
    target: WriteTarget,
    schema: SchemaRef,
}

impl PartitionStream for DestinationKeys {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let stream = match self.destination.keys(&self.target) {
            Some(keys) => batches(keys).boxed(),
            None => futures::stream::empty().boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
