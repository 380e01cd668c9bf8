//! Sources: named tables that models read. Each kind lives in its own file and implements
//! [`Source`]; [`build`] is the one place that lists them.

mod file;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

pub use file::{CsvSourceConfig, FileSource, ParquetSourceConfig};

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
    #[error("source \"{name}\" ({location}) cannot be read: {source}")]
    Read {
        name: String,
        location: String,
        source: datafusion::error::DataFusionError,
    },
}

/// `[sources.NAME]`, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// CSV files: a path, a directory or a glob, local or in an object store.
    Csv(CsvSourceConfig),
    /// Parquet files: a path, a directory or a glob, local or in an object store.
    Parquet(ParquetSourceConfig),
}

impl SourceConfig {
    /// Problems found without I/O.
    pub fn validate(&self) -> Vec<String> {
        match self {
            SourceConfig::Csv(c) => c.validate(),
            SourceConfig::Parquet(c) => c.validate(),
        }
    }
}

/// A source registers itself as a table of a session.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Register the source in `ctx` under `name`.
    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<(), SourceError>;
}

/// Build the source declared by `config`; relative paths resolve against `project_dir`.
pub fn build(config: &SourceConfig, project_dir: &Path) -> Arc<dyn Source> {
    match config {
        SourceConfig::Csv(c) => Arc::new(FileSource::csv(c.clone(), project_dir)),
        SourceConfig::Parquet(c) => Arc::new(FileSource::parquet(c.clone(), project_dir)),
    }
}
