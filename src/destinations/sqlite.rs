//! SQLite destination: a database file; each object is a table keyed by the sync's key.
//!
//! The table is created when missing (key as primary key, except for append-only logs); fields
//! the sync sends that the table lacks are added as columns; nothing is ever dropped. Each batch
//! is one transaction; a row SQLite refuses (a constraint, a type check) is a rejection with
//! SQLite's message and the other rows of the batch still land.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, params_from_iter};
use serde::Deserialize;

use super::{
    BatchOutcome, Destination, DestinationError, FinishOutcome, ObjectWriter, Rejection, WriteOp,
    WriteTarget,
};
use crate::behavior::Behavior;

/// `type = "sqlite"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteDestinationConfig {
    /// The database file, relative to the project; created when missing.
    pub path: String,
}

impl SqliteDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        super::path_problems(&self.path)
    }
}

pub(super) fn validate_object(object: &str) -> Vec<String> {
    super::table::name_problems(object, None)
}

/// Quote an SQLite identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[derive(Debug, Clone)]
pub struct SqliteDestination {
    name: String,
    path: PathBuf,
}

impl SqliteDestination {
    pub fn new(name: &str, config: &SqliteDestinationConfig, project_dir: &Path) -> Self {
        let p = Path::new(&config.path);
        SqliteDestination {
            name: name.to_string(),
            path: if p.is_absolute() {
                p.to_path_buf()
            } else {
                project_dir.join(p)
            },
        }
    }

    fn unwritable(&self, reason: impl ToString) -> DestinationError {
        DestinationError::Unwritable {
            destination: self.name.clone(),
            location: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// The table's columns and whether the key is its primary key, or None when missing.
    fn table_info(
        conn: &Connection,
        table: &str,
        target: &WriteTarget,
    ) -> rusqlite::Result<Option<(Vec<String>, bool)>> {
        let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1)")?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            return Ok(None);
        }
        let pks: Vec<String> = rows
            .iter()
            .filter(|(_, pk)| *pk > 0)
            .map(|(n, _)| n.clone())
            .collect();
        let key_is_pk = target.key_is(&pks);
        Ok(Some((
            rows.into_iter().map(|(n, _)| n).collect(),
            key_is_pk,
        )))
    }

    fn prepare(&self, target: &WriteTarget) -> Result<Connection, DestinationError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.unwritable(e))?;
        }
        let conn = Connection::open(&self.path).map_err(|e| self.unwritable(e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| self.unwritable(e))?;
        let table = quote(&target.object);
        let info =
            Self::table_info(&conn, &target.object, target).map_err(|e| self.unwritable(e))?;
        match info {
            None => {
                let mut cols: Vec<String> = target
                    .schema
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", quote(f.name()), sql_type(f.data_type())))
                    .collect();
                if target.behavior != Behavior::AppendOnly {
                    cols.push(format!("PRIMARY KEY ({})", target.key_list(quote)));
                }
                conn.execute_batch(&format!("CREATE TABLE {table} ({})", cols.join(", ")))
                    .map_err(|e| self.unwritable(e))?;
            }
            Some((columns, key_is_pk)) => {
                if let Some(absent) = missing_key(target, &columns) {
                    return Err(DestinationError::incompatible(
                        &self.name,
                        target,
                        format!(
                            "the table has no key column \"{absent}\" (it has: {})",
                            columns.join(", ")
                        ),
                    ));
                }
                for f in target.schema.fields() {
                    // SQLite compares identifiers without regard to ASCII case.
                    if !columns.iter().any(|c| c.eq_ignore_ascii_case(f.name())) {
                        conn.execute_batch(&format!(
                            "ALTER TABLE {table} ADD COLUMN {} {}",
                            quote(f.name()),
                            sql_type(f.data_type())
                        ))
                        .map_err(|e| {
                            DestinationError::incompatible(
                                &self.name,
                                target,
                                format!("cannot add column \"{}\" to the table: {e}", f.name()),
                            )
                        })?;
                    }
                }
                if target.behavior != Behavior::AppendOnly && !key_is_pk {
                    let index = quote(&target.key_index_name(&[&target.object]));
                    conn.execute_batch(&format!(
                        "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} ({})",
                        target.key_list(quote)
                    ))
                    .map_err(|e| {
                        DestinationError::incompatible(&self.name,
                            target,
                            format!(
                                "key {} is not unique in the existing table and a unique index cannot be created ({e})",
                                target.key_label()
                            ),
                        )
                    })?;
                }
            }
        }
        Ok(conn)
    }
}

