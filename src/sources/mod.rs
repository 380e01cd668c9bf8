//! Sources: named tables that models read. Each kind lives in its own file and implements
//! [`Source`]; [`build`] is the one place that lists them.

pub mod change_feed;
mod database;
mod dbt;
mod delta;
mod duckdb;
mod fetch;
mod file;
pub mod postgres;
mod pushdown;
pub mod quarantine;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

pub use database::{
    DatabaseSource, MysqlSourceConfig, PostgresSourceConfig, SqliteSourceConfig, TableSelection,
};
pub use dbt::DbtSourceConfig;
pub use delta::DeltaSourceConfig;
#[cfg(feature = "delta")]
pub(crate) use delta::register_log_stores as register_delta_log_stores;
pub use duckdb::DuckdbSourceConfig;
pub use file::{CsvSourceConfig, FileSource, ParquetSourceConfig, sweep_clean_copies};

/// Errors from registering or reading a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source \"{name}\": {location} does not exist")]
    Missing { name: String, location: String },
    #[error("source \"{name}\": {source}")]
    Storage {
        name: String,
        source: crate::storage::StorageError,
    },
    #[error("source \"{name}\" ({location}) cannot be read: {source}{}", crate::storage::wait_hint(&source.to_string()))]
    Read {
        name: String,
        location: String,
        source: datafusion::error::DataFusionError,
    },
    #[error("source \"{name}\": {source}")]
    Database {
        name: String,
        source: crate::databases::DatabaseError,
    },
    #[error("source \"{name}\", table \"{table}\": {reason}")]
    Table {
        name: String,
        table: String,
        reason: String,
    },
    #[error("source \"{name}\": {reason}")]
    Other { name: String, reason: String },
    /// A PostgreSQL table (its message names the source and the table).
    #[error(transparent)]
    Postgres(#[from] postgres::ReadError),
}

/// `[sources.NAME]`, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// CSV files: a path, a directory or a glob, local or in an object store.
    Csv(CsvSourceConfig),
    /// Parquet files: a path, a directory or a glob, local or in an object store.
    Parquet(ParquetSourceConfig),
    /// Tables of a PostgreSQL schema; in models, `SOURCE.table`.
    Postgres(PostgresSourceConfig),
    /// Tables of a MySQL or MariaDB database; in models, `SOURCE.table`.
    Mysql(MysqlSourceConfig),
    /// Tables of an SQLite file; in models, `SOURCE.table`.
    Sqlite(SqliteSourceConfig),
    /// The relations a dbt project built (its manifest names them); in models, `SOURCE.model`.
    Dbt(DbtSourceConfig),
    /// A Delta Lake table: its folder, local or in an object store (the `delta` feature).
    Delta(DeltaSourceConfig),
    /// Tables of a DuckDB database file; in models, `SOURCE.table` (the `duckdb` feature).
    Duckdb(DuckdbSourceConfig),
}

impl SourceConfig {
    /// Problems found without I/O.
    pub fn validate(&self) -> Vec<String> {
        match self {
            SourceConfig::Csv(c) => c.validate(),
            SourceConfig::Parquet(c) => c.validate(),
            SourceConfig::Postgres(c) => c.validate(),
            SourceConfig::Mysql(c) => c.validate(),
            SourceConfig::Sqlite(c) => c.validate(),
            SourceConfig::Dbt(c) => c.validate(),
            SourceConfig::Delta(c) => c.validate(),
            SourceConfig::Duckdb(c) => c.validate(),
        }
    }

    /// For a database source, the tables it exposes (as `SOURCE.table`); None for a file
    /// source, which is one table under its own name. A dbt source's tables are known once
    /// its manifest is read: all of them.
    pub fn tables(&self) -> Option<&TableSelection> {
        static ALL: TableSelection = TableSelection::All;
        match self {
            SourceConfig::Csv(_) | SourceConfig::Parquet(_) | SourceConfig::Delta(_) => None,
            SourceConfig::Dbt(_) => Some(&ALL),
            SourceConfig::Postgres(c) => Some(&c.tables),
            SourceConfig::Mysql(c) => Some(&c.tables),
            SourceConfig::Sqlite(c) => Some(&c.tables),
            SourceConfig::Duckdb(c) => Some(&c.tables),
        }
    }
}

/// What registering a source left for the project to keep.
#[derive(Debug, Default)]
pub struct Registration {
    /// Rows left out of the source (CSV rows that cannot be read as rows of their file).
    pub quarantine: quarantine::Quarantine,
    /// Files the session reads instead of the source's own (clean copies); removed when
    /// dropped, so the project keeps it as long as the session.
    pub scratch: Option<tempfile::TempDir>,
    /// What the user should know about the source that does not stop it (a dbt model the
    /// warehouse lacks); `check` shows them.
    pub warnings: Vec<String>,
    /// The source's changes between versions, when it records them (a Delta table with
    /// Change Data Feed): a sync reading the source reads only what changed since its last run.
    pub change_feed: Option<Arc<dyn change_feed::ChangeFeed>>,
}

/// A source registers itself as a table of a session.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Register the source in `ctx` under `name`.
    async fn register(&self, ctx: &SessionContext, name: &str)
    -> Result<Registration, SourceError>;
}

/// Register a database source's tables as the SQL schema `name` (`name.table` in models).
fn register_schema(
    ctx: &SessionContext,
    name: &str,
    schema: Arc<dyn datafusion::catalog::SchemaProvider>,
) -> Result<(), SourceError> {
    let other = |reason: String| SourceError::Other {
        name: name.to_string(),
        reason,
    };
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| other("the session has no default catalog".into()))?;
    catalog
        .register_schema(name, schema)
        .map_err(|e| other(e.to_string()))?;
    Ok(())
}

/// A source's local `path` as written in its settings: relative to the project folder.
fn project_path(path: &str, project_dir: &Path) -> std::path::PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        project_dir.join(p)
    }
}

/// Build the source declared by `config`; relative paths resolve against `project_dir`.
pub fn build(config: &SourceConfig, project_dir: &Path) -> Arc<dyn Source> {
    match config {
        SourceConfig::Csv(c) => Arc::new(FileSource::csv(c.clone(), project_dir)),
        SourceConfig::Parquet(c) => Arc::new(FileSource::parquet(c.clone(), project_dir)),
        SourceConfig::Postgres(c) => Arc::new(DatabaseSource::postgres(c.clone())),
        SourceConfig::Mysql(c) => Arc::new(DatabaseSource::mysql(c.clone())),
        SourceConfig::Sqlite(c) => Arc::new(DatabaseSource::sqlite(c.clone(), project_dir)),
        SourceConfig::Dbt(c) => Arc::new(dbt::DbtSource::new(c.clone(), project_dir)),
        SourceConfig::Delta(c) => Arc::new(delta::DeltaSource::new(c.clone(), project_dir)),
        SourceConfig::Duckdb(c) => Arc::new(duckdb::DuckdbSource::new(c.clone(), project_dir)),
    }
}
