//! What the destination object already holds, for a sync that has no state (its first run, or
//! a run after the state was lost): the object's keys ([`Destination::keys`]) as a table the
//! diff compares with. A model row whose key is there is an update, not a create; a record that
//! is there and not in the model is *unowned*: counted and left alone, since nothing says this
//! sync created it (`backflow state adopt` says so, deliberately).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;

use super::map::KEY;
use crate::destinations::{Destination, DestinationError, KeyStream, WriteTarget};

/// The schema of a destination's keys: one column, [`KEY`], text (a composite key's: a
/// struct of the key fields as text).
fn keys_schema(target: &WriteTarget) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(KEY, key_type(target), false)]))
}

fn key_type(target: &WriteTarget) -> DataType {
    match target.key.as_slice() {
        [_] => DataType::Utf8,
        parts => DataType::Struct(text_fields(parts)),
    }
}

fn text_fields(parts: &[String]) -> Fields {
    parts
        .iter()
        .map(|p| Field::new(p, DataType::Utf8, true))
        .collect()
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
        schema: keys_schema(target),
    };
    StreamingTable::try_new(keys_schema(target), vec![Arc::new(keys)])
        .ok()
        .map(Arc::new)
}

/// The destination's keys (`keys`, a scan of [`table`]) cast to the model's `key_type`, those
/// that cannot be (a text where the model has numbers, a part of a composite key among them)
/// left out: no model row can have them.
pub(crate) fn typed(
    keys: datafusion::prelude::DataFrame,
    key_type: &DataType,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    use datafusion::prelude::{Expr, ident, try_cast};
    let keys = keys.select(vec![try_cast(ident(KEY), key_type.clone()).alias(KEY)])?;
    let complete = match key_type {
        // A composite key's cast leaves the struct and makes a part NULL.
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| {
                datafusion::functions::core::expr_fn::get_field(ident(KEY), f.name().as_str())
                    .is_not_null()
            })
            .fold(ident(KEY).is_not_null(), Expr::and),
        _ => ident(KEY).is_not_null(),
    };
    keys.filter(complete)
}

/// Chunks of keys as record batches of [`keys_schema`].
fn batches(
    keys: KeyStream,
    schema: SchemaRef,
    parts: Vec<String>,
) -> impl futures::Stream<Item = Result<RecordBatch, DataFusionError>> {
    keys.map(move |chunk| {
        let chunk = chunk.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut columns: Vec<ArrayRef> = chunk
            .into_iter()
            .map(|texts| Arc::new(StringArray::from(texts)) as ArrayRef)
            .collect();
        let key: ArrayRef = if parts.len() == 1 {
            columns.pop().ok_or_else(|| {
                DataFusionError::Internal("a chunk of keys without a column".into())
            })?
        } else {
            Arc::new(StructArray::try_new(text_fields(&parts), columns, None)?)
        };
        Ok(RecordBatch::try_new(schema.clone(), vec![key])?)
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
        if chunk?.first().is_some_and(|c| !c.is_empty()) {
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
            Some(keys) => batches(keys, self.schema.clone(), self.target.key.clone()).boxed(),
            None => futures::stream::empty().boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