/// The SQLite column type for an Arrow type.
fn sql_type(dt: &DataType) -> &'static str {
    use DataType::*;
    match dt {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => "INTEGER",
        Float16 | Float32 | Float64 => "REAL",
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => "BLOB",
        _ => "TEXT",
    }
}

#[async_trait]
impl Destination for SqliteDestination {
    fn lookup_source(&self, objects: &[String]) -> Option<Arc<dyn crate::sources::Source>> {
        // (The path is absolute already.)
        Some(Arc::new(crate::sources::DatabaseSource::sqlite(
            crate::sources::SqliteSourceConfig {
                path: self.path.to_string_lossy().into_owned(),
                tables: crate::sources::TableSelection::List(objects.to_vec()),
            },
            &self.path,
        )))
    }

    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        // Without writing: the folder must exist or be creatable, and an existing table must
        // have the key column.
        super::local_writable(&self.path).map_err(|reason| self.unwritable(reason))?;
        if self.path.exists() {
            let conn =
                Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| self.unwritable(e))?;
            if let Some((columns, _)) =
                Self::table_info(&conn, &target.object, target).map_err(|e| self.unwritable(e))?
                && let Some(absent) = missing_key(target, &columns)
            {
                return Err(DestinationError::incompatible(
                    &self.name,
                    target,
                    format!("the table has no key column \"{absent}\""),
                ));
            }
        }
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        format!("sqlite:{}:{object}", self.path.display())
    }

    fn keys(&self, target: &WriteTarget) -> Option<super::KeyStream> {
        let (this, target) = (self.clone(), target.clone());
        // Read on a blocking thread, a chunk at a time, once the stream is first polled.
        let read = move |tx: super::KeySender| -> Result<(), DestinationError> {
            if !this.path.exists() {
                return Ok(());
            }
            let conn =
                Connection::open_with_flags(&this.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| this.unwritable(e))?;
            if Self::table_info(&conn, &target.object, &target)
                .map_err(|e| this.unwritable(e))?
                .is_none()
            {
                return Ok(());
            }
            let complete = target
                .key
                .iter()
                .map(|k| format!("{} IS NOT NULL", quote(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {} FROM {} WHERE {complete}",
                    target.key_list(|k| format!("CAST({} AS TEXT)", quote(k))),
                    quote(&target.object)
                ))
                .map_err(|e| this.unwritable(e))?;
            let parts = target.key.len();
            let mut rows = stmt.query([]).map_err(|e| this.unwritable(e))?;
            let mut chunk = super::KeyChunkBuilder::new(parts);
            while let Some(row) = rows.next().map_err(|e| this.unwritable(e))? {
                let values = (0..parts)
                    .map(|i| row.get::<_, String>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| this.unwritable(e))?;
                chunk.push(values);
                // A receiver that went away wants no more.
                if chunk.is_full() && tx.blocking_send(Ok(chunk.take())).is_err() {
                    return Ok(());
                }
            }
            if chunk.len() > 0 {
                let _ = tx.blocking_send(Ok(chunk.take()));
            }
            Ok(())
        };
        let this = self.clone();
        Some(super::key_stream(|tx| async move {
            tokio::task::spawn_blocking(move || read(tx))
                .await
                .map_err(|e| this.unwritable(format!("the key reader stopped: {e}")))?
        }))
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let conn = self.prepare(target)?;
        Ok(Box::new(SqliteWriter {
            destination: self.name.clone(),
            target: target.clone(),
            conn: Arc::new(Mutex::new(conn)),
        }))
    }
}

