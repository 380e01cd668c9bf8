//! Destinations: where syncs write. Each kind lives in its own file and implements
//! [`Destination`]; [`build`] is the one place that lists them. The pipeline only ever talks to
//! the traits here, so a new destination (an HTTP API, say) is one file and one line in
//! [`build`] and [`DestinationConfig`].
//!
//! The contract:
//! - [`Destination::open`] prepares one object for one run (creates a missing table, checks an
//!   existing one) and returns an [`ObjectWriter`].
//! - [`ObjectWriter::write`] is called once per batch of one [`WriteOp`]. It applies what it can
//!   and returns, per row, what it refused ([`Rejection`], with the destination's reason) and
//!   how many rows it found already there and left alone (create-only). An `Err` means the
//!   destination as a whole failed: the run stops and no state is committed.
//! - [`ObjectWriter::finish`] is called once after the last batch; it may apply the writes (file
//!   destinations rewrite the object here) and report rejections it could only find then.
//! - Only rows that were neither rejected nor failed are marked synced, so a rejected row is
//!   retried on the next run.

mod delta;
mod encode;
mod file;
mod http;
mod mysql;
mod postgres;
mod sqlite;
mod staging;
mod table;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use serde::Deserialize;

pub use delta::{DeltaDestination, DeltaDestinationConfig};
pub use file::{FileDestination, FileDestinationConfig, FileFormat, FileMode};
pub(crate) use http::template as http_template;
pub use http::{HttpDestination, HttpDestinationConfig};
pub use mysql::{MysqlDestination, MysqlDestinationConfig};
pub use postgres::{PostgresDestination, PostgresDestinationConfig};
pub(crate) use sqlite::quote as sqlite_quote;
pub use sqlite::{SqliteDestination, SqliteDestinationConfig};

use crate::behavior::Behavior;
pub use crate::behavior::WriteOp;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination \"{destination}\": cannot write {location}: {reason}")]
    Unwritable {
        destination: String,
        location: String,
        reason: String,
    },
    /// An HTTP API's `check_path` did not answer 2xx.
    #[error(
        "destination \"{destination}\": GET {location} (check_path) failed: {reason}; check base_url, the credentials and check_path"
    )]
    Unreachable {
        destination: String,
        location: String,
        reason: String,
    },
    #[error("destination \"{destination}\", object \"{object}\": {reason}")]
    Incompatible {
        destination: String,
        object: String,
        reason: String,
    },
    #[error("destination \"{destination}\", object \"{object}\": write failed: {reason}")]
    Write {
        destination: String,
        object: String,
        reason: String,
    },
    #[error("destination \"{destination}\": {source}")]
    Database {
        destination: String,
        source: crate::databases::DatabaseError,
    },
    #[error("destination \"{destination}\": {source}")]
    Storage {
        destination: String,
        source: crate::storage::StorageError,
    },
}

impl DestinationError {
    /// The database server behind destination `destination` failed (see `databases`).
    pub(crate) fn database(destination: &str, source: crate::databases::DatabaseError) -> Self {
        DestinationError::Database {
            destination: destination.to_string(),
            source,
        }
    }

    /// The object `target` names cannot be written as it is (a missing key column, a column of
    /// the wrong type, an endpoint the behavior needs): found before any write.
    pub(crate) fn incompatible(
        destination: &str,
        target: &WriteTarget,
        reason: impl ToString,
    ) -> DestinationError {
        DestinationError::Incompatible {
            destination: destination.to_string(),
            object: target.object.clone(),
            reason: reason.to_string(),
        }
    }
}

/// `[destinations.NAME]`, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationConfig {
    /// A SQLite database file; objects are tables.
    Sqlite(SqliteDestinationConfig),
    /// Files (CSV, Parquet, JSON lines) in a local folder or an object-store prefix; objects are
    /// file names.
    File(FileDestinationConfig),
    /// A PostgreSQL schema; objects are tables.
    Postgres(PostgresDestinationConfig),
    /// A MySQL or MariaDB database; objects are tables.
    Mysql(MysqlDestinationConfig),
    /// An HTTP API; objects are what its paths name (`{object}`).
    Http(Box<HttpDestinationConfig>),
    /// Delta Lake tables in a folder or an object-store prefix; objects are table folders
    /// (the `delta` feature).
    Delta(DeltaDestinationConfig),
}

