//! Writing one table during one run.

use arrow::array::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use super::copy::Encoded;
use super::schema::*;
use super::*;
use crate::databases::postgres::{self as pg, PgUrl, quote};
use crate::databases::{Attempt, Bisect};
use crate::destinations::{
    BatchOutcome, DestinationError, FinishOutcome, ObjectWriter, Rejection, WriteOp, WriteTarget,
};

pub(super) struct PostgresWriter {
    /// The table was empty when the run began: creates, appends and upserts are COPY'd
    /// straight into it (no staging, no conflict check), until a row collides with one already
    /// there (someone else wrote), after which every batch takes the staging path.
    pub direct: bool,
    pub destination: String,
    pub table: String,
    pub target: WriteTarget,
    pub url: PgUrl,
    pub client: Client,
    /// A second connection while the table was empty: each batch of at least
    /// [`TWO_STREAMS_ROWS`] rows goes straight in as two COPY streams at once, one per
    /// connection (two server processes insert, instead of one).
    pub peer: Peer,
    /// The table's column types (`pg_type.typname`) by column name: where they match the
    /// fields' exactly, rows go in COPY's binary format (see `copy`).
    pub types: std::collections::HashMap<String, String>,
}

/// The second connection of an initial load.
pub(super) enum Peer {
    /// Not connected yet: it connects for the first batch that goes in as two streams.
    Unopened(PostgresDestination),
    Open(Client),
    /// Not wanted (the table was not empty), or it could not connect: one stream.
    None,
}

impl PostgresWriter {
    /// Connect the second connection if it is not yet. When it cannot connect (the server
    /// refuses one more connection, say), the load goes on as one stream.
    async fn open_peer(&mut self) {
        if let Peer::Unopened(destination) = &self.peer {
            self.peer = match destination.connect(&self.url).await {
                Ok(client) => Peer::Open(client),
                Err(e) => {
                    tracing::warn!(
                        "{e}: the initial load of {} goes in as one COPY stream",
                        self.target.object
                    );
                    Peer::None
                }
            };
        }
    }

