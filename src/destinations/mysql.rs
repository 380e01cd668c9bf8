//! MySQL / MariaDB destination: each object is a table of the URL's database, keyed by the
//! sync's key.
//!
//! A missing table is created (InnoDB, utf8mb4, types mapped from the Arrow schema, the key as
//! primary key but for append-only logs). An existing table must hold each field in a column of
//! a compatible type; fields it lacks are added; a unique index is created on the key when there
//! is none. Sessions run in strict SQL mode and UTC, so a value the column cannot hold is
//! refused rather than truncated.
//!
//! Rows go in multi-row statements with bound values (at most 1000 rows or 60,000 values per
//! statement), one transaction per batch: upserts as `INSERT … ON DUPLICATE KEY UPDATE`,
//! deletes as `DELETE … WHERE key IN (…)`. Refused rows are isolated by bisecting the batch.
//!
//! `ON DUPLICATE KEY UPDATE` fires on a conflict with *any* unique index, so a table with a
//! second unique index (say on e-mail) would see a new record that collides there update the
//! other record; [`MysqlDestination::open`] refuses such tables for upserts and says why.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int64Type, TimestampMicrosecondType, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use chrono::{Datelike, Timelike};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts, Value};
use serde::Deserialize;

use super::encode::{is_nested, json_values, timestamps_micros};
use super::{
    BatchOutcome, Destination, DestinationError, FinishOutcome, ObjectWriter, Rejection, WriteOp,
    WriteTarget,
};
use crate::config::Behavior;
use crate::databases::mysql::{self as my, MyUrl, quote};
use crate::databases::{self, Attempt, Bisect, DatabaseError};

/// `type = "mysql"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlDestinationConfig {
    /// The environment variable holding the connection URL (its database is written).
    pub url_env: String,
}

impl MysqlDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        databases::validate_url_env(&self.url_env)
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
    if object.chars().count() > 64 {
        p.push("MySQL table names are at most 64 characters".to_string());
    }
    if object.ends_with(' ') {
        p.push("MySQL table names may not end with a space".to_string());
    }
    p
}

#[derive(Debug)]
pub struct MysqlDestination {
    name: String,
    config: MysqlDestinationConfig,
}

#[derive(Debug)]
struct Column {
    name: String,
    data_type: String,
    column_type: String,
    scale: Option<u64>,
    /// NOT NULL without a default: an insert must give it a value.
    required: bool,
}

impl MysqlDestination {
    pub fn new(name: &str, config: &MysqlDestinationConfig) -> Self {
        MysqlDestination {
            name: name.to_string(),
            config: config.clone(),
        }
    }

    fn url(&self) -> Result<MyUrl, DestinationError> {
        MyUrl::from_env(&self.config.url_env).map_err(|e| self.db(e))
    }

    fn db(&self, source: DatabaseError) -> DestinationError {
        DestinationError::Database {
            destination: self.name.clone(),
            source,
        }
    }

