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
        let path = super::project_path(&config.path, project_dir);
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

        use datafusion::catalog::MemorySchemaProvider;
        use datafusion::common::TableReference;
        use datafusion_table_providers_duckdb::DuckDBTableFactory;

        let path = self.path.clone();
        if path.exists() && !path.is_file() {
            return Err(SourceError::Other {
                name: name.to_string(),
                reason: format!(
                    "{} is not a file; `path` names a DuckDB database file",
                    path.display()
                ),
            });
        }
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
                    "column \"{column}\" is of type {data_type}, which {}; read the table \
                     through a view in the file that casts that column (to VARCHAR, say), or \
                     leave the table out of `tables`",
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
            super::database::add(&schema, name, &table, Ok(provider), |m| m.to_string())?;
        }
        super::register_schema(ctx, name, schema)?;
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
    use datafusion_table_providers_duckdb::pool::DuckDbConnectionPoolBuilder;

    // A file's views run as DuckDB runs them; none of them makes DuckDB fetch an extension
    // from the network (a view over an SQLite file would, by default).
    let pool = DuckDbConnectionPoolBuilder::file(&path.to_string_lossy())
        .with_access_mode(duckdb::AccessMode::ReadOnly)
        .with_instance_setup_query("SET autoinstall_known_extensions = false")
        .with_instance_setup_query("SET autoload_known_extensions = false")
        .build()
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
    // Every column of the schema at once (one query per table costs a scan of the catalog
    // each: a schema of thousands of tables would take minutes).
    let mut columns: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
    let mut stmt = conn
        .prepare(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() \
             WHERE database_name = current_database() AND schema_name = ? \
             ORDER BY table_name, column_index",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([schema], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    drop(stmt);
    for (table, column, data_type) in rows {
        if !lossy(&data_type).is_empty() {
            columns.entry(table).or_default().push((column, data_type));
        }
    }
    let tables = names
        .into_iter()
        .map(|name| Table {
            inexact: columns.remove(&name).unwrap_or_default(),
            name,
        })
        .collect();
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
/// How values of `data_type` (a DuckDB type as `duckdb_columns()` prints it, nested ones
/// included) would fail to arrive as they are, or "" when they arrive exactly.
fn lossy(data_type: &str) -> &'static str {
    // Names of struct fields ("...") and enum values ('...') are not types.
    let mut bare = String::with_capacity(data_type.len());
    let mut quote = None;
    for c in data_type.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) => bare.push(c),
            _ => {}
        }
    }
    if bare.contains("TIME WITH TIME ZONE") || bare.contains("TIMETZ") {
        return "loses its offset on its way to Arrow";
    }
    for word in bare.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
        match word {
            "ENUM" => return "the DuckDB provider cannot read",
            "UNION" => {
                return "arrives in a form backflow's destinations cannot hold (a NULL reads as \
                        a value)";
            }
            "UHUGEINT" => return "wraps around above 2^127 on its way to Arrow",
            "BIGNUM" | "VARINT" | "BIT" | "BITSTRING" => {
                return "arrives as DuckDB's internal bytes";
            }
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
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let Some((row, what)) = first_inexact(batch.column(i).as_ref()) else {
                continue;
            };
            let inside = if field.data_type().is_nested() {
                " (inside it)"
            } else {
                ""
            };
            return Err(datafusion::error::DataFusionError::Execution(format!(
                "source \"{}\", table {}, column \"{}\", row {} of the read{inside}: {what}. \
                 The value cannot be read exactly, so nothing was synced; read the table through \
                 a view that replaces it (e.g. CASE WHEN isinf(\"{}\") THEN NULL ELSE \"{}\" END) \
                 or casts the column to VARCHAR",
                self.source,
                self.table,
                field.name(),
                first_row + row as u64 + 1,
                field.name(),
                field.name(),
            )));
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

/// The first value of `array` (its index) that DuckDB handed over in a form that is not its
/// own, and what is wrong with it; nested arrays are searched through, their index mapped back
/// to the row holding the value.
#[cfg(feature = "duckdb")]
fn first_inexact(array: &dyn arrow::array::Array) -> Option<(usize, String)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{
        DataType, Date32Type, Decimal128Type, DecimalType, Int64Type, Time64MicrosecondType,
        Time64NanosecondType, TimeUnit,
    };
    // The row of a list's `offsets` whose range holds child index `child`.
    fn row_of<O: Copy + Into<i64>>(offsets: &[O], child: usize) -> usize {
        let child = child as i64;
        offsets
            .partition_point(|o| (*o).into() <= child)
            .saturating_sub(1)
    }
    let position = |bad: &dyn Fn(usize) -> Option<String>| {
        (0..array.len())
            .filter(|&r| array.is_valid(r))
            .find_map(|r| bad(r).map(|what| (r, what)))
    };
    match array.data_type() {
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            position(&|r| {
                let days = a.value(r);
                match days {
                    i32::MAX => Some("the date infinity has no Arrow equivalent".into()),
                    d if d == -i32::MAX => {
                        Some("the date -infinity has no Arrow equivalent".into())
                    }
                    d => chrono::NaiveDate::from_num_days_from_ce_opt(d.saturating_add(719_163))
                        .is_none()
                        .then(|| {
                            format!(
                                "the date {d} days from 1970-01-01 is past the years \
                                 backflow can write (-262143 to 262142)"
                            )
                        }),
                }
            })
        }
        DataType::Timestamp(unit, _) => {
            let raw = arrow::compute::cast(array, &DataType::Int64).ok()?;
            let a = raw.as_primitive::<Int64Type>();
            position(&|r| {
                let v = a.value(r);
                let in_range = match unit {
                    TimeUnit::Second => chrono::DateTime::from_timestamp(v, 0).is_some(),
                    TimeUnit::Millisecond => chrono::DateTime::from_timestamp_millis(v).is_some(),
                    TimeUnit::Microsecond => chrono::DateTime::from_timestamp_micros(v).is_some(),
                    TimeUnit::Nanosecond => true,
                };
                match v {
                    i64::MAX => Some("the timestamp infinity has no Arrow equivalent".into()),
                    v if v == -i64::MAX => {
                        Some("the timestamp -infinity has no Arrow equivalent".into())
                    }
                    _ if !in_range => Some(
                        "the timestamp is past the years backflow can write (-262143 to 262142)"
                            .into(),
                    ),
                    _ => None,
                }
            })
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            let a = array.as_primitive::<Time64MicrosecondType>();
            position(&|r| {
                (!(0..86_400_000_000).contains(&a.value(r)))
                    .then(|| "the time 24:00:00 has no Arrow equivalent".into())
            })
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            let a = array.as_primitive::<Time64NanosecondType>();
            position(&|r| {
                (!(0..86_400_000_000_000).contains(&a.value(r)))
                    .then(|| "the time 24:00:00 has no Arrow equivalent".into())
            })
        }
        DataType::Decimal128(precision, scale) => {
            // A HUGEINT arrives as decimal(38, 0) whatever its digits: one of 39 would lose
            // one on its way out.
            let a = array.as_primitive::<Decimal128Type>();
            if a.validate_decimal_precision(*precision).is_ok() {
                return None;
            }
            position(&|r| {
                (!Decimal128Type::is_valid_decimal_precision(a.value(r), *precision)).then(|| {
                    format!(
                        "{} has more than {precision} digits, the most an Arrow decimal holds",
                        decimal_text(a.value(r), *scale)
                    )
                })
            })
        }
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            let (child, what) = first_inexact(a.values().as_ref())?;
            Some((row_of(a.value_offsets(), child), what))
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            let (child, what) = first_inexact(a.values().as_ref())?;
            Some((row_of(a.value_offsets(), child), what))
        }
        DataType::FixedSizeList(_, size) => {
            let a = array.as_fixed_size_list();
            let (child, what) = first_inexact(a.values().as_ref())?;
            Some((child / (*size).max(1) as usize, what))
        }
        DataType::Map(_, _) => {
            let a = array.as_map();
            let (child, what) = first_inexact(a.entries())?;
            Some((row_of(a.value_offsets(), child), what))
        }
        DataType::Struct(_) => array
            .as_struct()
            .columns()
            .iter()
            .find_map(|c| first_inexact(c.as_ref())),
        _ => None,
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
            "ENUM('a', 'b')",
            "UNION(n INTEGER, s VARCHAR)",
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
            "STRUCT(\"BIT\" INTEGER, \"UNION\" VARCHAR)",
            "INTEGER[]",
        ] {
            assert!(lossy(t).is_empty(), "{t}");
        }
    }
}