struct SqliteWriter {
    destination: String,
    target: WriteTarget,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteWriter {
    fn statement(&self, op: WriteOp, columns: &[String]) -> String {
        let table = quote(&self.target.object);
        let key = self.target.key_list(quote);
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let params = (1..=columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let non_key: Vec<&String> = columns.iter().filter(|c| !self.target.is_key(c)).collect();
        // `k = ?n` for each key field, n its place among the columns.
        let same_key = self
            .target
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let at = columns.iter().position(|c| c == k).unwrap_or(i) + 1;
                format!("{} = ?{at}", quote(k))
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        match op {
            WriteOp::Append => format!("INSERT INTO {table} ({cols}) VALUES ({params})"),
            WriteOp::Create => format!(
                "INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({key}) DO NOTHING"
            ),
            WriteOp::Upsert => {
                if non_key.is_empty() {
                    format!(
                        "INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({key}) DO NOTHING"
                    )
                } else {
                    let set = non_key
                        .iter()
                        .map(|c| format!("{0} = excluded.{0}", quote(c)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({key}) DO UPDATE SET {set}"
                    )
                }
            }
            WriteOp::Update => {
                let set = if non_key.is_empty() {
                    let first = quote(&self.target.key[0]);
                    format!("{first} = {first}")
                } else {
                    columns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| !self.target.is_key(c))
                        .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!("UPDATE {table} SET {set} WHERE {same_key}")
            }
            WriteOp::Delete => format!("DELETE FROM {table} WHERE {same_key}"),
        }
    }
}

/// The first key field `columns` lacks (compared as SQLite does, without regard to ASCII
/// case).
fn missing_key<'a>(target: &'a WriteTarget, columns: &[String]) -> Option<&'a str> {
    target
        .key
        .iter()
        .find(|k| !columns.iter().any(|c| c.eq_ignore_ascii_case(k)))
        .map(String::as_str)
}

fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => format!("\"{t}\""),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// Whether an SQLite error is about the row (reject it) rather than the database (fail).
fn is_row_error(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig
        ),
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        _ => false,
    }
}

#[async_trait]
impl ObjectWriter for SqliteWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let columns = super::column_names(&batch);
        let sql = self.statement(op, &columns);
        let conn = self.conn.clone();
        let key = self.target.key.clone();
        let fail = {
            let destination = self.destination.clone();
            let object = self.target.object.clone();
            move |reason: String| DestinationError::Write {
                destination: destination.clone(),
                object: object.clone(),
                reason,
            }
        };
        let fail2 = fail.clone();
        tokio::task::spawn_blocking(move || -> Result<BatchOutcome, DestinationError> {
            let mut conn = conn
                .lock()
                .map_err(|_| fail("connection lock poisoned".into()))?;
            let tx = conn.transaction().map_err(|e| fail(e.to_string()))?;
            let mut outcome = BatchOutcome::default();
            {
                let mut stmt = tx.prepare_cached(&sql).map_err(|e| fail(e.to_string()))?;
                let cells = batch
                    .columns()
                    .iter()
                    .map(Cells::new)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(e.to_string()))?;
                let key_cols: Vec<usize> = key
                    .iter()
                    .filter_map(|k| columns.iter().position(|c| c == k))
                    .collect();
                for row in 0..batch.num_rows() {
                    let values = match cells
                        .iter()
                        .map(|c| c.value(row))
                        .collect::<Result<Vec<Value>, String>>()
                    {
                        Ok(values) => values,
                        // A value SQLite cannot hold as it is: the row, not a changed value.
                        Err(reason) => {
                            outcome.rejected.push(Rejection { row, reason });
                            continue;
                        }
                    };
                    match stmt.execute(params_from_iter(values.iter())) {
                        Ok(0) if op == WriteOp::Update => outcome.rejected.push(Rejection {
                            row,
                            reason: super::NO_RECORD_FOR_UPDATE.into(),
                        }),
                        Ok(0) if op == WriteOp::Create => outcome.skipped += 1,
                        Ok(_) => {}
                        Err(e) if is_row_error(&e) && !tx.is_autocommit() => {
                            outcome.rejected.push(Rejection {
                                row,
                                reason: e.to_string(),
                            })
                        }
                        Err(e) => {
                            // Not about this row, or it rolled the whole transaction back (a
                            // RAISE(ROLLBACK) trigger): fail the batch.
                            let at = if key_cols.is_empty() {
                                String::new()
                            } else {
                                let shown: Vec<String> =
                                    key_cols.iter().map(|k| show_value(&values[*k])).collect();
                                format!(" (at key {})", shown.join(", "))
                            };
                            return Err(fail(format!("{e}{at}")));
                        }
                    }
                }
            }

            tx.commit().map_err(|e| fail(e.to_string()))?;
            Ok(outcome)
        })
        .await
        .map_err(|e| fail2(format!("writer task failed: {e}")))?
    }

    async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        Ok(FinishOutcome::default())
    }
}

