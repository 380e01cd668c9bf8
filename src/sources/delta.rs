//! Delta Lake tables as sources, through deltalake's DataFusion table provider (the `delta`
//! cargo feature).
//!
//! ```toml
//! [sources.orders]
//! type = "delta"
//! path = "s3://lake/tables/orders"   # the table's folder (with _delta_log/); local or object store
//! # version = 42                      # time travel: the table as of a version
//! # timestamp = "2026-11-30T00:00:00Z"   # ... or as of a moment
//! ```
//!
//! The table is read at its newest version unless `version` or `timestamp` pins one, so a run
//! can be repeated exactly. Files are read through the same object store as every other
//! location (credentials from the environment); filters on partition columns prune files and
//! filters on others reach the Parquet scan.
//!
//! A table with Change Data Feed (`delta.enableChangeDataFeed = true`) offers its changes
//! (see `change_feed`): a sync that reads the source reads only the changes since the version
//! its last run read, deletes included. `change_feed = false` reads the whole table every run.

use std::path::{Path, PathBuf};
#[cfg(feature = "delta")]
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::{Source, SourceError};

/// `type = "delta"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSourceConfig {
    /// The table's folder (the one holding `_delta_log/`): a path or an object-store URL.
    pub path: String,
    /// Read the table as of this version.
    pub version: Option<u64>,
    /// Read the table as of this moment (RFC 3339): the last version committed at or before it.
    pub timestamp: Option<String>,
    /// Read only the changes since a sync's last run when the table records them (its Change
    /// Data Feed); `false` reads the whole table and diffs it. Default true.
    #[serde(default = "yes")]
    pub change_feed: bool,
}

fn yes() -> bool {
    true
}

impl DeltaSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.path.trim().is_empty() {
            p.push("path is empty (the Delta table's folder)".into());
        }
        if self.version.is_some() && self.timestamp.is_some() {
            p.push("version and timestamp both pin the table; set one of them".into());
        }
        if let Some(t) = &self.timestamp
            && chrono::DateTime::parse_from_rfc3339(t).is_err()
        {
            p.push(format!(
                "timestamp = \"{t}\" is not an RFC 3339 time (e.g. \"2026-11-30T00:00:00Z\")"
            ));
        }
        if !cfg!(feature = "delta") {
            p.push(
                "this backflow was built without Delta Lake support; build it with \
                 `cargo build --release --features delta`"
                    .into(),
            );
        }
        p
    }
}

/// A Delta table source.
#[derive(Debug, Clone)]
pub struct DeltaSource {
    config: DeltaSourceConfig,
    project_dir: PathBuf,
}

impl DeltaSource {
    pub fn new(config: DeltaSourceConfig, project_dir: &Path) -> Self {
        DeltaSource {
            config,
            project_dir: project_dir.to_path_buf(),
        }
    }
}

#[async_trait]
impl Source for DeltaSource {
    #[cfg(not(feature = "delta"))]
    async fn register(
        &self,
        _ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        let _ = (&self.config, &self.project_dir);
        Err(SourceError::Other {
            name: name.to_string(),
            reason: "this backflow was built without Delta Lake support; build it with \
                     `cargo build --release --features delta`"
                .into(),
        })
    }

    #[cfg(feature = "delta")]
    async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        use deltalake_core::{DeltaTableBuilder, DeltaTableError};
        let location = crate::storage::Location::resolve(&self.config.path, &self.project_dir)
            .map_err(|source| SourceError::Storage {
                name: name.to_string(),
                source,
            })?;
        let other = |reason: String| SourceError::Other {
            name: name.to_string(),
            reason,
        };
        let store = location
            .register(ctx)
            .map_err(|source| SourceError::Storage {
                name: name.to_string(),
                source,
            })?;
        let mut url = location.url.clone();
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        register_log_stores();
        let mut builder = DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| other(format!("{}: {e}", location.display)))?
            .with_storage_backend(store, url);
        if let Some(v) = self.config.version {
            builder = builder.with_version(v);
        }
        if let Some(t) = &self.config.timestamp {
            let at = chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| other(format!("timestamp = \"{t}\": {e}")))?;
            builder = builder.with_timestamp(at.with_timezone(&chrono::Utc));
        }
        let table = match builder.load().await {
            Ok(t) => t,
            Err(DeltaTableError::NotATable(_)) => {
                return Err(other(format!(
                    "{} is not a Delta table (it has no _delta_log/ with a commit); point \
                     `path` at the table's folder",
                    location.display
                )));
            }
            Err(e) => {
                let pinned = match (&self.config.version, &self.config.timestamp) {
                    (Some(v), _) => format!(" at version {v}"),
                    (_, Some(t)) => format!(" as of {t}"),
                    _ => String::new(),
                };
                return Err(other(format!(
                    "cannot read Delta table {}{pinned}: {e}",
                    location.display
                )));
            }
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| other(format!("{}: {e}", location.display)))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| other(format!("{}: {e}", location.display)))?;
        ctx.register_table(name, provider)
            .map_err(|e| other(e.to_string()))?;
        tracing::info!(
            source = name,
            table = location.display.as_str(),
            version = table.version(),
            "Delta table opened"
        );
        let change_feed = match table.version() {
            Some(version) if self.config.change_feed => Some(Arc::new(feed::DeltaFeed {
                table,
                version,
                display: location.display.clone(),
            })
                as Arc<dyn super::change_feed::ChangeFeed>),
            _ => None,
        };
        Ok(super::Registration {
            change_feed,
            ..Default::default()
        })
    }
}