impl DestinationConfig {
    /// The `type` it is written with.
    pub fn kind(&self) -> &'static str {
        match self {
            DestinationConfig::Sqlite(_) => "sqlite",
            DestinationConfig::File(_) => "file",
            DestinationConfig::Postgres(_) => "postgres",
            DestinationConfig::Mysql(_) => "mysql",
            DestinationConfig::Http(_) => "http",
            DestinationConfig::Delta(_) => "delta",
        }
    }

    /// Problems found without I/O.
    pub fn validate(&self) -> Vec<String> {
        match self {
            DestinationConfig::Sqlite(c) => c.validate(),
            DestinationConfig::File(c) => c.validate(),
            DestinationConfig::Postgres(c) => c.validate(),
            DestinationConfig::Mysql(c) => c.validate(),
            DestinationConfig::Http(c) => c.validate(),
            DestinationConfig::Delta(c) => c.validate(),
        }
    }

    /// Problems with looking records of `object` up in this destination (`fields.lookup`).
    pub fn lookup_problems(&self, object: &str) -> Vec<String> {
        match self {
            DestinationConfig::File(_) => vec![
                "a file destination has no records to look values up in; join the table that \
                 holds them in the model instead"
                    .into(),
            ],
            DestinationConfig::Http(c) => c.lookup_problems(object),
            DestinationConfig::Delta(_) => vec![
                "a Delta destination has no records to look values up in; join the table \
                 that holds them in the model instead"
                    .into(),
            ],
            _ => self.validate_object(object),
        }
    }

    /// Problems with an object name, found without I/O.
    pub fn validate_object(&self, object: &str) -> Vec<String> {
        match self {
            DestinationConfig::Sqlite(_) => sqlite::validate_object(object),
            DestinationConfig::File(_) => file::validate_object(object),
            DestinationConfig::Postgres(_) => postgres::validate_object(object),
            DestinationConfig::Mysql(_) => mysql::validate_object(object),
            DestinationConfig::Http(_) => http::validate_object(object),
            DestinationConfig::Delta(_) => delta::validate_object(object),
        }
    }
}

/// Build the destination declared by `config`; relative paths resolve against `project_dir`.
pub fn build(name: &str, config: &DestinationConfig, project_dir: &Path) -> Arc<dyn Destination> {
    match config {
        DestinationConfig::Sqlite(c) => Arc::new(SqliteDestination::new(name, c, project_dir)),
        DestinationConfig::File(c) => Arc::new(FileDestination::new(name, c, project_dir)),
        DestinationConfig::Postgres(c) => Arc::new(PostgresDestination::new(name, c)),
        DestinationConfig::Mysql(c) => Arc::new(MysqlDestination::new(name, c)),
        DestinationConfig::Http(c) => Arc::new(HttpDestination::new(name, c)),
        DestinationConfig::Delta(c) => Arc::new(DeltaDestination::new(name, c, project_dir)),
    }
}

/// What one sync run writes into.
#[derive(Clone)]
pub struct WriteTarget {
    pub sync: String,
    /// The run's id (a Delta commit records it).
    pub run_id: String,
    pub object: String,
    /// The key fields, in destination names (more than one for a composite key); the first
    /// fields of `schema`.
    pub key: Vec<String>,
    /// Every field the sync sends (key included), in destination names and Arrow types.
    pub schema: SchemaRef,
    pub behavior: Behavior,
    /// The engine's settings and memory pool, for destinations that run plans of their own.
    pub engine: datafusion::prelude::SessionConfig,
    pub runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    /// Where destinations that deliver slowly report how far they are.
    pub progress: Arc<dyn crate::progress::Progress>,
    /// The state version this run commits if it succeeds: the same for a run repeated after a
    /// crash, another after a commit (what idempotency keys are scoped to).
    pub version: u64,
    /// Updates may carry only some fields (`send = "changed"`): a batch has the key fields
    /// and any others.
    pub partial_updates: bool,
    /// The destination has no upsert: an upsert or a mirror creates its new records and
    /// updates its changed ones (see [`Destination::creates_and_updates`]).
    pub creates_and_updates: bool,
    /// A create-only sync forgets a key that left its model, so that the key is created again
    /// if it comes back (a hub write-back's creates: a record linked again after its source
    /// deleted it is created again).
    pub forget_gone: bool,
    /// Where the ids a destination gives the records it creates go, as each answer arrives
    /// (an HTTP create endpoint's `result_id`): a hub write-back that creates records keeps
    /// them, before anything else happens, to link them (see `hub::assigned`).
    pub assigned: Option<AssignedIds>,
}

