//! PostgreSQL tables as DataFusion tables, read with `COPY (SELECT …) TO STDOUT (FORMAT binary)`.
//!
//! backflow reads PostgreSQL itself rather than through a generic SQL provider so that every
//! value arrives exactly ([`types`] says which Arrow type each column becomes): timestamps in
//! microseconds cover PostgreSQL's whole range, `numeric(p,s)` keeps all its digits, and what
//! has no exact Arrow type arrives as PostgreSQL's own text for it. A value that still cannot be
//! represented (a date or timestamp of `infinity`, `NaN` in a `numeric(p,s)`) stops the read with
//! an error naming the table, the column and the row, never a silently different value.
//!
//! The projection, the filters PostgreSQL evaluates exactly as DataFusion would (comparisons of
//! numbers, dates and timestamps: a watermark filter) and the limit reach the server as SQL
//! (`plan --explain` shows it); every other filter runs in DataFusion on the rows read.

mod copy;
mod scan;
mod types;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use tokio_postgres::Client;

use crate::databases::postgres::{PgUrl, qualified, quote};
use types::Kind;

/// How long a read waits for the server's next data unless the source says otherwise.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors reading a PostgreSQL table.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("source \"{source_name}\", table {table} ({server}): {reason}")]
    Server {
        source_name: String,
        table: String,
        server: String,
        reason: String,
    },
    #[error(
        "source \"{source_name}\", table {table} does not exist on {server} (or the user may not see it)"
    )]
    NoTable {
        source_name: String,
        table: String,
        server: String,
    },
    #[error(
        "source \"{source_name}\", table {table}, column \"{column}\", row {row} of the read: {reason}. \
         The value cannot be read exactly, so nothing was synced; read the table through a view \
         that replaces it (e.g. CASE WHEN \"{column}\" = 'infinity' THEN NULL ELSE \"{column}\" END) \
         or casts the column to text"
    )]
    Value {
        source_name: String,
        table: String,
        column: String,
        row: u64,
        reason: String,
    },
    #[error(
        "source \"{source_name}\", table {table}: {server} sent nothing for {wait} while {doing}; \
         raise read_timeout of source \"{source_name}\" if the query is slow, or check the server"
    )]
    Timeout {
        source_name: String,
        table: String,
        server: String,
        wait: String,
        doing: &'static str,
    },
}

/// One table of a PostgreSQL source.
#[derive(Debug)]
pub struct PostgresTable {
    source: String,
    url: PgUrl,
    schema_name: String,
    table: String,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    read_timeout: Duration,
}

/// The columns of `schema.table`: name, type OID and modifier (a domain's base type's).
const COLUMNS: &str = "
SELECT a.attname::text,
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

