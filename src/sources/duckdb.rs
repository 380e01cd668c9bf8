//! DuckDB database files as sources, through datafusion-table-providers' DuckDB provider (the
//! `duckdb` cargo feature, which compiles DuckDB itself).
//!
//! ```toml
//! [sources.shop]
//! type = "duckdb"
//! path = "warehouse/shop.duckdb"   # a local file, relative to the project
//! schema = "main"                   # the default
//! tables = "*"                      # or ["customers", "orders"]
//! ```
//!
//! The file is opened read-only: backflow never changes it, and other readers may have it open
//! too (DuckDB lets one process write a file and nobody read it meanwhile, so a run while a
//! writer holds the file fails at once and says so). A source named `shop` is a SQL schema:
//! its table `customers` is `shop.customers` in models. The columns the query uses, its filters
//! (a watermark's, a key lookup's) and its limit reach DuckDB as SQL, so an incremental read
//! scans only what is past the watermark; a filter comparing with text holding a quote, a
//! backslash or a NUL is applied after the scan (see `pushdown`). Values arrive in DuckDB's own
//! Arrow form (exact: decimals, 64-bit integers, microsecond timestamps, dates of any year); a
//! column of a type the provider cannot read (a list of lists, a list of structs, ...) is named
//! with its type: a listed table stops the source; with `tables = "*"` the table is left out
//! with a warning, and a sync or model that reads it says why. A view in the file that casts
//! the column reads it.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::database::TableSelection;
use super::{Source, SourceError};

/// `type = "duckdb"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuckdbSourceConfig {
    /// The database file, relative to the project.
    pub path: String,
    /// The schema whose tables and views are read (default `main`).
    #[serde(default = "main_schema")]
    pub schema: String,
    pub tables: TableSelection,
}

fn main_schema() -> String {
    "main".into()
}

const NOT_BUILT: &str = "this backflow was built without DuckDB support; build it with \
                         `cargo build --release --features duckdb`";

impl DuckdbSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.tables.validate();
        if self.path.trim().is_empty() {
            p.push("path is empty (the DuckDB database file)".into());
        } else if self.path.contains("://") {
            p.push(format!(
                "path = \"{}\": a DuckDB file is read from the local file system; copy it here \
                 first",
                self.path
            ));
        }
        if self.schema.trim().is_empty() || self.schema.contains('\0') {
            p.push(format!("schema = {:?} is not a schema name", self.schema));
        }
        if !cfg!(feature = "duckdb") {
            p.push(NOT_BUILT.into());
        }
        p
    }
}

/// A DuckDB file source.
#[derive(Debug, Clone)]
pub struct DuckdbSource {
    config: DuckdbSourceConfig,
    path: PathBuf,
}

impl DuckdbSource {
    pub fn new(config: DuckdbSourceConfig, project_dir: &Path) -> Self {
        let p = Path::new(&config.path);
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            project_dir.join(p)
        };
        DuckdbSource { config, path }
    }
}

#[async_trait]
impl Source for DuckdbSource {
    #[cfg(not(feature = "duckdb"))]
    async fn register(
        &self,
        _ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        let _ = (&self.config, &self.path);
        Err(SourceError::Other {
            name: name.to_string(),
            reason: NOT_BUILT.into(),
        })
    }

    #[cfg(feature = "duckdb")]
    async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        use std::sync::Arc;

        use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
        use datafusion::common::TableReference;
        use datafusion_table_providers_duckdb::DuckDBTableFactory;