/// Keeps `(key, id)` pairs (both as text) of records a destination created with ids of its
/// own; an error stops the run.
pub type AssignedIds = Arc<
    dyn Fn(Vec<(String, String)>) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

impl WriteTarget {
    /// The field whose values are all different in the object: the key, when it is one field
    /// and the behavior keeps one record per key (append-only keeps every version).
    pub fn distinct_field(&self) -> Option<&str> {
        match self.key.as_slice() {
            [one] if self.behavior != crate::behavior::Behavior::AppendOnly => Some(one),
            _ => None,
        }
    }

    /// The key as messages name it: `email`, or `["account_id","email"]`.
    pub fn key_label(&self) -> String {
        crate::keys::stored_key(&self.key)
    }

    /// Whether `field` is one of the key's.
    pub fn is_key(&self, field: &str) -> bool {
        self.key.iter().any(|k| k == field)
    }

    /// The key fields quoted with `quote` and joined by commas: `"a", "b"`.
    pub fn key_list(&self, quote: impl Fn(&str) -> String) -> String {
        self.key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `columns` are exactly the key's, in any order and ASCII case (an index or
    /// primary key on them makes keys unique).
    pub fn key_is(&self, columns: &[String]) -> bool {
        columns.len() == self.key.len()
            && self
                .key
                .iter()
                .all(|k| columns.iter().any(|c| c.eq_ignore_ascii_case(k)))
    }

    /// A name for the unique index backflow creates on the key, stable per object and key.
    pub fn key_index_name(&self, parts: &[&str]) -> String {
        let mut text = parts.join("\0");
        text.push('\0');
        text.push_str(&self.key.join("\0"));
        format!(
            "backflow_key_{:016x}",
            xxhash_rust::xxh3::xxh3_64(text.as_bytes())
        )
    }
}

impl std::fmt::Debug for WriteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTarget")
            .field("sync", &self.sync)
            .field("object", &self.object)
            .field("key", &self.key)
            .field("schema", &self.schema)
            .field("behavior", &self.behavior)
            .finish_non_exhaustive()
    }
}

/// A row the destination refused, by its index in the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub row: usize,
    pub reason: String,
}

/// A row the destination refused when the run finished, by key.
#[derive(Debug, Clone, PartialEq)]
pub struct LateRejection {
    pub key: ScalarValue,
    pub reason: String,
}

/// What a destination reports when a run's writes are finished.
#[derive(Debug, Clone, Default)]
pub struct FinishOutcome {
    /// Rows refused only now (counted as written until then).
    pub rejected: Vec<LateRejection>,
    /// Creates that found the record already there (counted as created until then).
    pub skipped: u64,
    /// Requests sent again during the run (after failures, timeouts, rate limits).
    pub retries: u64,
}

/// The outcome of one batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub rejected: Vec<Rejection>,
    /// Rows left alone because the record already existed (create).
    pub skipped: usize,
    /// Rows of an update whose record the destination had lost, and which it created instead
    /// (an HTTP update endpoint's `missing = "create"`): counted as created.
    pub created: usize,
}

impl BatchOutcome {
    /// The outcome of a batch made of the rows `rows` of another batch, in that batch's row
    /// numbers.
    pub(crate) fn mapped_to(mut self, rows: &[usize]) -> BatchOutcome {
        for r in &mut self.rejected {
            if let Some(row) = rows.get(r.row) {
                r.row = *row;
            }
        }
        self
    }
}

/// A destination kind.
#[async_trait]
pub trait Destination: Send + Sync + std::fmt::Debug {
    /// Check, without writing anything, that the target could be written.
    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError>;

    /// What identifies the object written (kind, resolved location, format): stored with the
    /// sync's state so that pointing a sync at another place is noticed.
    fn fingerprint(&self, object: &str) -> String;

    /// Prepare the target for one run.
    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError>;

    /// The keys of the records the object holds now, as text, in chunks (NULL keys left out;
    /// a missing object holds none), or None when this kind of destination cannot list its
    /// records (an HTTP API, a change feed). Nothing is read until the stream is polled. What
    /// a sync without state compares with (records it would otherwise take for new, or
    /// mirror-delete), and what `state adopt` takes over.
    fn keys(&self, _target: &WriteTarget) -> Option<KeyStream> {
        None
    }

    /// The destination's `objects` as a source whose tables are read with their own types (the
    /// database destinations), for field lookups done as a join; None when the destination
    /// finds records by request instead ([`ObjectWriter::look_up`]) or not at all.
    fn lookup_source(&self, _objects: &[String]) -> Option<Arc<dyn crate::sources::Source>> {
        None
    }

