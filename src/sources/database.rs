//! Database sources: the tables of a PostgreSQL schema (read by [`super::postgres`]), a
//! MySQL/MariaDB database or an SQLite file (read through datafusion-table-providers). A source named `warehouse` becomes a SQL
//! schema: its table `customers` is `warehouse.customers` in models. Filters, projections and
//! limits of a query reach the database as SQL (the providers unparse them), so a
//! watermark-filtered read only fetches the rows past the watermark.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::{Source, SourceError};
use crate::databases::mysql::MyUrl;
use crate::databases::postgres::PgUrl;
use crate::databases::{self, DatabaseError};

/// Which tables a database source exposes.
#[derive(Debug, Clone)]
pub enum TableSelection {
    /// `tables = "*"`: every table and view, listed when the run starts.
    All,
    /// `tables = ["a", "b"]`
    List(Vec<String>),
}

// By hand rather than `untagged`, so that a wrong value is reported at its own line.
impl<'de> Deserialize<'de> for TableSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TableSelection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "tables = \"*\" (every table) or a list of table names such as [\"customers\", \"orders\"]",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TableSelection, E> {
                if s == "*" {
                    Ok(TableSelection::All)
                } else {
                    Err(E::custom(format!(
                        "tables = \"{s}\": use \"*\" for every table or a list such as [\"{s}\"]"
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<TableSelection, A::Error> {
                Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(TableSelection::List)
            }
        }
        d.deserialize_any(V)
    }
}

impl TableSelection {
    pub(super) fn validate(&self) -> Vec<String> {
        match self {
            TableSelection::All => vec![],
            TableSelection::List(l) if l.is_empty() => {
                vec!["tables is empty (list table names, or \"*\" for all)".into()]
            }
            TableSelection::List(l) => l
                .iter()
                .filter(|t| t.trim().is_empty() || t.contains('\0'))
                .map(|t| format!("table name {t:?} is not valid"))
                .collect(),
        }
    }
}

/// `type = "postgres"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// The environment variable holding the connection URL.
    pub url_env: String,
    /// The schema whose tables are read (default `public`).
    #[serde(default = "public")]
    pub schema: String,
    pub tables: TableSelection,
    /// The longest wait for the server's next data during a read (`"5m"` by default).
    pub read_timeout: Option<String>,
}

/// `type = "mysql"` (MySQL or MariaDB; the database is the URL's).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    pub url_env: String,
    pub tables: TableSelection,
}

/// `type = "sqlite"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceConfig {
    /// The database file, relative to the project.
    pub path: String,
    pub tables: TableSelection,
}

fn public() -> String {
    "public".into()
}

impl PostgresSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = databases::validate_url_env(&self.url_env);
        p.extend(self.tables.validate());
        if let Some(t) = &self.read_timeout
            && crate::duration::parse(t).is_none_or(|d| d.is_zero())
        {
            p.push(format!(
                "read_timeout = \"{t}\" is not a duration above zero (e.g. \"30s\", \"5m\", \"1h\")"
            ));
        }
        p
    }

    fn read_timeout(&self) -> std::time::Duration {
        self.read_timeout
            .as_deref()
            .and_then(crate::duration::parse)
            .filter(|d| !d.is_zero())
            .unwrap_or(super::postgres::DEFAULT_READ_TIMEOUT)
    }
}

impl MysqlSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = databases::validate_url_env(&self.url_env);
        p.extend(self.tables.validate());
        p
    }
}

impl SqliteSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.tables.validate();
        if self.path.trim().is_empty() {
            p.push("path is empty".into());
        }
        p
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Postgres(PostgresSourceConfig),
    Mysql(MysqlSourceConfig),
    Sqlite(SqliteSourceConfig, PathBuf),
}

/// A database source.
#[derive(Debug, Clone)]
pub struct DatabaseSource {
    kind: Kind,
}