impl PostgresTable {
    /// Look up the columns of `schema_name.table` with `client`.
    pub async fn load(
        client: &Client,
        url: &PgUrl,
        source: &str,
        schema_name: &str,
        table: &str,
        read_timeout: Duration,
    ) -> Result<PostgresTable, ReadError> {
        let display = qualified(schema_name, table);
        let rows =
            tokio::time::timeout(read_timeout, client.query(COLUMNS, &[&schema_name, &table]))
                .await
                .map_err(|_| ReadError::Timeout {
                    source_name: source.to_string(),
                    table: display.clone(),
                    server: url.server(),
                    wait: humantime::format_duration(read_timeout).to_string(),
                    doing: "listing the table's columns",
                })?
                .map_err(|e| ReadError::Server {
                    source_name: source.to_string(),
                    table: display.clone(),
                    server: url.server(),
                    reason: url.redact(&crate::databases::postgres::message(&e)),
                })?;
        if rows.is_empty() {
            return Err(ReadError::NoTable {
                source_name: source.to_string(),
                table: display,
                server: url.server(),
            });
        }
        let mut fields = Vec::with_capacity(rows.len());
        let mut kinds = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.get(0);
            let oid: i64 = r.get(1);
            let typmod: i32 = r.get(2);
            let kind = Kind::of(u32::try_from(oid).unwrap_or(0), typmod);
            fields.push(Field::new(name, kind.data_type(), true));
            kinds.push(kind);
        }
        Ok(PostgresTable {
            source: source.to_string(),
            url: url.clone(),
            schema_name: schema_name.to_string(),
            table: table.to_string(),
            schema: Arc::new(Schema::new(fields)),
            kinds,
            read_timeout,
        })
    }

    fn display(&self) -> String {
        qualified(&self.schema_name, &self.table)
    }

    fn kind_of(&self, column: &str) -> Option<Kind> {
        let i = self.schema.index_of(column).ok()?;
        self.kinds.get(i).copied()
    }

    /// Whether PostgreSQL evaluates `e` exactly as DataFusion would.
    fn pushable(&self, e: &Expr) -> bool {
        use Operator::*;
        match e {
            Expr::Column(c) => self.kind_of(&c.name).is_some_and(Kind::filterable),
            Expr::Literal(v, _) => literal_pushable(v),
            Expr::BinaryExpr(b) => {
                matches!(b.op, Eq | NotEq | Lt | LtEq | Gt | GtEq | And | Or)
                    && self.pushable(&b.left)
                    && self.pushable(&b.right)
            }
            Expr::Not(x) | Expr::IsNull(x) | Expr::IsNotNull(x) => self.pushable(x),
            Expr::Between(b) => {
                self.pushable(&b.expr) && self.pushable(&b.low) && self.pushable(&b.high)
            }
            Expr::InList(l) => self.pushable(&l.expr) && l.list.iter().all(|x| self.pushable(x)),
            _ => false,
        }
    }

    /// The SQL of a read.
    fn sql(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<String> {
        let all: Vec<usize> = (0..self.kinds.len()).collect();
        let columns = projection.unwrap_or(&all);
        let select = columns
            .iter()
            .map(|&i| self.kinds[i].select(&quote(self.schema.field(i).name())))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {select} FROM {}", self.display());
        let unparser = Unparser::new(&PostgreSqlDialect {});
        let mut conditions = Vec::new();
        for f in filters.iter().filter(|f| self.pushable(f)) {
            let unqualified = f
                .clone()
                .transform_up(|e| match e {
                    Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                        c.name,
                    )))),
                    e => Ok(Transformed::no(e)),
                })?
                .data;
            conditions.push(format!("({})", unparser.expr_to_sql(&unqualified)?));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        Ok(sql)
    }
}

/// Literals PostgreSQL reads back as the same value: numbers, booleans, and dates and
/// timestamps in years 1 to 9999 (in UTC, since the session's time zone is UTC).
fn literal_pushable(v: &ScalarValue) -> bool {
    use ScalarValue::*;
    const MIN_MICROS: i64 = -62_135_596_800_000_000; // 0001-01-01
    const MAX_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31 23:59:59.999999
    let utc = |tz: &Option<Arc<str>>| tz.as_deref().is_none_or(|z| z == "UTC" || z == "+00:00");
    let in_range =
        |micros: Option<i64>| micros.is_some_and(|m| (MIN_MICROS..=MAX_MICROS).contains(&m));
    match v {
        Boolean(Some(_))
        | Int8(Some(_))
        | Int16(Some(_))
        | Int32(Some(_))
        | Int64(Some(_))
        | UInt8(Some(_))
        | UInt16(Some(_))
        | UInt32(Some(_))
        | UInt64(Some(_))
        | Decimal128(Some(_), ..)
        | Decimal256(Some(_), ..) => true,
        Date32(Some(d)) => in_range(Some(*d as i64 * 86_400_000_000)),
        TimestampSecond(Some(t), tz) => utc(tz) && in_range(t.checked_mul(1_000_000)),
        TimestampMillisecond(Some(t), tz) => utc(tz) && in_range(t.checked_mul(1000)),
        TimestampMicrosecond(Some(t), tz) => utc(tz) && in_range(Some(*t)),
        TimestampNanosecond(Some(t), tz) => utc(tz) && in_range(Some(t / 1000)),
        _ => false,
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.pushable(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let sql = self.sql(projection, filters, limit)?;
        let (schema, kinds) = match projection {
            Some(p) => (
                Arc::new(self.schema.project(p)?),
                p.iter().map(|&i| self.kinds[i]).collect(),
            ),
            None => (self.schema.clone(), self.kinds.clone()),
        };
        Ok(Arc::new(scan::PostgresScan::new(scan::Read {
            source: self.source.clone(),
            table: self.display(),
            url: self.url.clone(),
            sql,
            schema,
            kinds,
            read_timeout: self.read_timeout,
        })))
    }
}