    /// Whether upserts reach this destination as a create for each new record and an update
    /// for each changed one (a plain REST API with no upsert), rather than as upserts.
    fn creates_and_updates(&self) -> bool {
        false
    }
}

/// A search for records of `object` by one of their fields (a sync's `fields.lookup`).
#[derive(Debug, Clone, PartialEq)]
pub struct LookupQuery {
    pub object: String,
    /// The field compared with the values looked up.
    pub by: String,
    /// The field whose value is wanted.
    pub returns: String,
}

/// What a lookup found for one value.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// No record has it.
    Nothing,
    /// One record has it: its `returns` value, as text.
    One(String),
    /// This many records have it.
    Many(usize),
    /// The destination refused the search for this value, or its answer cannot be used.
    Refused(String),
}

/// Chunks of a destination object's keys, as text (see [`Destination::keys`]).
pub type KeyStream = futures::stream::BoxStream<'static, Result<KeyChunk, DestinationError>>;

/// Some keys as text: one list per key field (more than one for a composite key), all of the
/// same length; a key's parts are at the same index of each.
pub type KeyChunk = Vec<Vec<String>>;

/// Gathers keys row by row into [`KeyChunk`]s.
pub(crate) struct KeyChunkBuilder {
    parts: Vec<Vec<String>>,
}

impl KeyChunkBuilder {
    pub(crate) fn new(key_fields: usize) -> Self {
        KeyChunkBuilder {
            parts: vec![Vec::new(); key_fields.max(1)],
        }
    }

    /// Add one key, its parts in key order.
    pub(crate) fn push(&mut self, parts: impl IntoIterator<Item = String>) {
        for (list, part) in self.parts.iter_mut().zip(parts) {
            list.push(part);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.parts[0].len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len() >= KEY_CHUNK
    }

    /// The keys gathered so far, leaving the builder empty.
    pub(crate) fn take(&mut self) -> KeyChunk {
        self.parts.iter_mut().map(std::mem::take).collect()
    }
}

/// How many keys a [`KeyStream`] chunk holds at most.
pub(crate) const KEY_CHUNK: usize = 8192;

/// Where a key reader sends its chunks (see [`key_stream`]).
pub(crate) type KeySender = tokio::sync::mpsc::Sender<Result<KeyChunk, DestinationError>>;

/// A [`KeyStream`] fed by `read`, a task started when the stream is first polled; its error
/// ends the stream, and it stops early when the stream is dropped (a send fails).
pub(crate) fn key_stream<F, Fut>(read: F) -> KeyStream
where
    F: FnOnce(KeySender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), DestinationError>> + Send + 'static,
{
    use futures::StreamExt;
    let start = async move {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let errors = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = read(tx).await {
                let _ = errors.send(Err(e)).await;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    };
    Box::pin(futures::stream::once(start).flatten())
}

/// Late rejections, one per row of `keys` (the key fields of staged rows, in destination
/// names), each with `reason`: what a destination that applies a run at once reports of the
/// updates whose record it lacks. The keys as the sync's state holds them (a composite key's
/// struct).
pub(crate) async fn late_rejections(
    keys: datafusion::prelude::DataFrame,
    key: &[String],
    reason: &str,
    fail: impl Fn(String) -> DestinationError,
) -> Result<Vec<LateRejection>, DestinationError> {
    use futures::StreamExt;
    let mut stream = keys
        .select(vec![crate::keys::key_expr(key)])
        .map_err(|e| fail(e.to_string()))?
        .execute_stream()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        for row in 0..batch.num_rows() {
            let key = ScalarValue::try_from_array(batch.column(0), row)
                .map_err(|e| fail(e.to_string()))?;
            out.push(LateRejection {
                key,
                reason: reason.to_string(),
            });
        }
    }
    Ok(out)
}

/// Send the keys of the records in `records` (a destination object read as a table) to `tx`
/// as text chunks (see [`Destination::keys`]): NULL keys left out, none when the table lacks a
/// key column (it holds no record of this sync).
pub(crate) async fn send_keys(
    records: datafusion::prelude::DataFrame,
    key: &[String],
    tx: &KeySender,
    fail: impl Fn(String) -> DestinationError,
) -> Result<(), DestinationError> {
    use arrow::datatypes::DataType;
    use datafusion::prelude::{Expr, ident, lit};
    use futures::StreamExt;
    if key
        .iter()
        .any(|k| records.schema().field_with_unqualified_name(k).is_err())
    {
        return Ok(());
    }
    let complete = key
        .iter()
        .map(|k| ident(k).is_not_null())
        .reduce(Expr::and)
        .unwrap_or(lit(true));
    let mut stream = records
        .select(
            key.iter()
                .map(|k| datafusion::logical_expr::cast(ident(k), DataType::Utf8).alias(k))
                .collect::<Vec<_>>(),
        )
        .and_then(|df| df.filter(complete))
        .map_err(|e| fail(e.to_string()))?
        .execute_stream()
        .await
        .map_err(|e| fail(e.to_string()))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        let mut chunk = Vec::with_capacity(key.len());
        for column in batch.columns() {
            let column =
                arrow::compute::cast(column, &DataType::Utf8).map_err(|e| fail(e.to_string()))?;
            let Some(texts) = column.as_any().downcast_ref::<arrow::array::StringArray>() else {
                return Err(fail("a key column did not read as text".into()));
            };
            chunk.push(
                texts
                    .iter()
                    .map(|t| t.unwrap_or_default().to_string())
                    .collect::<Vec<_>>(),
            );
        }
        if batch.num_rows() > 0 && tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Writes one object during one run.
#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError>;

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError>;

    /// Find records by one field (field lookups of destinations without a
    /// [`Destination::lookup_source`]): for each of `values` (distinct, not NULL), what was found,
    /// in the same order. An error fails the run: the destination could not be asked.
    async fn look_up(
        &mut self,
        query: &LookupQuery,
        _values: &ArrayRef,
    ) -> Result<Vec<Found>, DestinationError> {
        Err(DestinationError::Write {
            destination: String::new(),
            object: query.object.clone(),
            reason: "this kind of destination cannot look records up".into(),
        })
    }
}

/// Why an update-only row is refused when the destination has no record with its key.
pub(crate) const NO_RECORD_FOR_UPDATE: &str =
    "no record with this key in the destination (update-only never creates records)";

/// The names of a batch's columns (destination field names).
fn column_names(batch: &RecordBatch) -> Vec<String> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// The outcome of a batch applied in parts (see [`crate::databases::Bisect`]): the parts'
/// rejections and skips, plus the rows the database refused, with their messages passed
/// through `redact`.
fn merge_outcomes(
    parts: Vec<BatchOutcome>,
    refused: Vec<(usize, String)>,
    redact: impl Fn(&str) -> String,
) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    for part in parts {
        outcome.rejected.extend(part.rejected);
        outcome.skipped += part.skipped;
    }
    outcome
        .rejected
        .extend(refused.into_iter().map(|(row, reason)| Rejection {
            row,
            reason: redact(&reason),
        }));
    outcome.rejected.sort_by_key(|r| r.row);
    outcome
}

