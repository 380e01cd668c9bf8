//! The execution plan of a PostgreSQL read: one connection, one `COPY … TO STDOUT (FORMAT
//! binary)`, decoded batch by batch as the bytes arrive (never the whole table in memory).
//! Dropping the stream (a `LIMIT` satisfied, a failed run) closes the connection, which ends
//! the query on the server.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use super::ReadError;
use super::copy::{BadValue, Decoder};
use super::types::Kind;
use crate::databases::postgres::PgUrl;

/// What one read needs.
#[derive(Debug)]
pub struct Read {
    pub source: String,
    /// `"schema"."table"`, for messages.
    pub table: String,
    pub url: PgUrl,
    /// The `SELECT` sent inside the `COPY`.
    pub sql: String,
    pub schema: SchemaRef,
    pub kinds: Vec<Kind>,
    pub read_timeout: Duration,
}

impl Read {
    fn server_error(&self, reason: String) -> DataFusionError {
        DataFusionError::External(Box::new(ReadError::Server {
            source_name: self.source.clone(),
            table: self.table.clone(),
            server: self.url.server(),
            reason,
        }))
    }

    fn timeout(&self, doing: &'static str) -> DataFusionError {
        DataFusionError::External(Box::new(ReadError::Timeout {
            source_name: self.source.clone(),
            table: self.table.clone(),
            server: self.url.server(),
            wait: humantime::format_duration(self.read_timeout).to_string(),
            doing,
        }))
    }

    fn bad_value(&self, b: BadValue) -> DataFusionError {
        DataFusionError::External(Box::new(ReadError::Value {
            source_name: self.source.clone(),
            table: self.table.clone(),
            column: self
                .schema
                .fields()
                .get(b.column)
                .map(|f| f.name().clone())
                .unwrap_or_default(),
            row: b.row,
            reason: b.reason,
        }))
    }
}

#[derive(Debug)]
pub struct PostgresScan {
    read: Arc<Read>,
    properties: Arc<PlanProperties>,
}

impl PostgresScan {
    pub fn new(read: Read) -> PostgresScan {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(read.schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        PostgresScan {
            read: Arc::new(read),
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for PostgresScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PostgresScan: sql={}", self.read.sql)
    }
}

enum State {
    Start,
    Reading(Box<Reading>),
    Done,
}

struct Reading {
    // Kept for as long as the COPY streams: dropping the client ends the connection.
    _client: Client,
    rows: Pin<Box<CopyOutStream>>,
    decoder: Decoder,
    /// The server has sent everything.
    ended: bool,
}

impl ExecutionPlan for PostgresScan {
    fn name(&self) -> &str {
        "PostgresScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let read = self.read.clone();
        let batch_rows = context.session_config().batch_size();
        let stream = futures::stream::try_unfold(State::Start, move |state| {
            let read = read.clone();
            async move { next(&read, state, batch_rows).await }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.read.schema.clone(),
            stream,
        )))
    }
}

async fn next(
    read: &Read,
    mut state: State,
    batch_rows: usize,
) -> DfResult<Option<(arrow::array::RecordBatch, State)>> {
    loop {
        state = match state {
            State::Done => return Ok(None),
            State::Start => {
                let client = read.url.connect().await.map_err(|e| {
                    DataFusionError::External(Box::new(crate::sources::SourceError::Database {
                        name: read.source.clone(),
                        source: e,
                    }))
                })?;
                let copy = format!("COPY ({}) TO STDOUT (FORMAT binary)", read.sql);
                let rows = tokio::time::timeout(read.read_timeout, client.copy_out(&copy))
                    .await
                    .map_err(|_| read.timeout("waiting for the query to start"))?
                    .map_err(|e| {
                        read.server_error(read.url.redact(&crate::databases::postgres::message(&e)))
                    })?;
                tracing::debug!(table = %read.table, sql = %read.sql, "PostgreSQL read started");
                State::Reading(Box::new(Reading {
                    _client: client,
                    rows: Box::pin(rows),
                    decoder: Decoder::new(read.schema.clone(), read.kinds.clone(), batch_rows),
                    ended: false,
                }))
            }
            State::Reading(mut r) => {
                if let Some(batch) = r.decoder.next_batch().map_err(|b| read.bad_value(b))? {
                    return Ok(Some((batch, State::Reading(r))));
                }
                if r.ended {
                    let last = r.decoder.finish().map_err(|b| read.bad_value(b))?;
                    return Ok(last.map(|b| (b, State::Done)));
                }
                match tokio::time::timeout(read.read_timeout, r.rows.next()).await {
                    Err(_) => return Err(read.timeout("sending rows")),
                    Ok(Some(Ok(chunk))) => r.decoder.push(&chunk),
                    Ok(Some(Err(e))) => {
                        return Err(read.server_error(
                            read.url.redact(&crate::databases::postgres::message(&e)),
                        ));
                    }
                    Ok(None) => r.ended = true,
                }
                State::Reading(r)
            }
        };
    }
}
