//! PostgreSQL destination: each object is a table in one schema, keyed by the sync's key.
//!
//! A missing table is created (types mapped from the Arrow schema, the key as primary key but
//! for append-only logs). An existing table must hold each field in a column of a compatible
//! type (no silent casts: a float never lands in an integer column, a timestamp with a time
//! zone never in one without); fields it lacks are added as columns, and a unique index is
//! created on the key when there is none, because `ON CONFLICT` needs one.
//!
//! Each batch takes the fast path: its rows are COPY'd (text format) into a temporary staging
//! table with the target's column types, then one set-based statement applies them
//! (`INSERT … ON CONFLICT (key) DO UPDATE`, `UPDATE … FROM`, `DELETE … USING`), all in one
//! transaction. Into a table that was empty when the run began (an initial load), creates,
//! appends and upserts are COPY'd straight into the table instead, about twice as fast; the
//! first row that collides with a record already there switches the run back to staging. When PostgreSQL refuses a row (a value, a constraint, a trigger), the batch is
//! bisected so that the refused rows become rejections with PostgreSQL's message and the rest
//! still land.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field};
use async_trait::async_trait;
use bytes::Bytes;
use futures::SinkExt;
use serde::Deserialize;
use tokio_postgres::Client;

use super::encode::{CopyEncoder, EncodedRows, is_nested};
use super::{
    BatchOutcome, Destination, DestinationError, FinishOutcome, ObjectWriter, Rejection, WriteOp,
    WriteTarget,
};
use crate::config::Behavior;
use crate::databases::postgres::{self as pg, PgUrl, qualified, quote};
use crate::databases::{self, Attempt, Bisect, DatabaseError};

/// `type = "postgres"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDestinationConfig {
    /// The environment variable holding the connection URL.
    pub url_env: String,
    /// The schema of the tables written (default `public`).
    #[serde(default = "public")]
    pub schema: String,
}

fn public() -> String {
    "public".into()
}

impl PostgresDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = databases::validate_url_env(&self.url_env);
        if self.schema.trim().is_empty() || self.schema.contains('\0') {
            p.push("schema is not a valid name".into());
        }
        p
    }
}

pub(super) fn validate_object(object: &str) -> Vec<String> {
    let mut p = Vec::new();
    if object.trim().is_empty() {
        p.push("the table name is empty".to_string());
    }
    if object.contains('\0') {
        p.push("the table name contains a NUL character".to_string());
    }
    if object.len() > 63 {
        p.push("PostgreSQL table names are at most 63 bytes".to_string());
    }
    p
}

#[derive(Debug)]
pub struct PostgresDestination {
    name: String,
    config: PostgresDestinationConfig,
}

/// The name of the staging table's row-number column (`__bf_` names are reserved).
const ROW: &str = "__bf_row";

impl PostgresDestination {
    pub fn new(name: &str, config: &PostgresDestinationConfig) -> Self {
        PostgresDestination {
            name: name.to_string(),
            config: config.clone(),
        }
    }

    fn url(&self) -> Result<PgUrl, DestinationError> {
        PgUrl::from_env(&self.config.url_env).map_err(|e| self.db(e))
    }

    fn db(&self, source: DatabaseError) -> DestinationError {
        DestinationError::Database {
            destination: self.name.clone(),
            source,
        }
    }

    /// The table's columns (name, formatted type, type name), or None when there is no table.
    async fn columns(
        &self,
        url: &PgUrl,
        client: &Client,
        target: &WriteTarget,
    ) -> Result<Option<Vec<Column>>, DestinationError> {
        let kind = client
            .query_opt(
                "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&self.config.schema, &target.object],
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        match kind.map(|r| r.get::<_, String>(0)) {
            None => return Ok(None),
            Some(k) if k == "r" || k == "p" => {}
            Some(k) => {
                return Err(DestinationError::incompatible(
                    &self.name,
                    target,
                    format!(
                        "\"{}\".\"{}\" is not a table (relkind {k}); backflow writes only into tables",
                        self.config.schema, target.object
                    ),
                ));
            }
        }
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, \
                        COALESCE(information_schema._pg_numeric_scale(a.atttypid, a.atttypmod), -1)::int4, \
                        (a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '') \
                 FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&self.config.schema, &target.object],
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(Some(
            rows.iter()
                .map(|r| Column {
                    name: r.get(0),
                    formatted: r.get(1),
                    typname: r.get(2),
                    scale: r.get(3),
                    required: r.get(4),
                })
                .collect(),
        ))
    }