        let path = self.path.clone();
        if !path.is_file() {
            return Err(SourceError::Missing {
                name: name.to_string(),
                location: path.display().to_string(),
            });
        }
        let other = |reason: String| SourceError::Other {
            name: name.to_string(),
            reason,
        };
        let display = path.display().to_string();
        // Opening the file reads its header and replays its write-ahead log: file I/O, off the
        // runtime's threads.
        let schema_name = self.config.schema.clone();
        let selection = self.config.tables.clone();
        let (pool, tables) =
            tokio::task::spawn_blocking(move || open(&path, &schema_name, &selection))
                .await
                .map_err(|e| other(format!("{display}: {e}")))?
                .map_err(|e| other(format!("{display}: {e}")))?;
        let pool = Arc::new(pool);
        let factory = DuckDBTableFactory::new(pool);
        let schema = Arc::new(MemorySchemaProvider::new());
        let mut warnings = Vec::new();
        for table in tables {
            let Table {
                name: table,
                inexact,
            } = table;
            let reference = TableReference::partial(self.config.schema.as_str(), table.as_str());
            let check = Arc::new(ExactValues {
                source: name.to_string(),
                table: table.clone(),
            });
            let provided = match inexact.first() {
                Some((column, data_type)) => Err(format!(
                    "column \"{column}\" is of type {data_type}, which DuckDB cannot hand over \
                     exactly (its Arrow form {}); read the table through a view in the file that \
                     casts that column (to VARCHAR, say), or leave the table out of `tables`",
                    lossy(data_type)
                )),
                None => factory
                    .table_provider(reference)
                    .await
                    .map_err(|e| unreadable(&super::database::chain(e.as_ref()))),
            };
            let provider = match provided {
                Ok(p) => super::pushdown::SafeFilters::wrap_checked(p, check),
                Err(reason) => {
                    // With `tables = "*"` one table of a type the provider cannot read does
                    // not stop the others; a sync or model that names it says why.
                    if matches!(self.config.tables, TableSelection::All) {
                        warnings.push(format!("{name}.{table} cannot be read: {reason}"));
                        continue;
                    }
                    return Err(SourceError::Table {
                        name: name.to_string(),
                        table,
                        reason,
                    });
                }
            };
            schema
                .register_table(table.clone(), provider)
                .map_err(|e| SourceError::Table {
                    name: name.to_string(),
                    table: table.clone(),
                    reason: e.to_string(),
                })?;
        }
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| other("the session has no default catalog".into()))?;
        catalog
            .register_schema(name, schema)
            .map_err(|e| other(e.to_string()))?;
        Ok(super::Registration {
            warnings,
            ..Default::default()
        })
    }
}

/// Open `path` read-only and list the tables to read: the selection's, each checked to exist
/// (so a misspelt name is reported with the ones there are), or every table and view of the
/// schema.
#[cfg(feature = "duckdb")]
fn open(
    path: &Path,
    schema: &str,
    selection: &TableSelection,
) -> Result<
    (
        datafusion_table_providers_duckdb::pool::DuckDbConnectionPool,
        Vec<Table>,
    ),
    String,
> {
    use datafusion_table_providers_duckdb::conn::DuckDbConnection;
    use datafusion_table_providers_duckdb::pool::DuckDbConnectionPool;

    let pool =
        DuckDbConnectionPool::new_file(&path.to_string_lossy(), &duckdb::AccessMode::ReadOnly)
            .map_err(|e| opening(&super::database::chain(e.as_ref())))?;
    let mut boxed = std::sync::Arc::new(pool.clone())
        .connect_sync()
        .map_err(|e| opening(&super::database::chain(e.as_ref())))?;
    let conn: &duckdb::Connection = boxed
        .as_any_mut()
        .downcast_mut::<DuckDbConnection>()
        .ok_or("the DuckDB provider gave a connection of another kind")?
        .get_underlying_conn_mut();
    let mut stmt = conn
        .prepare(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_catalog = current_database() AND table_schema = ? ORDER BY table_name",
        )
        .map_err(|e| e.to_string())?;
    let present = stmt
        .query_map([schema], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    let names = match selection {
        TableSelection::All => {
            if present.is_empty() {
                return Err(format!(
                    "schema \"{schema}\" has no tables or views{}",
                    schemas_hint(conn, schema)
                ));
            }
            present
        }
        TableSelection::List(list) => {
            for t in list {
                if !present.contains(t) {
                    let there = if present.is_empty() {
                        format!("schema \"{schema}\" has none{}", schemas_hint(conn, schema))
                    } else {
                        format!("schema \"{schema}\" has {}", present.join(", "))
                    };
                    return Err(format!("table \"{t}\" does not exist ({there})"));
                }
            }
            list.clone()
        }
    };
    let mut columns = conn
        .prepare(
            "SELECT column_name, data_type FROM duckdb_columns() \
             WHERE database_name = current_database() AND schema_name = ? AND table_name = ? \
             ORDER BY column_index",
        )
        .map_err(|e| e.to_string())?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let inexact = columns
            .query_map([schema, name.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(_, data_type)| !lossy(data_type).is_empty())
            .collect();
        tables.push(Table { name, inexact });
    }
    drop(columns);
    drop(stmt);
    drop(boxed);
    Ok((pool, tables))
}

/// A table to read, with its columns whose values DuckDB's Arrow form would change.
#[cfg(feature = "duckdb")]
struct Table {
    name: String,
    inexact: Vec<(String, String)>,
}

#[cfg(feature = "duckdb")]
/// How DuckDB's Arrow form changes values of `data_type` (a DuckDB type as `duckdb_columns()`
/// prints it, nested ones included), or "" when it carries them exactly.
fn lossy(data_type: &str) -> &'static str {
    if data_type.contains("TIME WITH TIME ZONE") || data_type.contains("TIMETZ") {
        return "drops the offset";
    }
    for word in data_type.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
        match word {
            "UHUGEINT" => return "wraps values above 2^127 around",
            "BIGNUM" | "VARINT" => return "is DuckDB's internal bytes",
            "BIT" | "BITSTRING" => return "is DuckDB's internal bytes",
            _ => {}
        }
    }
    ""
}