impl DatabaseSource {
    pub fn postgres(c: PostgresSourceConfig) -> Self {
        DatabaseSource {
            kind: Kind::Postgres(c),
        }
    }
    pub fn mysql(c: MysqlSourceConfig) -> Self {
        DatabaseSource {
            kind: Kind::Mysql(c),
        }
    }
    pub fn sqlite(c: SqliteSourceConfig, project_dir: &Path) -> Self {
        let path = super::project_path(&c.path, project_dir);
        DatabaseSource {
            kind: Kind::Sqlite(c, path),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[async_trait]
impl Source for DatabaseSource {
    async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        let db_err = |source: DatabaseError| SourceError::Database {
            name: name.to_string(),
            source,
        };
        let schema = Arc::new(MemorySchemaProvider::new());
        match &self.kind {
            Kind::Postgres(c) => {
                let url = PgUrl::from_env(&c.url_env).map_err(db_err)?;
                let client = url.connect().await.map_err(db_err)?;
                let tables = match &c.tables {
                    TableSelection::List(l) => l.clone(),
                    TableSelection::All => {
                        crate::databases::postgres::list_tables(&url, &client, &c.schema)
                            .await
                            .map_err(db_err)?
                    }
                };
                for table in tables {
                    let provider = super::postgres::PostgresTable::load(
                        &client,
                        &url,
                        name,
                        &c.schema,
                        &table,
                        c.read_timeout(),
                    )
                    .await?;
                    add(&schema, name, &table, Ok(Arc::new(provider)), |m| {
                        url.redact(m)
                    })?;
                }
            }
            Kind::Mysql(c) => {
                use datafusion_table_providers_mysql::MySQLTableFactory;
                use datafusion_table_providers_mysql::pool::MySQLConnectionPool;
                let url = MyUrl::from_env(&c.url_env).map_err(db_err)?;
                let (mut conn, sslmode) = url.connect().await.map_err(db_err)?;
                let tables = match &c.tables {
                    TableSelection::List(l) => l.clone(),
                    TableSelection::All => crate::databases::mysql::list_tables(&url, &mut conn)
                        .await
                        .map_err(db_err)?,
                };
                let _ = conn.disconnect().await;
                let pool = MySQLConnectionPool::new(url.provider_params(sslmode))
                    .await
                    .map_err(|e| {
                        db_err(DatabaseError::Connect {
                            var: c.url_env.clone(),
                            server: url.server(),
                            reason: url.redact(&e.to_string()),
                        })
                    })?;
                let factory = MySQLTableFactory::new(Arc::new(pool));
                for table in tables {
                    let reference = TableReference::bare(table.as_str());
                    let provider = factory
                        .table_provider(reference)
                        .await
                        .map(super::pushdown::SafeFilters::wrap);
                    add(&schema, name, &table, provider, |m| url.redact(m))?;
                }
            }
            Kind::Sqlite(c, path) => {
                use datafusion_table_providers_sqlite::SqliteTableFactory;
                use datafusion_table_providers_sqlite::pool::SqliteConnectionPoolFactory;
                if !path.is_file() {
                    return Err(SourceError::Missing {
                        name: name.to_string(),
                        location: path.display().to_string(),
                    });
                }
                let tables = match &c.tables {
                    TableSelection::List(l) => l.clone(),
                    TableSelection::All => sqlite_tables(path).map_err(|e| SourceError::Other {
                        name: name.to_string(),
                        reason: format!("{}: {e}", path.display()),
                    })?,
                };
                let pool = SqliteConnectionPoolFactory::new(
                    &path.to_string_lossy(),
                    datafusion_table_providers_common::sql::db_connection_pool::Mode::File,
                    std::time::Duration::from_secs(10),
                )
                .build()
                .await
                .map_err(|e| SourceError::Other {
                    name: name.to_string(),
                    reason: format!("{}: {e}", path.display()),
                })?;
                let pool = Arc::new(pool);
                let factory = SqliteTableFactory::new(pool.clone());
                for table in tables {
                    let provider = factory
                        .table_provider(TableReference::bare(table.as_str()))
                        .await
                        .map(|inferred| declared_types(path, &table, inferred, &pool))
                        .map(super::pushdown::SafeFilters::wrap);
                    add(&schema, name, &table, provider, |m| m.to_string())?;
                }
            }
        }
        super::register_schema(ctx, name, schema)?;
        Ok(super::Registration::default())
    }
}

pub(super) fn add(
    schema: &MemorySchemaProvider,
    source: &str,
    table: &str,
    provider: Result<Arc<dyn TableProvider>, BoxError>,
    redact: impl Fn(&str) -> String,
) -> Result<(), SourceError> {
    let provider = provider.map_err(|e| SourceError::Table {
        name: source.to_string(),
        table: table.to_string(),
        reason: redact(&chain(e.as_ref())),
    })?;
    schema
        .register_table(table.to_string(), provider)
        .map_err(|e| SourceError::Table {
            name: source.to_string(),
            table: table.to_string(),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// An error with its causes, `a: b: c`.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut m = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !m.contains(&t) {
            m.push_str(": ");
            m.push_str(&t);
        }
        source = s.source();
    }
    m
}

fn sqlite_tables(path: &Path) -> rusqlite::Result<Vec<String>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}

/// An SQLite table's provider with the column types its declaration gives (SQLite's affinity
/// rules: `INT` → integer, `CHAR`/`CLOB`/`TEXT` → text, `REAL`/`FLOA`/`DOUB` → double, `BLOB`
/// → bytes), instead of the types the provider infers from the table's first row, which are
/// wrong when that row holds a NULL (every value of the column would be read as NULL) and
/// absent when the table is empty. Columns declared otherwise (`NUMERIC`, `DATE`, none) keep
/// the inferred type (text, in an empty table).
fn declared_types(
    path: &Path,
    table: &str,
    inferred: Arc<dyn TableProvider>,
    pool: &Arc<datafusion_table_providers_sqlite::pool::SqliteConnectionPool>,
) -> Arc<dyn TableProvider> {
    use arrow::datatypes::{DataType, Field, Schema};
    let Ok(declared) = sqlite_columns(path, table) else {
        return inferred;
    };
    if declared.is_empty() {
        return inferred;
    }
    let have = inferred.schema();
    let fields: Vec<Field> = declared
        .iter()
        .map(|(name, decl)| {
            let decl = decl.to_ascii_uppercase();
            let by_affinity = if decl.contains("INT") {
                Some(DataType::Int64)
            } else if decl.contains("CHAR") || decl.contains("CLOB") || decl.contains("TEXT") {
                Some(DataType::Utf8)
            } else if decl.contains("REAL") || decl.contains("FLOA") || decl.contains("DOUB") {
                Some(DataType::Float64)
            } else if decl.contains("BLOB") {
                Some(DataType::Binary)
            } else {
                None
            };
            let data_type = by_affinity.unwrap_or_else(|| {
                have.field_with_name(name)
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Utf8)
            });
            Field::new(name, data_type, true)
        })
        .collect();
    let dyn_pool: Arc<datafusion_table_providers_sqlite::DynSqliteConnectionPool> = pool.clone();
    Arc::new(
        datafusion_table_providers_sqlite::sql_table::SQLiteTable::new_with_schema(
            &dyn_pool,
            Arc::new(Schema::new(fields)),
            TableReference::bare(table),
        ),
    )
}

/// An SQLite table's (or view's) columns and their declared types, in order.
fn sqlite_columns(path: &Path, table: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1)")?;
    let columns = stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(columns)
}