    /// Check every field against the existing columns; returns the fields to add.
    fn compare<'a>(
        &self,
        target: &'a WriteTarget,
        columns: &[Column],
    ) -> Result<Vec<&'a Field>, DestinationError> {
        let mut missing = Vec::new();
        let mut problems = Vec::new();
        if !columns.iter().any(|c| c.name == target.key) {
            return Err(DestinationError::incompatible(
                &self.name,
                target,
                format!(
                    "the table has no key column \"{}\" (it has: {})",
                    target.key,
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for f in target.schema.fields() {
            match columns.iter().find(|c| c.name == *f.name()) {
                None => missing.push(f.as_ref()),
                Some(c) => {
                    if let Err(why) = compatible(f.data_type(), c) {
                        problems.push(format!(
                            "field \"{}\" ({}) cannot go into column \"{}\" of type {}: {why}",
                            f.name(),
                            f.data_type(),
                            c.name,
                            c.formatted
                        ));
                    }
                }
            }
        }
        if target.behavior.creates() {
            for c in columns.iter().filter(|c| c.required) {
                if !target.schema.fields().iter().any(|f| *f.name() == c.name) {
                    problems.push(format!(
                        "column \"{}\" is NOT NULL without a default and the sync does not send it, so no record could be created; \
                         map a field to it, give it a default, or use behavior update-only",
                        c.name
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(DestinationError::incompatible(
                &self.name,
                target,
                problems.join("; "),
            ));
        }
        Ok(missing)
    }

    async fn key_is_unique(
        &self,
        url: &PgUrl,
        client: &Client,
        target: &WriteTarget,
    ) -> Result<bool, DestinationError> {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i \
                   JOIN pg_class c ON c.oid = i.indrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
                   WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indnkeyatts = 1 \
                     AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = $3)",
                &[&self.config.schema, &target.object, &target.key],
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(row.get(0))
    }

    /// Create or check the table; create the staging table. Returns whether the table is
    /// empty (then rows can be COPY'd straight into it).
    async fn prepare(
        &self,
        url: &PgUrl,
        client: &Client,
        target: &WriteTarget,
    ) -> Result<bool, DestinationError> {
        let table = qualified(&self.config.schema, &target.object);
        let exec = |sql: String| async move {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| self.db(url.query_error(&e)))
        };
        match self.columns(url, client, target).await? {
            None => {
                let mut cols = Vec::new();
                for f in target.schema.fields() {
                    cols.push(format!("{} {}", quote(f.name()), sql_type(f.data_type())));
                }
                if target.behavior != Behavior::AppendOnly {
                    cols.push(format!("PRIMARY KEY ({})", quote(&target.key)));
                }
                exec(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {table} ({})",
                    quote(&self.config.schema),
                    cols.join(", ")
                ))
                .await?;
            }
            Some(columns) => {
                for f in self.compare(target, &columns)? {
                    exec(format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}",
                        quote(f.name()),
                        sql_type(f.data_type())
                    ))
                    .await
                    .map_err(|e| {
                        DestinationError::incompatible(
                            &self.name,
                            target,
                            format!("cannot add column \"{}\": {e}", f.name()),
                        )
                    })?;
                }
                if target.behavior != Behavior::AppendOnly
                    && !self.key_is_unique(url, client, target).await?
                {
                    let id = xxhash_rust::xxh3::xxh3_64(
                        format!("{}\0{}\0{}", self.config.schema, target.object, target.key)
                            .as_bytes(),
                    );
                    exec(format!(
                        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({})",
                        quote(&format!("backflow_key_{id:016x}")),
                        quote(&target.key)
                    ))
                    .await
                    .map_err(|e| {
                        DestinationError::incompatible(&self.name,
                            target,
                            format!(
                                "key column \"{}\" has no unique index and one cannot be created (are there duplicate keys?): {e}",
                                target.key
                            ),
                        )
                    })?;
                }
            }
        }
        let cols = target
            .schema
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        exec(format!(
            "DROP TABLE IF EXISTS pg_temp.{stage}; \
             CREATE TEMP TABLE {stage} ON COMMIT DELETE ROWS AS \
             SELECT NULL::int4 AS {row}, {cols} FROM {table} WITH NO DATA",
            stage = quote(STAGE),
            row = quote(ROW),
        ))
        .await?;
        let empty = client
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"), &[])
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(empty.get(0))
    }
}

const STAGE: &str = "backflow_stage";
/// COPY data goes out in messages of at most this many bytes.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug)]
struct Column {
    name: String,
    formatted: String,
    typname: String,
    /// The declared scale of a numeric column, -1 when unconstrained or not numeric.
    scale: i32,
    /// NOT NULL without a default: an insert must give it a value.
    required: bool,
}

const TEXT: [&str; 5] = ["text", "varchar", "bpchar", "citext", "name"];

/// Whether an Arrow value goes into a column without a silent change of meaning.
fn compatible(dt: &DataType, col: &Column) -> Result<(), String> {
    use DataType::*;
    let t = col.typname.as_str();
    if TEXT.contains(&t) {
        return match dt {
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
                Err("binary values do not go into text columns".into())
            }
            _ => Ok(()),
        };
    }
    let ok = match dt {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => {
            matches!(t, "int2" | "int4" | "int8" | "numeric" | "float8")
        }
        Float16 | Float32 | Float64 => matches!(t, "float4" | "float8" | "numeric"),
        Decimal32(_, s) | Decimal64(_, s) | Decimal128(_, s) | Decimal256(_, s) => {
            if t == "numeric" && col.scale >= 0 && col.scale < i32::from(*s) {
                return Err(format!(
                    "the column keeps {} decimal places and the field has {s}: values would be rounded",
                    col.scale
                ));
            }
            t == "numeric"
        }
        Boolean => t == "bool",
        Utf8 | LargeUtf8 | Utf8View => t != "bytea",
        Date32 | Date64 => matches!(t, "date" | "timestamp"),
        Timestamp(_, None) => t == "timestamp",
        Timestamp(_, Some(_)) => t == "timestamptz",
        Time32(_) | Time64(_) => t == "time",
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => t == "bytea",
        dt if is_nested(dt) => matches!(t, "json" | "jsonb"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(match (dt, t) {
            (Float16 | Float32 | Float64, "int2" | "int4" | "int8") => {
                "fractions would be rounded away".into()
            }
            (Timestamp(_, Some(_)), "timestamp") | (Timestamp(_, None), "timestamptz") => {
                "one of them has a time zone and the other not; the value would shift by the session's time zone".into()
            }
            _ => "the types do not match".into(),
        })
    }
}

/// The PostgreSQL column type for an Arrow type.
fn sql_type(dt: &DataType) -> String {
    use DataType::*;
    match dt {
        Boolean => "boolean".into(),
        Int8 | Int16 | UInt8 => "smallint".into(),
        Int32 | UInt16 => "integer".into(),
        Int64 | UInt32 => "bigint".into(),
        UInt64 => "numeric(20,0)".into(),
        Float16 | Float32 => "real".into(),
        Float64 => "double precision".into(),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            if *s >= 0 && s.unsigned_abs() <= *p {
                format!("numeric({p},{s})")
            } else {
                "numeric".into()
            }
        }
        Date32 | Date64 => "date".into(),
        Timestamp(_, None) => "timestamp".into(),
        Timestamp(_, Some(_)) => "timestamptz".into(),
        Time32(_) | Time64(_) => "time".into(),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => "bytea".into(),
        dt if is_nested(dt) => "jsonb".into(),
        _ => "text".into(),
    }
}