/// Converts one Arrow column to SQLite values.
enum Cells {
    Int(ArrayRef),
    UInt(ArrayRef),
    Real(ArrayRef),
    Bool(ArrayRef),
    Text(ArrayRef),
    Blob(ArrayRef),
    Formatted(ArrayRef),
}

impl Cells {
    fn new(array: &ArrayRef) -> Result<Cells, arrow::error::ArrowError> {
        use DataType::*;
        let cast = arrow::compute::cast;
        Ok(match array.data_type() {
            Int8 | Int16 | Int32 | Int64 => Cells::Int(cast(array, &Int64)?),
            UInt8 | UInt16 | UInt32 | UInt64 => Cells::UInt(cast(array, &UInt64)?),
            Float16 | Float32 | Float64 => Cells::Real(cast(array, &Float64)?),
            Boolean => Cells::Bool(array.clone()),
            Utf8 | LargeUtf8 | Utf8View => Cells::Text(cast(array, &LargeUtf8)?),
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
                Cells::Blob(cast(array, &LargeBinary)?)
            }
            _ => Cells::Formatted(array.clone()),
        })
    }

    /// The value at `row` as SQLite holds it, or why it cannot hold it exactly.
    fn value(&self, row: usize) -> Result<Value, String> {
        let array = match self {
            Cells::Int(a)
            | Cells::UInt(a)
            | Cells::Real(a)
            | Cells::Bool(a)
            | Cells::Text(a)
            | Cells::Blob(a)
            | Cells::Formatted(a) => a,
        };
        if array.is_null(row) {
            return Ok(Value::Null);
        }
        Ok(match self {
            Cells::Int(a) => Value::Integer(a.as_primitive::<Int64Type>().value(row)),
            Cells::UInt(a) => {
                let v = a.as_primitive::<UInt64Type>().value(row);
                // (As text in an INTEGER column SQLite would store it as a rounded REAL.)
                Value::Integer(i64::try_from(v).map_err(|_| {
                    format!("{v} is past the largest integer SQLite holds (2^63 - 1)")
                })?)
            }
            Cells::Real(a) => Value::Real(a.as_primitive::<Float64Type>().value(row)),
            Cells::Bool(a) => Value::Integer(i64::from(a.as_boolean().value(row))),
            Cells::Text(a) => Value::Text(a.as_string::<i64>().value(row).to_string()),
            Cells::Blob(a) => Value::Blob(a.as_binary::<i64>().value(row).to_vec()),
            Cells::Formatted(a) => {
                let options = FormatOptions::default();
                let text = ArrayFormatter::try_new(a.as_ref(), &options)
                    .and_then(|f| f.value(row).try_to_string())
                    .map_err(|e| format!("the value cannot be written as text: {e}"))?;
                Value::Text(text)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Date32Array, UInt64Array};
    use rusqlite::types::Value;

    use super::Cells;

    /// A value SQLite cannot hold as it is rejects its row, never a changed value.
    #[test]
    fn values_sqlite_cannot_hold_are_refused_not_changed() {
        let big: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX, 7]));
        let cells = Cells::new(&big).unwrap();
        assert!(cells.value(0).unwrap_err().contains("18446744073709551615"));
        assert_eq!(cells.value(1).unwrap(), Value::Integer(7));

        // A date past chrono's years (DuckDB and Parquet can hold them) was written as the
        // text "ERROR: Cast error: ...".
        let far: ArrayRef = Arc::new(Date32Array::from(vec![i32::MAX - 1, 0]));
        let cells = Cells::new(&far).unwrap();
        assert!(cells.value(0).unwrap_err().contains("cannot be written"));
        assert_eq!(cells.value(1).unwrap(), Value::Text("1970-01-01".into()));
    }
}