    async fn columns(
        &self,
        url: &MyUrl,
        conn: &mut Conn,
        target: &WriteTarget,
    ) -> Result<Option<Vec<Column>>, DestinationError> {
        let kind: Option<String> = conn
            .exec_first(
                "SELECT CAST(table_type AS CHAR) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = ?",
                (target.object.as_str(),),
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        match kind.as_deref() {
            None => return Ok(None),
            Some("BASE TABLE") => {}
            Some(k) => {
                return Err(DestinationError::incompatible(
                    &self.name,
                    target,
                    format!("\"{}\" is a {k}, not a table", target.object),
                ));
            }
        }
        let rows: Vec<(String, String, String, Option<u64>, i64)> = conn
            .exec(
                "SELECT CAST(column_name AS CHAR), CAST(data_type AS CHAR), CAST(column_type AS CHAR), numeric_scale, \
                        (is_nullable = 'NO' AND column_default IS NULL AND extra NOT LIKE '%auto_increment%' \
                         AND extra NOT LIKE '%GENERATED%')  \
                 FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? \
                 ORDER BY ordinal_position",
                (target.object.as_str(),),
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(Some(
            rows.into_iter()
                .map(|(name, data_type, column_type, scale, required)| Column {
                    name,
                    data_type: data_type.to_ascii_lowercase(),
                    column_type,
                    scale,
                    required: required != 0,
                })
                .collect(),
        ))
    }

    fn compare<'a>(
        &self,
        target: &'a WriteTarget,
        columns: &[Column],
    ) -> Result<Vec<&'a Field>, DestinationError> {
        // MySQL column names are case-insensitive.
        let find = |n: &str| columns.iter().find(|c| c.name.eq_ignore_ascii_case(n));
        if find(&target.key).is_none() {
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
        let mut missing = Vec::new();
        let mut problems = Vec::new();
        for f in target.schema.fields() {
            match find(f.name()) {
                None => missing.push(f.as_ref()),
                Some(c) => {
                    if let Err(why) = compatible(f.data_type(), c) {
                        problems.push(format!(
                            "field \"{}\" ({}) cannot go into column \"{}\" of type {}: {why}",
                            f.name(),
                            f.data_type(),
                            c.name,
                            c.column_type
                        ));
                    }
                }
            }
        }
        if target.behavior.creates() {
            for c in columns.iter().filter(|c| c.required) {
                if !target
                    .schema
                    .fields()
                    .iter()
                    .any(|f| f.name().eq_ignore_ascii_case(&c.name))
                {
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

    /// The unique indexes of the table: (index name, its columns).
    async fn unique_indexes(
        &self,
        url: &MyUrl,
        conn: &mut Conn,
        target: &WriteTarget,
    ) -> Result<Vec<(String, Vec<String>)>, DestinationError> {
        let rows: Vec<(String, String)> = conn
            .exec(
                "SELECT CAST(index_name AS CHAR), CAST(column_name AS CHAR) FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND table_name = ? AND non_unique = 0 \
                 ORDER BY index_name, seq_in_index",
                (target.object.as_str(),),
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (index, column) in rows {
            match out.last_mut() {
                Some((i, cols)) if *i == index => cols.push(column),
                _ => out.push((index, vec![column])),
            }
        }
        Ok(out)
    }

    async fn prepare(
        &self,
        url: &MyUrl,
        conn: &mut Conn,
        target: &WriteTarget,
    ) -> Result<(), DestinationError> {
        let table = quote(&target.object);
        match self.columns(url, conn, target).await? {
            None => {
                let mut cols = Vec::new();
                for f in target.schema.fields() {
                    let is_key = *f.name() == target.key;
                    cols.push(format!(
                        "{} {}",
                        quote(f.name()),
                        sql_type(f.data_type(), is_key)
                    ));
                }
                if target.behavior != Behavior::AppendOnly {
                    cols.push(format!("PRIMARY KEY ({})", quote(&target.key)));
                }
                conn.query_drop(format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                    cols.join(", ")
                ))
                .await
                .map_err(|e| {
                    DestinationError::incompatible(
                        &self.name,
                        target,
                        format!("cannot create the table: {}", my::message(&e)),
                    )
                })?;
            }
            Some(columns) => {
                for f in self.compare(target, &columns)? {
                    conn.query_drop(format!(
                        "ALTER TABLE {table} ADD COLUMN {} {}",
                        quote(f.name()),
                        sql_type(f.data_type(), false)
                    ))
                    .await
                    .map_err(|e| {
                        DestinationError::incompatible(
                            &self.name,
                            target,
                            format!("cannot add column \"{}\": {}", f.name(), my::message(&e)),
                        )
                    })?;
                }
                if target.behavior != Behavior::AppendOnly {
                    let indexes = self.unique_indexes(url, conn, target).await?;
                    let on_key = |cols: &Vec<String>| {
                        cols.len() == 1 && cols[0].eq_ignore_ascii_case(&target.key)
                    };
                    if !indexes.iter().any(|(_, c)| on_key(c)) {
                        let id = xxhash_rust::xxh3::xxh3_64(
                            format!("{}\0{}", target.object, target.key).as_bytes(),
                        );
                        conn.query_drop(format!(
                            "CREATE UNIQUE INDEX {} ON {table} ({})",
                            quote(&format!("backflow_key_{id:016x}")),
                            quote(&target.key)
                        ))
                        .await
                        .map_err(|e| {
                            DestinationError::incompatible(&self.name,
                                target,
                                format!(
                                    "key column \"{}\" has no unique index and one cannot be created: {}",
                                    target.key,
                                    my::message(&e)
                                ),
                            )
                        })?;
                    }
                    let others: Vec<&str> = indexes
                        .iter()
                        .filter(|(_, c)| !on_key(c))
                        .map(|(i, _)| i.as_str())
                        .collect();
                    if !others.is_empty()
                        && matches!(
                            target.behavior,
                            Behavior::Upsert | Behavior::Mirror | Behavior::UpdateOnly
                        )
                    {
                        return Err(DestinationError::incompatible(
                            &self.name,
                            target,
                            format!(
                                "the table has unique indexes besides the key ({}); MySQL's ON DUPLICATE KEY UPDATE would \
                                 update whichever record a new row collides with, not only the record with the same key. \
                                 Drop those indexes, or write with behavior create-only or append-only",
                                others.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

const TEXTS: [&str; 6] = [
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
];
const INTS: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];
const BINARIES: [&str; 6] = [
    "binary",
    "varbinary",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
];

fn compatible(dt: &DataType, col: &Column) -> Result<(), String> {
    use DataType::*;
    let t = col.data_type.as_str();
    let text = TEXTS.contains(&t);
    let ok = match dt {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => {
            INTS.contains(&t) || t == "decimal" || t == "double" || text
        }
        Float16 | Float32 | Float64 => matches!(t, "float" | "double") || text,
        Decimal32(_, s) | Decimal64(_, s) | Decimal128(_, s) | Decimal256(_, s) => {
            if t == "decimal" && col.scale.is_some_and(|cs| (cs as i64) < i64::from(*s)) {
                return Err(format!(
                    "the column keeps {} decimal places and the field has {s}: values would be rounded",
                    col.scale.unwrap_or(0)
                ));
            }
            t == "decimal" || text
        }
        Boolean => INTS.contains(&t) || t == "bit" || text,
        Utf8 | LargeUtf8 | Utf8View => {
            text || matches!(
                t,
                "enum" | "set" | "json" | "date" | "datetime" | "timestamp" | "time" | "year"
            )
        }
        Date32 | Date64 => matches!(t, "date" | "datetime") || text,
        Timestamp(_, _) => matches!(t, "datetime" | "timestamp") || text,
        Time32(_) | Time64(_) => t == "time" || text,
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => BINARIES.contains(&t),
        dt if is_nested(dt) => t == "json" || text,
        _ => text,
    };
    if ok {
        Ok(())
    } else if matches!(dt, Float16 | Float32 | Float64) && (INTS.contains(&t) || t == "decimal") {
        Err("the values would be rounded".into())
    } else {
        Err("the types do not match".into())
    }
}

fn sql_type(dt: &DataType, is_key: bool) -> String {
    use DataType::*;
    match dt {
        Boolean => "BOOLEAN".into(),
        Int8 => "TINYINT".into(),
        Int16 => "SMALLINT".into(),
        Int32 => "INT".into(),
        Int64 => "BIGINT".into(),
        UInt8 => "TINYINT UNSIGNED".into(),
        UInt16 => "SMALLINT UNSIGNED".into(),
        UInt32 => "INT UNSIGNED".into(),
        UInt64 => "BIGINT UNSIGNED".into(),
        Float16 | Float32 => "FLOAT".into(),
        Float64 => "DOUBLE".into(),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s)
            if *p <= 65 && *s >= 0 && (*s as u8) <= 30 && (*s as u8) <= *p =>
        {
            format!("DECIMAL({p},{s})")
        }
        Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => "VARCHAR(80)".into(),
        Date32 | Date64 => "DATE".into(),
        Timestamp(_, _) => "DATETIME(6)".into(),
        Time32(_) | Time64(_) => "TIME(6)".into(),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) if is_key => {
            "VARBINARY(3072)".into()
        }
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => "LONGBLOB".into(),
        dt if is_nested(dt) => "JSON".into(),
        // An index holds at most 3072 bytes: 768 four-byte characters.
        _ if is_key => "VARCHAR(768)".into(),
        _ => "LONGTEXT".into(),
    }
}

#[async_trait]
impl Destination for MysqlDestination {
    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        let url = self.url()?;
        let (mut conn, _) = url.connect().await.map_err(|e| self.db(e))?;
        if let Some(columns) = self.columns(&url, &mut conn, target).await? {
            self.compare(target, &columns)?;
        }
        let _ = conn.disconnect().await;
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        let server = self
            .url()
            .map(|u| u.server())
            .unwrap_or_else(|_| format!("${}", self.config.url_env));
        format!("mysql:{server}:{object}")
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let url = self.url()?;
        let (mut conn, _) = url.connect().await.map_err(|e| self.db(e))?;
        self.prepare(&url, &mut conn, target).await?;
        let max_packet: Option<u64> = conn
            .query_first("SELECT @@max_allowed_packet")
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        let max_packet = max_packet.unwrap_or(4 << 20) as usize;
        Ok(Box::new(MysqlWriter {
            max_packet,
            destination: self.name.clone(),
            target: target.clone(),
            url,
            conn: Some(conn),
        }))
    }
}

struct MysqlWriter {
    /// The server's `max_allowed_packet`: a statement must fit in it.
    max_packet: usize,
    destination: String,
    target: WriteTarget,
    url: MyUrl,
    conn: Option<Conn>,
}

/// About how many bytes a value takes in a statement.
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => b.len() + 4,
        _ => 12,
    }
}

/// One column's values as statement parameters.
enum Values {
    Int(ArrayRef),
    UInt(ArrayRef),
    Double(ArrayRef),
    Bool(ArrayRef),
    Bytes(ArrayRef),
    Str(ArrayRef),
    Date(ArrayRef),
    Timestamp(ArrayRef),
    Json(Vec<Option<String>>),
    Formatted(ArrayRef),
}

impl Values {
    fn new(array: &ArrayRef) -> Result<Values, arrow::error::ArrowError> {
        use DataType::*;
        let cast = arrow::compute::cast;
        Ok(match array.data_type() {
            Int8 | Int16 | Int32 | Int64 => Values::Int(cast(array, &Int64)?),
            UInt8 | UInt16 | UInt32 | UInt64 => Values::UInt(cast(array, &UInt64)?),
            Float16 | Float32 | Float64 => Values::Double(cast(array, &Float64)?),
            Boolean => Values::Bool(array.clone()),
            Utf8 | LargeUtf8 | Utf8View => Values::Str(cast(array, &LargeUtf8)?),
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
                Values::Bytes(cast(array, &LargeBinary)?)
            }
            Date32 | Date64 => Values::Date(cast(array, &Date32)?),
            Timestamp(_, _) => Values::Timestamp(timestamps_micros(array)?),
            dt if is_nested(dt) => Values::Json(json_values(array)?),
            _ => Values::Formatted(array.clone()),
        })
    }

    fn value(&self, row: usize, fmt: Option<&ArrayFormatter<'_>>) -> Value {
        let array = match self {
            Values::Json(v) => {
                return match &v[row] {
                    Some(s) => Value::Bytes(s.clone().into_bytes()),
                    None => Value::NULL,
                };
            }
            Values::Int(a)
            | Values::UInt(a)
            | Values::Double(a)
            | Values::Bool(a)
            | Values::Bytes(a)
            | Values::Str(a)
            | Values::Date(a)
            | Values::Timestamp(a)
            | Values::Formatted(a) => a,
        };
        if array.is_null(row) {
            return Value::NULL;
        }
        match self {
            Values::Int(a) => Value::Int(a.as_primitive::<Int64Type>().value(row)),
            Values::UInt(a) => Value::UInt(a.as_primitive::<UInt64Type>().value(row)),
            Values::Double(a) => Value::Double(a.as_primitive::<Float64Type>().value(row)),
            Values::Bool(a) => Value::Int(i64::from(a.as_boolean().value(row))),
            Values::Str(a) => Value::Bytes(a.as_string::<i64>().value(row).as_bytes().to_vec()),
            Values::Bytes(a) => Value::Bytes(a.as_binary::<i64>().value(row).to_vec()),
            Values::Date(a) => {
                let days = a.as_primitive::<Date32Type>().value(row);
                match Date32Type::to_naive_date_opt(days) {
                    Some(d) => {
                        Value::Date(d.year() as u16, d.month() as u8, d.day() as u8, 0, 0, 0, 0)
                    }
                    None => Value::NULL,
                }
            }
            Values::Timestamp(a) => {
                let micros = a.as_primitive::<TimestampMicrosecondType>().value(row);
                match chrono::DateTime::from_timestamp_micros(micros) {
                    Some(t) => {
                        let t = t.naive_utc();
                        Value::Date(
                            t.year() as u16,
                            t.month() as u8,
                            t.day() as u8,
                            t.hour() as u8,
                            t.minute() as u8,
                            t.second() as u8,
                            t.nanosecond() / 1000,
                        )
                    }
                    None => Value::NULL,
                }
            }
            Values::Formatted(_) => match fmt {
                Some(f) => Value::Bytes(f.value(row).to_string().into_bytes()),
                None => Value::NULL,
            },
            Values::Json(_) => Value::NULL,
        }
    }
}

impl MysqlWriter {
    fn fail(&self, reason: String) -> DestinationError {
        DestinationError::Write {
            destination: self.destination.clone(),
            object: self.target.object.clone(),
            reason: self.url.redact(&reason),
        }
    }

    /// Rows per statement for `columns` columns.
    fn chunk(columns: usize) -> usize {
        (60_000 / columns.max(1)).clamp(1, 1000)
    }

    /// Split `rows` into statements of at most `per` rows whose values take at most `budget`
    /// bytes (each chunk is a range of positions in `rows`).
    fn chunks(
        rows: &[usize],
        per: usize,
        budget: usize,
        size: impl Fn(usize) -> usize,
    ) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, row) in rows.iter().enumerate() {
            let b = size(*row);
            if i > start && (i - start >= per || bytes + b > budget) {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += b;
        }
        if start < rows.len() {
            out.push(start..rows.len());
        }
        out
    }

    async fn attempt(
        &mut self,
        op: WriteOp,
        columns: &[String],
        params: &[Vec<Value>],
        rows: std::ops::Range<usize>,
    ) -> Result<Attempt<BatchOutcome>, mysql_async::Error> {
        let max_packet = self.max_packet;
        let Some(conn) = self.conn.as_mut() else {
            return Err(mysql_async::Error::Driver(
                mysql_async::DriverError::ConnectionClosed,
            ));
        };
        let table = quote(&self.target.object);
        let key = &self.target.key;
        let key_pos = columns.iter().position(|c| c == key).unwrap_or(0);
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let tuple = format!("({})", vec!["?"; columns.len()].join(", "));
        let non_key: Vec<String> = columns
            .iter()
            .filter(|c| *c != key)
            .map(|c| quote(c))
            .collect();
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        let result: Result<BatchOutcome, mysql_async::Error> = async {
            let mut applied = BatchOutcome::default();
            let mut todo: Vec<usize> = rows.clone().collect();
            if op == WriteOp::Update {
                // Which keys have no record: compared by MySQL itself (collations included).
                let mut missing = std::collections::HashSet::new();
                for chunk in todo.chunks(1000) {
                    let probe = chunk
                        .iter()
                        .map(|r| format!("SELECT {r} AS r, ? AS k"))
                        .collect::<Vec<_>>()
                        .join(" UNION ALL ");
                    let sql = format!(
                        "SELECT s.r FROM ({probe}) AS s WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE t.{k} = s.k)",
                        k = quote(key)
                    );
                    let keys: Vec<Value> = chunk.iter().map(|r| params[*r][key_pos].clone()).collect();
                    let found: Vec<u64> = tx.exec(sql, keys).await?;
                    missing.extend(found.into_iter().map(|r| r as usize));
                }
                for row in &missing {
                    applied.rejected.push(Rejection {
                        row: *row,
                        reason: super::NO_RECORD_FOR_UPDATE.into(),
                    });
                }
                todo.retain(|r| !missing.contains(r));
            }
            let per = match op {
                WriteOp::Delete => 1000,
                _ => Self::chunk(columns.len()),
            };
            let row_bytes = |r: usize| -> usize {
                let values: &[Value] = match op {
                    WriteOp::Delete => std::slice::from_ref(&params[r][key_pos]),
                    _ => &params[r],
                };
                values.iter().map(value_bytes).sum::<usize>() + 8
            };
            // A row that cannot fit in one packet is refused without being sent (the server
            // would drop the connection).
            let limit = max_packet.saturating_sub(64 << 10);
            todo.retain(|r| {
                let b = row_bytes(*r);
                if b > limit {
                    applied.rejected.push(Rejection {
                        row: *r,
                        reason: format!(
                            "the row is {b} bytes, more than the server's max_allowed_packet ({max_packet} bytes) allows"
                        ),
                    });
                    false
                } else {
                    true
                }
            });
            for range in Self::chunks(&todo, per, max_packet / 2, row_bytes) {
                let chunk = &todo[range];
                let sql = match op {
                    WriteOp::Delete => format!(
                        "DELETE FROM {table} WHERE {} IN ({})",
                        quote(key),
                        vec!["?"; chunk.len()].join(", ")
                    ),
                    _ => {
                        let values = vec![tuple.as_str(); chunk.len()].join(", ");
                        let insert = format!("INSERT INTO {table} ({cols}) VALUES {values}");
                        match op {
                            WriteOp::Append => insert,
                            WriteOp::Create => {
                                format!("{insert} ON DUPLICATE KEY UPDATE {0} = {0}", quote(key))
                            }
                            _ if non_key.is_empty() => {
                                format!("{insert} ON DUPLICATE KEY UPDATE {0} = {0}", quote(key))
                            }
                            _ => format!(
                                "{insert} ON DUPLICATE KEY UPDATE {}",
                                non_key
                                    .iter()
                                    .map(|c| format!("{c} = VALUES({c})"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }
                    }
                };
                let values: Vec<Value> = match op {
                    WriteOp::Delete => chunk.iter().map(|r| params[*r][key_pos].clone()).collect(),
                    _ => chunk.iter().flat_map(|r| params[*r].iter().cloned()).collect(),
                };
                tx.exec_drop(sql, values).await?;
                if op == WriteOp::Create {
                    // 1 per row inserted, 0 per row left alone.
                    applied.skipped += chunk.len().saturating_sub(tx.affected_rows() as usize);
                }
            }
            Ok(applied)
        }
        .await;
        match result {
            Ok(applied) => {
                tx.commit().await?;
                Ok(Attempt::Done(applied))
            }
            Err(e) if my::is_row_error(&e) => {
                tx.rollback().await?;
                Ok(Attempt::RowError(my::message(&e)))
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl ObjectWriter for MysqlWriter {
    async fn write(
        &mut self,
        op: WriteOp,
        batch: RecordBatch,
    ) -> Result<BatchOutcome, DestinationError> {
        let columns = super::column_names(&batch);
        let values = batch
            .columns()
            .iter()
            .map(Values::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(e.to_string()))?;
        let params: Vec<Vec<Value>> = {
            let options = FormatOptions::default();
            let formatters = values
                .iter()
                .map(|v| match v {
                    Values::Formatted(a) => ArrayFormatter::try_new(a.as_ref(), &options).ok(),
                    _ => None,
                })
                .collect::<Vec<_>>();
            (0..batch.num_rows())
                .map(|row| {
                    values
                        .iter()
                        .zip(&formatters)
                        .map(|(v, f)| v.value(row, f.as_ref()))
                        .collect()
                })
                .collect()
        };
        let mut bisect = Bisect::new(batch.num_rows());
        let mut applied = Vec::new();
        while let Some(rows) = bisect.next_range() {
            match self
                .attempt(op, &columns, &params, rows.clone())
                .await
                .map_err(|e| self.fail(my::message(&e)))?
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

    async fn finish(mut self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(FinishOutcome::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_fit_rows_and_bytes() {
        let rows: Vec<usize> = (0..10).collect();
        // By rows.
        assert_eq!(
            MysqlWriter::chunks(&rows, 4, 1000, |_| 1),
            vec![0..4, 4..8, 8..10]
        );
        // By bytes: rows of 30 bytes, 100 per statement.
        assert_eq!(
            MysqlWriter::chunks(&rows, 1000, 100, |_| 30),
            vec![0..3, 3..6, 6..9, 9..10]
        );
        // A row bigger than the budget still goes alone.
        assert_eq!(
            MysqlWriter::chunks(&rows[..3], 1000, 100, |r| if r == 1 { 500 } else { 10 }),
            vec![0..1, 1..2, 2..3]
        );
        assert!(MysqlWriter::chunks(&[], 10, 10, |_| 1).is_empty());
    }
}