/// Whether a run could create `path` (a file, or a folder for change feeds): its nearest
/// existing ancestor must be a folder in which files can be created. Proven by creating and
/// removing an empty probe file there, since permission bits do not tell (root, ACLs, a
/// read-only mount).
pub(crate) fn local_writable(path: &Path) -> Result<(), String> {
    let mut dir = path.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        if d.exists() {
            if !d.is_dir() {
                return Err(format!("{} is not a folder", d.display()));
            }
            return tempfile::Builder::new()
                .prefix(".backflow-probe-")
                .tempfile_in(&d)
                .map(drop)
                .map_err(|e| format!("files cannot be created in {}: {e}", d.display()));
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    Ok(())
}

/// Problems with a destination's `path` setting, found without I/O.
fn path_problems(path: &str) -> Vec<String> {
    if path.trim().is_empty() {
        vec!["path is empty".into()]
    } else if path.contains('\0') {
        vec!["path contains a NUL character".into()]
    } else {
        vec![]
    }
}

/// Reject object names that would escape the destination (`..`, absolute paths, NUL).
fn check_relative_name(object: &str) -> Vec<String> {
    let mut p = Vec::new();
    if object.is_empty() {
        p.push("the object name is empty".to_string());
    }
    if object.contains('\0') {
        p.push("the object name contains a NUL character".to_string());
    }
    if object.contains(['#', '?']) {
        p.push(
            "the object name may not contain '#' or '?' (they have a meaning in URLs)".to_string(),
        );
    }
    if object.starts_with('/') || object.starts_with('\\') || object.contains(':') {
        p.push("the object name must be relative to the destination".to_string());
    }
    if object
        .split(['/', '\\'])
        .any(|part| part == ".." || part == ".")
    {
        p.push("the object name may not contain '.' or '..' segments".to_string());
    }
    p
}
