//! The MySQL table a sync writes: what its columns are, whether each field fits one
//! without a silent change of meaning, and creating or widening it before a run.

use arrow::datatypes::{DataType, Field};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::behavior::Behavior;
use crate::databases::mysql::{self as my, MyUrl, quote};
use crate::destinations::encode::is_nested;
use crate::destinations::table::{self, Names, TableColumn};
use crate::destinations::{DestinationError, WriteTarget};

use super::{Column, MysqlDestination};

impl MysqlDestination {
    pub(super) async fn columns(
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

    /// Check every field against the existing columns; returns the fields to add.
    pub(super) fn compare<'a>(
        &self,
        target: &'a WriteTarget,
        columns: &[Column],
    ) -> Result<Vec<&'a Field>, DestinationError> {
        table::compare(
            &self.name,
            target,
            columns,
            Names::CaseInsensitive,
            compatible,
        )
    }

    /// The unique indexes of the table: (index name, its columns).
    pub(super) async fn unique_indexes(
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

    pub(super) async fn prepare(
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
                    // A key field's share of the index (see `sql_type`).
                    let key_share = target.is_key(f.name()).then_some(target.key.len());
                    cols.push(format!(
                        "{} {}",
                        quote(f.name()),
                        sql_type(f.data_type(), key_share)
                    ));
                }
                if target.behavior != Behavior::AppendOnly {
                    cols.push(format!("PRIMARY KEY ({})", target.key_list(quote)));
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
                        sql_type(f.data_type(), None)
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
                    let on_key = |cols: &Vec<String>| target.key_is(cols);
                    if !indexes.iter().any(|(_, c)| on_key(c)) {
                        conn.query_drop(format!(
                            "CREATE UNIQUE INDEX {} ON {table} ({})",
                            quote(&target.key_index_name(&[&target.object])),
                            target.key_list(quote)
                        ))
                        .await
                        .map_err(|e| {
                            DestinationError::incompatible(
                                &self.name,
                                target,
                                format!(
                                    "key {} has no unique index and one cannot be created: {}",
                                    target.key_label(),
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

pub(super) const TEXTS: [&str; 6] = [
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
];
pub(super) const INTS: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];
pub(super) const BINARIES: [&str; 6] = [
    "binary",
    "varbinary",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
];

pub(super) fn compatible(dt: &DataType, col: &Column) -> Result<(), String> {
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

/// The column type for `dt`; `key_share` is, for a key field, how many fields the key has:
/// an index holds at most 3072 bytes, shared evenly by a composite key's text and binary parts.
pub(super) fn sql_type(dt: &DataType, key_share: Option<usize>) -> String {
    let is_key = key_share.is_some();
    let share = key_share.unwrap_or(1).max(1);
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
            format!("VARBINARY({})", 3072 / share)
        }
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => "LONGBLOB".into(),
        dt if is_nested(dt) => "JSON".into(),
        // An index holds at most 3072 bytes: 768 four-byte characters.
        _ if is_key => format!("VARCHAR({})", 768 / share),
        _ => "LONGTEXT".into(),
    }
}

impl TableColumn for Column {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_text(&self) -> &str {
        &self.column_type
    }
    fn required(&self) -> bool {
        self.required
    }
}