#[cfg(feature = "duckdb")]
/// Values DuckDB hands over in a form that is not theirs stop the read, naming the column and
/// the row (as PostgreSQL's `infinity` does): infinite dates and timestamps (`'infinity'::DATE`)
/// reach Arrow as the largest values of their types, which would read as dates millions of
/// years away; a HUGEINT of 39 digits arrives as a decimal of 38.
#[derive(Debug)]
struct ExactValues {
    source: String,
    table: String,
}

#[cfg(feature = "duckdb")]
impl super::pushdown::BatchCheck for ExactValues {
    fn check(
        &self,
        batch: &arrow::array::RecordBatch,
        first_row: u64,
    ) -> datafusion::error::Result<()> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{DataType, Date32Type, Int64Type, TimeUnit};
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let column = batch.column(i);
            let found = match field.data_type() {
                DataType::Date32 => column
                    .as_primitive::<Date32Type>()
                    .iter()
                    .position(|v| v.is_some_and(|d| d == i32::MAX || d == -i32::MAX))
                    .map(|row| (row, "date")),
                DataType::Timestamp(unit, _) => {
                    let raw = arrow::compute::cast(column, &DataType::Int64)?;
                    let kind = match unit {
                        TimeUnit::Nanosecond => "timestamp (ns)",
                        _ => "timestamp",
                    };
                    raw.as_primitive::<Int64Type>()
                        .iter()
                        .position(|v| v.is_some_and(|t| t == i64::MAX || t == -i64::MAX))
                        .map(|row| (row, kind))
                }
                DataType::Decimal128(precision, scale) => {
                    // A HUGEINT arrives as decimal(38, 0) whatever its digits: one of 39
                    // digits would lose one on its way out.
                    let values = column.as_primitive::<arrow::datatypes::Decimal128Type>();
                    if values.validate_decimal_precision(*precision).is_ok() {
                        None
                    } else if let Some(row) = (0..values.len()).find(|&r| {
                        values.is_valid(r)
                            && !<arrow::datatypes::Decimal128Type as arrow::datatypes::DecimalType>::is_valid_decimal_precision(
                                values.value(r),
                                *precision,
                            )
                    }) {
                        return Err(datafusion::error::DataFusionError::Execution(format!(
                            "source \"{}\", table {}, column \"{}\", row {} of the read: {} has \
                             more than {precision} digits, the most an Arrow decimal holds. The \
                             value cannot be read exactly, so nothing was synced; read the table \
                             through a view that casts the column to VARCHAR",
                            self.source,
                            self.table,
                            field.name(),
                            first_row + row as u64 + 1,
                            decimal_text(values.value(row), *scale),
                        )));
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some((row, kind)) = found {
                let sign = if column.is_valid(row) && is_negative(column, row) {
                    "-"
                } else {
                    ""
                };
                return Err(datafusion::error::DataFusionError::Execution(format!(
                    "source \"{}\", table {}, column \"{}\", row {} of the read: the {kind} \
                     {sign}infinity has no Arrow equivalent. The value cannot be read exactly, so \
                     nothing was synced; read the table through a view that replaces it (e.g. \
                     CASE WHEN isinf(\"{}\") THEN NULL ELSE \"{}\" END)",
                    self.source,
                    self.table,
                    field.name(),
                    first_row + row as u64 + 1,
                    field.name(),
                    field.name(),
                )));
            }
        }
        Ok(())
    }
}

/// A decimal's digits whatever its declared precision (Arrow's own formatting keeps only as
/// many digits as the precision allows).
#[cfg(feature = "duckdb")]
fn decimal_text(value: i128, scale: i8) -> String {
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    match usize::try_from(scale) {
        Ok(scale) if scale > 0 => {
            let digits = format!("{digits:0>width$}", width = scale + 1);
            let (whole, fraction) = digits.split_at(digits.len() - scale);
            format!("{sign}{whole}.{fraction}")
        }
        _ => format!("{sign}{digits}"),
    }
}

#[cfg(feature = "duckdb")]
/// Whether the date or timestamp at `row` is below zero.
fn is_negative(column: &arrow::array::ArrayRef, row: usize) -> bool {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Date32Type, Int64Type};
    match column.data_type() {
        DataType::Date32 => column.as_primitive::<Date32Type>().value(row) < 0,
        _ => arrow::compute::cast(&column.slice(row, 1), &DataType::Int64)
            .is_ok_and(|v| v.as_primitive::<Int64Type>().value(0) < 0),
    }
}