#[cfg(feature = "delta")]
mod feed {
    use async_trait::async_trait;
    use datafusion::prelude::{DataFrame, SessionContext};
    use deltalake_core::{DeltaTable, DeltaTableError};

    use crate::sources::change_feed::ChangeFeed;

    /// A Delta table's Change Data Feed, read through deltalake's CDF table provider.
    pub(super) struct DeltaFeed {
        pub table: DeltaTable,
        pub version: u64,
        pub display: String,
    }

    impl std::fmt::Debug for DeltaFeed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DeltaFeed")
                .field("table", &self.display)
                .field("version", &self.version)
                .finish()
        }
    }

    /// Whether a table's properties turn its Change Data Feed on.
    fn enabled(table: &DeltaTable) -> bool {
        table.snapshot().is_ok_and(|s| {
            s.metadata()
                .configuration()
                .get("delta.enableChangeDataFeed")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        })
    }

    #[async_trait]
    impl ChangeFeed for DeltaFeed {
        fn version(&self) -> u64 {
            self.version
        }

        fn table_id(&self) -> String {
            self.table
                .snapshot()
                .map(|s| s.metadata().id().to_string())
                .unwrap_or_default()
        }

        async fn changes(&self, ctx: &SessionContext, since: u64) -> Result<DataFrame, String> {
            use deltalake_core::delta_datafusion::DeltaCdfTableProvider;
            if !enabled(&self.table) {
                return Err(format!(
                    "Delta table {} does not record its changes (its property \
                     delta.enableChangeDataFeed is not true)",
                    self.display
                ));
            }
            let builder = self
                .table
                .clone()
                .scan_cdf()
                .with_starting_version(since + 1)
                .with_ending_version(self.version);
            // The versions' log entries are read now, so that a range the feed does not cover
            // is found before the run reads anything.
            let why = |e: DeltaTableError| match e {
                DeltaTableError::ChangeDataNotEnabled { version }
                | DeltaTableError::ChangeDataNotRecorded { version, .. } => format!(
                    "Delta table {} did not record its changes at version {version}",
                    self.display
                ),
                DeltaTableError::InvalidVersion(v) => format!(
                    "the log of Delta table {} no longer has version {v} (log retention \
                     removed it)",
                    self.display
                ),
                e => format!("Delta table {}: {e}", self.display),
            };
            builder.build(&ctx.state(), None).await.map_err(why)?;
            let provider = DeltaCdfTableProvider::try_new(builder).map_err(why)?;
            ctx.read_table(std::sync::Arc::new(provider))
                .map_err(|e| format!("Delta table {}: {e}", self.display))
        }
    }
}

/// deltalake knows log stores for `file://` and `memory://` only (its S3, GCS and Azure crates
/// add theirs, with stores built from their own options). backflow hands it the object store it
/// built itself (credentials from the environment), so the plain log store serves every scheme:
/// it reads a table's log through that store, which is all a source does.
#[cfg(feature = "delta")]
pub(crate) fn register_log_stores() {
    use std::sync::{Arc, Once};

    use deltalake_core::DeltaResult;
    use deltalake_core::logstore::{
        LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
        logstore_factories,
    };

    struct Plain;
    impl LogStoreFactory for Plain {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &url::Url,
            options: &StorageConfig,
        ) -> DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let registry = logstore_factories();
        for scheme in [
            "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https",
        ] {
            if let Ok(url) = url::Url::parse(&format!("{scheme}://")) {
                registry.entry(url).or_insert_with(|| Arc::new(Plain));
            }
        }
    });
}