#[async_trait]
impl Destination for PostgresDestination {
    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        let url = self.url()?;
        let client = url.connect().await.map_err(|e| self.db(e))?;
        if let Some(columns) = self.columns(&url, &client, target).await? {
            self.compare(target, &columns)?;
        }
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        let server = self
            .url()
            .map(|u| u.server())
            .unwrap_or_else(|_| format!("${}", self.config.url_env));
        format!("postgres:{server}:{}.{object}", self.config.schema)
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let url = self.url()?;
        let client = url.connect().await.map_err(|e| self.db(e))?;
        let empty = self.prepare(&url, &client, target).await?;
        Ok(Box::new(PostgresWriter {
            direct: empty,
            destination: self.name.clone(),
            table: qualified(&self.config.schema, &target.object),
            target: target.clone(),
            url,
            client,
        }))
    }
}

struct PostgresWriter {
    /// The table was empty when the run began: creates, appends and upserts are COPY'd
    /// straight into it (no staging, no conflict check), until a row collides with one already
    /// there (someone else wrote), after which every batch takes the staging path.
    direct: bool,
    destination: String,
    table: String,
    target: WriteTarget,
    url: PgUrl,
    client: Client,
}

impl PostgresWriter {
    fn fail(&self, reason: String) -> DestinationError {
        DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: self.url.redact(&reason),
        }
    }

    /// The statements applying the staged rows for `op`.
    fn statement(&self, op: WriteOp, columns: &[String]) -> String {
        let t = &self.table;
        let key = quote(&self.target.key);
        let stage = quote(STAGE);
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let non_key: Vec<String> = columns
            .iter()
            .filter(|c| **c != self.target.key)
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
                "UPDATE {t} AS t SET {} FROM {stage} AS s WHERE t.{key} = s.{key}",
                non_key
                    .iter()
                    .map(|c| format!("{c} = s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            WriteOp::Delete => {
                format!("DELETE FROM {t} AS t USING {stage} AS s WHERE t.{key} = s.{key}")
            }
        }
    }

    /// COPY rows `range` straight into the table, in one transaction. `Ok(None)` when a row
    /// collided with one already in the table (nothing was written).
    async fn attempt_direct(
        &mut self,
        copy: &str,
        encoded: &EncodedRows,
        rows: std::ops::Range<usize>,
    ) -> Result<Option<Attempt<BatchOutcome>>, tokio_postgres::Error> {
        // The encoded rows start with their row number, which the table has no column for.
        let mut data = Vec::with_capacity(encoded.rows(rows.clone()).len());
        for row in rows.clone() {
            let line = encoded.rows(row..row + 1);
            let start = line.iter().position(|b| *b == b'\t').map_or(0, |p| p + 1);
            data.extend_from_slice(&line[start..]);
        }
        let tx = self.client.transaction().await?;
        let result: Result<(), tokio_postgres::Error> = async {
            let sink = tx.copy_in::<_, Bytes>(copy).await?;
            futures::pin_mut!(sink);
            for part in data.chunks(COPY_CHUNK) {
                sink.send(Bytes::copy_from_slice(part)).await?;
            }
            sink.finish().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                tx.commit().await?;
                Ok(Some(Attempt::Done(BatchOutcome::default())))
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
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

    /// Apply rows `range` in one transaction.
    async fn attempt(
        &mut self,
        op: WriteOp,
        copy: &str,
        statement: &str,
        missing: &str,
        data: &[u8],
        rows: std::ops::Range<usize>,
    ) -> Result<Attempt<BatchOutcome>, tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        let result: Result<BatchOutcome, tokio_postgres::Error> = async {
            let sink = tx.copy_in::<_, Bytes>(copy).await?;
            futures::pin_mut!(sink);
            for part in data.chunks(COPY_CHUNK) {
                sink.send(Bytes::copy_from_slice(part)).await?;
            }
            sink.finish().await?;
            let mut applied = BatchOutcome::default();
            if op == WriteOp::Update {
                for r in tx.query(missing, &[]).await? {
                    let row: i32 = r.get(0);
                    applied.rejected.push(Rejection {
                        row: row as usize,
                        reason: super::NO_RECORD_FOR_UPDATE.into(),
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

#[async_trait]
impl ObjectWriter for PostgresWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let columns = super::column_names(&batch);
        let encoded = CopyEncoder::new(&batch)
            .and_then(|e| e.encode(batch.num_rows()))
            .map_err(|e| self.fail(e.to_string()))?;
        let copy = format!(
            "COPY {} ({}, {}) FROM STDIN",
            quote(STAGE),
            quote(ROW),
            columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let statement = self.statement(op, &columns);
        let key = quote(&self.target.key);
        let missing = format!(
            "SELECT s.{row} FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE t.{key} = s.{key})",
            row = quote(ROW),
            stage = quote(STAGE),
            t = self.table
        );
        let mut bisect = Bisect::new(batch.num_rows());
        let mut applied = Vec::new();
        let direct_op = matches!(op, WriteOp::Upsert | WriteOp::Create | WriteOp::Append);
        let direct_copy = format!(
            "COPY {} ({}) FROM STDIN",
            self.table,
            columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        while let Some(rows) = bisect.next_range() {
            if self.direct && direct_op {
                match self
                    .attempt_direct(&direct_copy, &encoded, rows.clone())
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
            let data = encoded.rows(rows.clone());
            match self
                .attempt(op, &copy, &statement, &missing, data, rows.clone())
                .await
                .map_err(|e| self.fail(pg::message(&e)))?
            {
                Attempt::Done(a) => applied.push(a),
                Attempt::RowError(message) => bisect.refused(rows, message),
            }
        }
        let refused = bisect.into_refused();
        Ok(super::merge_outcomes(applied, refused, |r| {
            self.url.redact(r)
        }))
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        Ok(FinishOutcome::default())
    }
}