    fn fail(&self, reason: String) -> DestinationError {
        DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: self.url.redact(&reason),
        }
    }

    /// `t.k = s.k` for each key field (the table `t`, the staged rows `s`).
    fn same_key(&self) -> String {
        self.target
            .key
            .iter()
            .map(|k| format!("t.{0} = s.{0}", quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The statements applying the staged rows for `op`.
    fn statement(&self, op: WriteOp, columns: &[String]) -> String {
        let t = &self.table;
        let key = self.target.key_list(quote);
        let same_key = self.same_key();
        let stage = quote(STAGE);
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let non_key: Vec<String> = columns
            .iter()
            .filter(|c| !self.target.is_key(c))
            .map(|c| quote(c))
            .collect();
        match op {
            WriteOp::Append => format!("INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage}"),
            WriteOp::Create => format!(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({key}) DO NOTHING"
            ),
            WriteOp::Upsert if non_key.is_empty() => format!(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({key}) DO NOTHING"
            ),
            WriteOp::Upsert => format!(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({key}) DO UPDATE SET {}",
                non_key
                    .iter()
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            WriteOp::Update if non_key.is_empty() => "SELECT 1".into(),
            WriteOp::Update => format!(
                "UPDATE {t} AS t SET {} FROM {stage} AS s WHERE {same_key}",
                non_key
                    .iter()
                    .map(|c| format!("{c} = s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            WriteOp::Delete => {
                format!("DELETE FROM {t} AS t USING {stage} AS s WHERE {same_key}")
            }
        }
    }

    fn encode(&self, batch: &RecordBatch, numbered: bool) -> Result<Encoded, DestinationError> {
        Encoded::new(batch, &self.types, numbered).map_err(|e| self.fail(e.to_string()))
    }

    /// The rows of `batch` (an operation that may go straight in) as two COPY streams at once,
    /// each half of the rows in its own transaction on its own connection. What cannot go
    /// straight in is left to `bisect`: a half with a refused row is split, a half that
    /// collided with a record already there is tried again through the staging table.
    async fn two_streams(
        &mut self,
        encoded: &Encoded,
        copy: &str,
        bisect: &mut Bisect,
        applied: &mut Vec<BatchOutcome>,
    ) -> Result<(), DestinationError> {
        self.open_peer().await;
        let Peer::Open(peer) = &mut self.peer else {
            return Ok(());
        };
        let Some(all) = bisect.next_range() else {
            return Ok(());
        };
        let mid = all.start + all.len() / 2;
        let (low, high) = (all.start..mid, mid..all.end);
        let (a, b) = tokio::join!(
            copy_direct(
                &mut self.client,
                copy,
                encoded.messages(low.clone(), COPY_CHUNK)
            ),
            copy_direct(peer, copy, encoded.messages(high.clone(), COPY_CHUNK)),
        );
        for (rows, result) in [(high, b), (low, a)] {
            match result.map_err(|e| self.fail(pg::message(&e)))? {
                Some(Attempt::Done(a)) => applied.push(a),
                Some(Attempt::RowError(message)) => bisect.refused(rows, message),
                None => {
                    self.direct = false;
                    bisect.again(rows);
                }
            }
        }
        Ok(())
    }

    /// Apply rows `range` in one transaction.
    async fn attempt(
        &mut self,
        op: WriteOp,
        copy: &str,
        statement: &str,
        missing: &str,
        messages: Vec<Bytes>,
        rows: std::ops::Range<usize>,
    ) -> Result<Attempt<BatchOutcome>, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        let result: Result<BatchOutcome, tokio_postgres::Error> = async {
            copy_in(&tx, copy, messages).await?;
            let mut applied = BatchOutcome::default();
            if op == WriteOp::Update {
                for r in tx.query(missing, &[]).await? {
                    let row: i32 = r.get(0);
                    applied.rejected.push(Rejection {
                        row: row as usize,
                        reason: crate::destinations::NO_RECORD_FOR_UPDATE.into(),
                    });
                }
            }
            let n = tx.execute(statement, &[]).await?;
            if op == WriteOp::Create {
                applied.skipped = rows.len().saturating_sub(n as usize);
            }
            Ok(applied)
        }
        .await;
        match result {
            Ok(applied) => {
                tx.commit().await?;
                Ok(Attempt::Done(applied))
            }
            Err(e) if pg::is_row_error(&e) => {
                tx.rollback().await?;
                Ok(Attempt::RowError(pg::message(&e)))
            }
            Err(e) => Err(e),
        }
    }
}

/// Batches of at least this many rows go into an empty table as two COPY streams.
const TWO_STREAMS_ROWS: usize = 4096;

/// COPY `messages` (rows without their row numbers) straight into the table, in one
/// transaction on `client`. `Ok(None)` when nothing was written because a row collided with
/// one already in the table, or with one the other stream was writing (a unique violation, or
/// a deadlock between the two streams, which PostgreSQL breaks by aborting one).
async fn copy_direct(
    client: &mut Client,
    copy: &str,
    messages: Vec<Bytes>,
) -> Result<Option<Attempt<BatchOutcome>>, tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    let tx = client.transaction().await?;
    let result = copy_in(&tx, copy, messages).await;
    match result {
        Ok(()) => {
            tx.commit().await?;
            Ok(Some(Attempt::Done(BatchOutcome::default())))
        }
        Err(e)
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
        {
            tx.rollback().await?;
            Ok(None)
        }
        Err(e) if pg::is_row_error(&e) => {
            tx.rollback().await?;
            Ok(Some(Attempt::RowError(pg::message(&e))))
        }
        Err(e) => Err(e),
    }
}

/// Run the `COPY … FROM STDIN` statement `copy` with the data `messages`, in `tx`.
async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &str,
    messages: Vec<Bytes>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(copy).await?;
    futures::pin_mut!(sink);
    for message in messages {
        sink.feed(message).await?;
    }
    sink.finish().await?;
    Ok(())
}

#[async_trait]
impl ObjectWriter for PostgresWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let columns = crate::destinations::column_names(&batch);
        let column_list = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let statement = self.statement(op, &columns);
        let same_key = self.same_key();
        let missing = format!(
            "SELECT s.{row} FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {same_key})",
            row = quote(ROW),
            stage = quote(STAGE),
            t = self.table
        );
        let mut bisect = Bisect::new(batch.num_rows());
        let mut applied = Vec::new();
        let direct_op = matches!(op, WriteOp::Upsert | WriteOp::Create | WriteOp::Append);
        // Encoded when first needed: without row numbers for the table, with them for the
        // staging table.
        let mut direct: Option<Encoded> = None;
        let mut staged: Option<Encoded> = None;
        if self.direct
            && direct_op
            && !matches!(self.peer, Peer::None)
            && batch.num_rows() >= TWO_STREAMS_ROWS
        {
            let encoded = self.encode(&batch, false)?;
            let copy = format!(
                "COPY {} ({column_list}) FROM STDIN{}",
                self.table,
                encoded.options()
            );
            self.two_streams(&encoded, &copy, &mut bisect, &mut applied)
                .await?;
            direct = Some(encoded);
        }
        while let Some(rows) = bisect.next_range() {
            if self.direct && direct_op {
                let encoded = match direct.take() {
                    Some(e) => e,
                    None => self.encode(&batch, false)?,
                };
                let copy = format!(
                    "COPY {} ({column_list}) FROM STDIN{}",
                    self.table,
                    encoded.options()
                );
                let messages = encoded.messages(rows.clone(), COPY_CHUNK);
                direct = Some(encoded);
                match copy_direct(&mut self.client, &copy, messages)
                    .await
                    .map_err(|e| self.fail(pg::message(&e)))?
                {
                    Some(Attempt::Done(a)) => {
                        applied.push(a);
                        continue;
                    }
                    Some(Attempt::RowError(message)) => {
                        bisect.refused(rows, message);
                        continue;
                    }
                    // A record is there already: stage from now on.
                    None => self.direct = false,
                }
            }
            let encoded = match staged.take() {
                Some(e) => e,
                None => self.encode(&batch, true)?,
            };
            let copy = format!(
                "COPY {} ({}, {column_list}) FROM STDIN{}",
                quote(STAGE),
                quote(ROW),
                encoded.options()
            );
            let messages = encoded.messages(rows.clone(), COPY_CHUNK);
            staged = Some(encoded);
            match self
                .attempt(op, &copy, &statement, &missing, messages, rows.clone())
                .await
                .map_err(|e| self.fail(pg::message(&e)))?
            {
                Attempt::Done(a) => applied.push(a),
                Attempt::RowError(message) => bisect.refused(rows, message),
            }
        }
        let refused = bisect.into_refused();
        Ok(crate::destinations::merge_outcomes(applied, refused, |r| {
            self.url.redact(r)
        }))
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        Ok(FinishOutcome::default())
    }
}