/// The other schemas of the file, when `schema` is not one of them.
#[cfg(feature = "duckdb")]
fn schemas_hint(conn: &duckdb::Connection, schema: &str) -> String {
    let names = conn
        .prepare(
            "SELECT DISTINCT table_schema FROM information_schema.tables \
             WHERE table_catalog = current_database() ORDER BY 1",
        )
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        })
        .unwrap_or_default();
    if names.is_empty() || names.iter().any(|n| n == schema) {
        String::new()
    } else {
        format!(
            "; the file's tables are in {} (set `schema`)",
            names.join(", ")
        )
    }
}

/// DuckDB's reason a file did not open, with what to do about the common ones.
#[cfg(feature = "duckdb")]
fn opening(reason: &str) -> String {
    if reason.contains("lock") {
        format!(
            "{reason} (another program has the file open for writing, and DuckDB lets nobody \
             else read it meanwhile: run when it is done, or read a copy of the file)"
        )
    } else if reason.contains("newer version") || reason.contains("version number") {
        format!("{reason} (this backflow reads files of DuckDB 2.0 and older)")
    } else {
        format!("cannot open as a DuckDB database: {reason}")
    }
}

/// The provider's reason a table cannot be read, with what to do when it is a column's type.
#[cfg(feature = "duckdb")]
fn unreadable(reason: &str) -> String {
    if reason.to_ascii_lowercase().contains("unsupported") {
        format!(
            "{reason}; read the table through a view in the file that casts that column (to \
             VARCHAR, say), or leave the table out of `tables`"
        )
    } else {
        reason.to_string()
    }
}

#[cfg(all(test, feature = "duckdb"))]
mod tests {
    use super::lossy;

    #[test]
    fn decimals_print_every_digit() {
        use super::decimal_text;
        assert_eq!(decimal_text(i128::MAX, 0), i128::MAX.to_string());
        assert_eq!(decimal_text(i128::MIN, 0), i128::MIN.to_string());
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(7, -2), "7");
    }

    #[test]
    fn types_whose_arrow_form_changes_values_are_found_nested_too() {
        for t in [
            "TIME WITH TIME ZONE",
            "UHUGEINT",
            "BIGNUM",
            "BIT",
            "STRUCT(a INTEGER, b TIME WITH TIME ZONE)",
            "UHUGEINT[]",
            "MAP(VARCHAR, BIT)",
        ] {
            assert!(!lossy(t).is_empty(), "{t}");
        }
        for t in [
            "HUGEINT",
            "BIGINT",
            "DECIMAL(38,10)",
            "TIMESTAMP WITH TIME ZONE",
            "TIME",
            "VARCHAR",
            "BLOB",
            "STRUCT(\"bits\" INTEGER)",
            "INTEGER[]",
        ] {
            assert!(lossy(t).is_empty(), "{t}");
        }
    }
}
