//! The PostgreSQL table a sync writes: what its columns are, whether each field fits one
//! without a silent change of meaning, and creating or widening it before a run.

use arrow::datatypes::{DataType, Field};
use tokio_postgres::Client;

use crate::behavior::Behavior;
use crate::databases::postgres::{PgUrl, qualified, quote};
use crate::destinations::encode::is_nested;
use crate::destinations::table::{self, Names, TableColumn};
use crate::destinations::{DestinationError, WriteTarget};

use super::PostgresDestination;

impl PostgresDestination {
    /// The table's columns (name, formatted type, type name), or None when there is no table.
    pub(super) async fn columns(
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
    pub(super) fn compare<'a>(
        &self,
        target: &'a WriteTarget,
        columns: &[Column],
    ) -> Result<Vec<&'a Field>, DestinationError> {
        table::compare(&self.name, target, columns, Names::Exact, compatible)
    }

    pub(super) async fn key_is_unique(
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
                   WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique \
                     AND i.indnkeyatts = cardinality($3::text[]) AND i.indnatts = i.indnkeyatts \
                     AND i.indpred IS NULL AND i.indexprs IS NULL \
                     AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) \
                            FROM pg_attribute a \
                           WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey::int2[])) \
                       = (SELECT array_agg(k ORDER BY k) FROM unnest($3::text[]) k))",
                &[&self.config.schema, &target.object, &target.key],
            )
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(row.get(0))
    }

    /// Create or check the table; create the staging table. Returns whether the table is
    /// empty (then rows can be COPY'd straight into it).
    pub(super) async fn prepare(
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
                    cols.push(format!("PRIMARY KEY ({})", target.key_list(quote)));
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
                    exec(format!(
                        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({})",
                        quote(&target.key_index_name(&[&self.config.schema, &target.object])),
                        target.key_list(quote)
                    ))
                    .await
                    .map_err(|e| {
                        DestinationError::incompatible(&self.name,
                            target,
                            format!(
                                "key {} has no unique index and one cannot be created (are there duplicate keys?): {e}",
                                target.key_label()
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
            row = quote(super::ROW),
        ))
        .await?;
        let empty = client
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"), &[])
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(empty.get(0))
    }
}

pub(super) const STAGE: &str = "backflow_stage";
/// COPY data goes out in messages of at most this many bytes.
pub(super) const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(super) struct Column {
    pub name: String,
    pub formatted: String,
    pub typname: String,
    /// The declared scale of a numeric column, -1 when unconstrained or not numeric.
    pub scale: i32,
    /// NOT NULL without a default: an insert must give it a value.
    pub required: bool,
}

pub(super) const TEXT: [&str; 5] = ["text", "varchar", "bpchar", "citext", "name"];

/// Whether an Arrow value goes into a column without a silent change of meaning.
pub(super) fn compatible(dt: &DataType, col: &Column) -> Result<(), String> {
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
pub(super) fn sql_type(dt: &DataType) -> String {
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

impl TableColumn for Column {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_text(&self) -> &str {
        &self.formatted
    }
    fn required(&self) -> bool {
        self.required
    }
}
