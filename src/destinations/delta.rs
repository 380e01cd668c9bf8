//! Delta Lake tables as destinations (the `delta` cargo feature): an object is a Delta table,
//! the folder `<path>/<object>` (local or in an object store), created by the first run that
//! writes it.
//!
//! A run stages its changes locally (`staging`) and `finish` makes them one Delta commit, so
//! readers of the table never see half a run:
//! - upsert, update-only, create-only, mirror and delete syncs: one MERGE on the key (updates
//!   and upserts replace the matched row, deletes remove it, creates and upserts insert the
//!   others; an update whose key the table lacks is rejected, a create that finds its key is
//!   skipped);
//! - append-only syncs: an append.
//!
//! Each commit carries an application transaction (`txn`: app id `backflow:<sync>`, version
//! the state version the run commits) and, in its commit info, the run id and the sync. A run
//! that finds the table already has a commit for the state version it is about to commit knows
//! an earlier attempt committed to Delta and died before backflow's own commit: a MERGE applies
//! the same values again, which changes nothing, and an append leaves out the rows that commit
//! added (an `EXCEPT ALL` with its files), so nothing is applied twice.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use super::{Destination, DestinationError, ObjectWriter, WriteTarget};

/// `type = "delta"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaDestinationConfig {
    /// The folder (relative to the project, absolute, or an object-store URL) whose
    /// sub-folders are the tables: `<path>/<object>`.
    pub path: String,
}

impl DeltaDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = super::path_problems(&self.path);
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

pub(super) fn validate_object(object: &str) -> Vec<String> {
    super::check_relative_name(object)
}

#[derive(Debug, Clone)]
pub struct DeltaDestination {
    name: String,
    config: DeltaDestinationConfig,
    project_dir: PathBuf,
}

impl DeltaDestination {
    pub fn new(name: &str, config: &DeltaDestinationConfig, project_dir: &Path) -> Self {
        DeltaDestination {
            name: name.to_string(),
            config: config.clone(),
            project_dir: project_dir.to_path_buf(),
        }
    }

    /// The table's folder: `<path>/<object>/`.
    fn location(&self, object: &str) -> Result<crate::storage::Location, DestinationError> {
        let base = self.config.path.trim_end_matches('/');
        let mut location =
            crate::storage::Location::resolve(&format!("{base}/{object}"), &self.project_dir)
                .map_err(|source| DestinationError::Storage {
                    destination: self.name.clone(),
                    source,
                })?;
        if !location.url.path().ends_with('/') {
            let path = format!("{}/", location.url.path());
            location.url.set_path(&path);
        }
        Ok(location)
    }

    /// A local table folder must be one a run can create files in (not under a file).
    fn writable(&self, target: &WriteTarget) -> Result<crate::storage::Location, DestinationError> {
        let location = self.location(&target.object)?;
        if let Some(dir) = &location.local
            && let Err(reason) = super::local_writable(&dir.join("_delta_log"))
        {
            return Err(DestinationError::Unwritable {
                destination: self.name.clone(),
                location: location.display.clone(),
                reason,
            });
        }
        Ok(location)
    }

    /// What a Delta destination cannot do for `target`, found before any write.
    fn refuse(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        if target.partial_updates {
            return Err(DestinationError::incompatible(
                &self.name,
                target,
                "send = \"changed\" is not supported by a Delta destination (a MERGE writes \
                 whole rows); remove it from the sync",
            ));
        }
        if !cfg!(feature = "delta") {
            return Err(DestinationError::incompatible(
                &self.name,
                target,
                "this backflow was built without Delta Lake support; build it with \
                 `cargo build --release --features delta`",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Destination for DeltaDestination {
    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        self.refuse(target)?;
        self.writable(target)?;
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        match self.location(object) {
            Ok(l) => format!("delta:{}", l.url),
            Err(_) => format!("delta:{}/{object}", self.config.path),
        }
    }

    /// The table's keys: what a sync without state compares with, and what `state adopt` takes
    /// over.
    #[cfg(feature = "delta")]
    fn keys(&self, target: &WriteTarget) -> Option<super::KeyStream> {
        let (this, target) = (self.clone(), target.clone());
        Some(super::key_stream(move |tx| async move {
            let location = this.location(&target.object)?;
            let object = writer::DeltaObject {
                destination: this.name.clone(),
                target,
                location,
            };
            object.send_keys(tx).await
        }))
    }

    #[cfg(not(feature = "delta"))]
    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        self.refuse(target)?;
        Err(DestinationError::incompatible(
            &self.name,
            target,
            "no Delta support",
        ))
    }

    #[cfg(feature = "delta")]
    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        self.refuse(target)?;
        let location = self.writable(target)?;
        let staging =
            super::staging::Staging::open(target).map_err(|reason| DestinationError::Write {
                destination: self.name.clone(),
                object: target.object.clone(),
                reason,
            })?;
        Ok(Box::new(writer::DeltaWriter {
            object: writer::DeltaObject {
                destination: self.name.clone(),
                target: target.clone(),
                location,
            },
            staging,
        }))
    }
}

#[cfg(feature = "delta")]
mod writer {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use arrow::datatypes::DataType;
    use async_trait::async_trait;
    use datafusion::common::{Column, JoinType};
    use datafusion::logical_expr::cast;
    use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, ident, lit};
    use deltalake_core::kernel::Action;
    use deltalake_core::kernel::transaction::CommitProperties;
    use deltalake_core::logstore::get_actions;
    use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};

    use crate::destinations::staging::{OP, Staged, Staging};
    use crate::destinations::{
        BatchOutcome, DestinationError, FinishOutcome, LateRejection, ObjectWriter, WriteOp,
        WriteTarget,
    };
    use crate::storage::Location;

    /// Stages a run's changes, then commits them in `finish`.
    pub(super) struct DeltaWriter {
        pub object: DeltaObject,
        pub staging: Staging,
    }

    /// The table a run writes.
    pub(super) struct DeltaObject {
        pub destination: String,
        pub target: WriteTarget,
        pub location: Location,
    }

    /// How far back the log is searched for an earlier attempt's commit.
    const ATTEMPT_SEARCH: u64 = 1000;

    impl DeltaObject {
        fn fail(&self, reason: impl ToString) -> DestinationError {
            DestinationError::Write {
                destination: self.destination.clone(),
                object: self.target.object.clone(),
                reason: format!(
                    "Delta table {}: {}",
                    self.location.display,
                    reason.to_string()
                ),
            }
        }

        /// The application id of the sync's commits.
        fn app_id(&self) -> String {
            format!("backflow:{}", self.target.sync)
        }

        /// The table at the location, through the object store registered in `ctx`, not read
        /// yet (a new table is written through it).
        fn unloaded(&self, ctx: &SessionContext) -> Result<DeltaTable, DestinationError> {
            let store =
                self.location
                    .register(ctx)
                    .map_err(|source| DestinationError::Storage {
                        destination: self.destination.clone(),
                        source,
                    })?;
            crate::sources::register_delta_log_stores();
            let url = self.location.url.clone();
            DeltaTableBuilder::from_url(url.clone())
                .and_then(|b| b.with_storage_backend(store, url).build())
                .map_err(|e| self.fail(e))
        }

        /// The table, or None when there is none yet.
        async fn table(
            &self,
            ctx: &SessionContext,
        ) -> Result<Option<DeltaTable>, DestinationError> {
            // (A local folder that does not exist yet holds no table.)
            if let Some(dir) = &self.location.local
                && !dir.exists()
            {
                return Ok(None);
            }
            let mut table = self.unloaded(ctx)?;
            match table.load().await {
                Ok(()) => Ok(Some(table)),
                Err(DeltaTableError::NotATable(_)) => Ok(None),
                Err(e) => Err(self.fail(e)),
            }
        }

        /// The keys of the table's records, as text, to `tx` (none when there is no table).
        pub(super) async fn send_keys(
            &self,
            tx: crate::destinations::KeySender,
        ) -> Result<(), DestinationError> {
            let ctx = deltalake_core::delta_datafusion::DeltaSessionContext::with_runtime_env(
                self.target.runtime.clone(),
            )
            .into_inner();
            let Some(table) = self.table(&ctx).await? else {
                return Ok(());
            };
            let provider = table.table_provider().await.map_err(|e| self.fail(e))?;
            let records = ctx.read_table(provider).map_err(|e| self.fail(e))?;
            crate::destinations::send_keys(records, &self.target.key, &tx, |e| self.fail(e)).await
        }

        /// The commit properties of this run's commit.
        fn commit_properties(&self) -> CommitProperties {
            let version = i64::try_from(self.target.version).unwrap_or(i64::MAX);
            let metadata: HashMap<String, serde_json::Value> = [
                ("backflow.sync".to_string(), self.target.sync.clone().into()),
                (
                    "backflow.run_id".to_string(),
                    self.target.run_id.clone().into(),
                ),
                ("backflow.state_version".to_string(), version.into()),
            ]
            .into_iter()
            .collect();
            CommitProperties::default()
                .with_application_transaction(deltalake_core::kernel::Transaction::new(
                    self.app_id(),
                    version,
                ))
                .with_metadata(metadata)
        }

        /// The staged rows of the operations `ops`, with the sync's fields only.
        async fn staged(
            &self,
            ctx: &SessionContext,
            ops: &[WriteOp],
            keep_op: bool,
        ) -> Result<DataFrame, DestinationError> {
            let codes = ops.iter().map(|o| lit(o.code())).collect();
            let mut columns: Vec<_> = self
                .target
                .schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    // Delta tables hold timestamps in UTC: the same instants, labelled so.
                    DataType::Timestamp(unit, Some(tz)) if !is_utc(tz) => cast(
                        ident(f.name()),
                        DataType::Timestamp(*unit, Some("UTC".into())),
                    )
                    .alias(f.name()),
                    _ => ident(f.name()),
                })
                .collect();
            if keep_op {
                columns.push(ident(OP));
            }
            ctx.table("bf_staged")
                .await
                .and_then(|s| s.filter(ident(OP).in_list(codes, false)))
                .and_then(|s| s.select(columns))
                .map_err(|e| self.fail(e))
        }

        /// Refuse, before anything is written, a field whose values the table's column of the
        /// same name would hold as another type (text into a boolean column, a decimal into
        /// one with fewer decimal places): deltalake would cast them.
        fn check_types(&self, table: &DeltaTable) -> Result<(), DestinationError> {
            let schema = table
                .snapshot()
                .map_err(|e| self.fail(e))?
                .snapshot()
                .arrow_schema();
            let mut problems = Vec::new();
            for field in self.target.schema.fields() {
                let Ok(column) = schema.field_with_name(field.name()) else {
                    continue;
                };
                let (ours, theirs) = (kind(field.data_type()), kind(column.data_type()));
                if ours != theirs {
                    problems.push(format!(
                        "field \"{}\" is {} but the table's column is {}",
                        field.name(),
                        field.data_type(),
                        column.data_type()
                    ));
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            Err(DestinationError::incompatible(
                &self.destination,
                &self.target,
                format!(
                    "{}; cast the field in a model to the column's type, or write to a new table",
                    problems.join("; ")
                ),
            ))
        }

        /// The keys of the staged rows of `op` that the table has (`Semi`) or lacks (`Anti`).
        async fn staged_vs_table(
            &self,
            ctx: &SessionContext,
            table: &DeltaTable,
            op: WriteOp,
            join: JoinType,
        ) -> Result<DataFrame, DestinationError> {
            let key = &self.target.key;
            let theirs: Vec<String> = (0..key.len()).map(|i| format!("__bf_t_{i}")).collect();
            let provider = table.table_provider().await.map_err(|e| self.fail(e))?;
            let existing = ctx
                .read_table(provider)
                .and_then(|t| {
                    t.select(
                        key.iter()
                            .zip(&theirs)
                            .map(|(k, t)| ident(k).alias(t))
                            .collect::<Vec<_>>(),
                    )
                })
                .map_err(|e| self.fail(e))?;
            let left: Vec<&str> = key.iter().map(String::as_str).collect();
            let right: Vec<&str> = theirs.iter().map(String::as_str).collect();
            self.staged(ctx, &[op], false)
                .await?
                .select(key.iter().map(ident).collect::<Vec<_>>())
                .and_then(|s| s.join(existing, join, &left, &right, None))
                .map_err(|e| self.fail(e))
        }

        /// Updates whose key the table lacks: rejected (update-only never creates).
        async fn missing_updates(
            &self,
            ctx: &SessionContext,
            table: Option<&DeltaTable>,
            staged: &Staged,
        ) -> Result<Vec<LateRejection>, DestinationError> {
            if staged.count(WriteOp::Update) == 0 {
                return Ok(Vec::new());
            }
            let missing = match table {
                Some(t) => {
                    self.staged_vs_table(ctx, t, WriteOp::Update, JoinType::LeftAnti)
                        .await?
                }
                None => self.staged(ctx, &[WriteOp::Update], false).await?,
            };
            crate::destinations::late_rejections(
                missing,
                &self.target.key,
                "no record with this key in the Delta table (update-only never creates records)",
                |e| self.fail(e),
            )
            .await
        }

        /// The rows an earlier attempt at this state version added to the table, when one
        /// committed (its `txn` has this version): what an append must not add again.
        async fn earlier_attempt(
            &self,
            ctx: &SessionContext,
            table: &DeltaTable,
        ) -> Result<Option<DataFrame>, DestinationError> {
            let snapshot = table.snapshot().map_err(|e| self.fail(e))?;
            let log = table.log_store();
            let committed = snapshot
                .transaction_version(log.as_ref(), self.app_id())
                .await
                .map_err(|e| self.fail(e))?;
            let version = i64::try_from(self.target.version).unwrap_or(i64::MAX);
            if committed.is_none_or(|c| c < version) {
                return Ok(None);
            }
            let newest = table.version().unwrap_or(0);
            let mut files = Vec::new();
            let mut found = false;
            for v in (newest.saturating_sub(ATTEMPT_SEARCH)..=newest).rev() {
                let Some(bytes) = log.read_commit_entry(v).await.map_err(|e| self.fail(e))? else {
                    continue;
                };
                let actions = get_actions(v, &bytes).map_err(|e| self.fail(e))?;
                let ours = actions.iter().any(|a| {
                    matches!(a, Action::Txn(t) if t.app_id == self.app_id() && t.version == version)
                });
                if ours {
                    found = true;
                    for a in actions {
                        if let Action::Add(add) = a {
                            files.push(add.path);
                        }
                    }
                    break;
                }
            }
            if !found {
                return Err(self.fail(format!(
                    "the table records a commit of state version {version} of sync \"{}\", \
                     but its log entry is not among the last {ATTEMPT_SEARCH} versions; the \
                     rows it appended cannot be told apart, so nothing was appended again",
                    self.target.sync
                )));
            }
            tracing::warn!(
                sync = self.target.sync.as_str(),
                version,
                "an earlier attempt of this run committed to the Delta table before the state \
                 was committed: the rows it appended are not appended again"
            );
            if files.is_empty() {
                return Ok(None);
            }
            let urls: Vec<String> = files
                .iter()
                .filter_map(|p| self.location.url.join(p).ok())
                .map(|u| u.to_string())
                .collect();
            let columns: Vec<_> = self
                .target
                .schema
                .fields()
                .iter()
                .map(|f| ident(f.name()))
                .collect();
            let added = ctx
                .read_parquet(urls, ParquetReadOptions::default())
                .await
                .and_then(|d| d.select(columns))
                .map_err(|e| self.fail(e))?;
            Ok(Some(added))
        }

        /// Append the staged rows (less an earlier attempt's) as one commit.
        async fn append(
            &self,
            ctx: &SessionContext,
            table: DeltaTable,
            exists: bool,
        ) -> Result<(), DestinationError> {
            let mut rows = self.staged(ctx, &[WriteOp::Append], false).await?;
            if exists && let Some(added) = self.earlier_attempt(ctx, &table).await? {
                rows = rows.except(added).map_err(|e| self.fail(e))?;
            }
            let write = table
                .write(Vec::<RecordBatch>::new())
                .with_input_plan(rows.logical_plan().clone())
                .with_session_state(Arc::new(ctx.state()))
                .with_schema_mode(deltalake_core::operations::write::SchemaMode::Merge)
                .with_commit_properties(self.commit_properties());
            write.await.map_err(|e| self.fail(e))?;
            Ok(())
        }

        /// Apply the staged upserts, updates, creates and deletes as one MERGE.
        async fn merge(
            &self,
            ctx: &SessionContext,
            table: DeltaTable,
        ) -> Result<(), DestinationError> {
            let source = self
                .staged(
                    ctx,
                    &[
                        WriteOp::Upsert,
                        WriteOp::Update,
                        WriteOp::Create,
                        WriteOp::Delete,
                    ],
                    true,
                )
                .await?;
            let on = self
                .target
                .key
                .iter()
                .map(|k| column("t", k).eq(column("s", k)))
                .reduce(|a, b| a.and(b))
                .unwrap_or(lit(false));
            let fields: Vec<String> = self
                .target
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let op = |ops: &[WriteOp]| {
                column("s", OP).in_list(ops.iter().map(|o| lit(o.code())).collect(), false)
            };
            let merge = table
                .merge(source, on)
                .with_source_alias("s")
                .with_target_alias("t")
                .with_session_state(Arc::new(ctx.state()))
                .with_merge_schema(true)
                .with_commit_properties(self.commit_properties())
                .when_matched_delete(|d| d.predicate(op(&[WriteOp::Delete])))
                .and_then(|m| {
                    m.when_matched_update(|u| {
                        fields.iter().fold(
                            u.predicate(op(&[WriteOp::Upsert, WriteOp::Update])),
                            |u, f| u.update(Column::new_unqualified(f), column("s", f)),
                        )
                    })
                })
                .and_then(|m| {
                    m.when_not_matched_insert(|i| {
                        fields.iter().fold(
                            i.predicate(op(&[WriteOp::Upsert, WriteOp::Create])),
                            |i, f| i.set(Column::new_unqualified(f), column("s", f)),
                        )
                    })
                })
                .map_err(|e| self.fail(e))?;
            merge.await.map_err(|e| self.fail(e))?;
            Ok(())
        }
    }

    /// Whether a time zone names UTC.
    fn is_utc(tz: &str) -> bool {
        matches!(tz, "UTC" | "utc" | "+00:00" | "Z" | "Etc/UTC")
    }

    /// A type as the table holds it, for comparing a field with a column: timestamps by
    /// whether they have a time zone (Delta stores microseconds; any zone becomes UTC), the
    /// rest by family (`hash::type_family`: integers, strings, a decimal's scale, ...).
    fn kind(t: &DataType) -> String {
        match t {
            DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
            DataType::Timestamp(_, None) => "timestamp".into(),
            t => crate::hash::type_family(t),
        }
    }

    /// Column `name` of relation `relation`, as it is (no parsing, no case folding).
    fn column(relation: &str, name: &str) -> Expr {
        Expr::Column(Column::new(Some(relation), name))
    }

    #[async_trait]
    impl ObjectWriter for DeltaWriter {
        async fn write(
            &mut self,
            op: WriteOp,
            batch: RecordBatch,
        ) -> Result<BatchOutcome, DestinationError> {
            if let Err(reason) = self.staging.push(op, &batch) {
                return Err(self.object.fail(reason));
            }
            Ok(BatchOutcome::default())
        }

        async fn finish(self: Box<Self>) -> Result<FinishOutcome, DestinationError> {
            let DeltaWriter { object, staging } = *self;
            let staged = staging.close().map_err(|reason| object.fail(reason))?;
            if staged.rows == 0 {
                return Ok(FinishOutcome::default());
            }
            // deltalake's planner (its writes and merges are its own plan nodes), on the
            // engine's runtime: its memory pool, spill folder and object stores.
            let ctx = deltalake_core::delta_datafusion::DeltaSessionContext::with_runtime_env(
                object.target.runtime.clone(),
            )
            .into_inner();
            ctx.register_parquet(
                "bf_staged",
                &staged.path.display().to_string(),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(|e| object.fail(e))?;
            let existing = object.table(&ctx).await?;
            if let Some(table) = &existing {
                object.check_types(table)?;
            }
            let rejected = object
                .missing_updates(&ctx, existing.as_ref(), &staged)
                .await?;
            let skipped = match &existing {
                Some(t) if staged.count(WriteOp::Create) > 0 => object
                    .staged_vs_table(&ctx, t, WriteOp::Create, JoinType::LeftSemi)
                    .await?
                    .count()
                    .await
                    .map_err(|e| object.fail(e))?
                    as u64,
                _ => 0,
            };
            let appends = staged.count(WriteOp::Append);
            match existing {
                Some(table) if appends == 0 => object.merge(&ctx, table).await?,
                Some(table) => object.append(&ctx, table, true).await?,
                // No table, and nothing that inserts (updates have nothing to update, deletes
                // nothing to delete): no table is made.
                None if staged.count(WriteOp::Upsert) + staged.count(WriteOp::Create) + appends
                    == 0 => {}
                None => {
                    // A new table: the first commit writes the rows that insert.
                    let table = object.unloaded(&ctx)?;
                    let rows = object
                        .staged(
                            &ctx,
                            &[WriteOp::Upsert, WriteOp::Create, WriteOp::Append],
                            false,
                        )
                        .await?;
                    let write = table
                        .write(Vec::<RecordBatch>::new())
                        .with_input_plan(rows.logical_plan().clone())
                        .with_session_state(Arc::new(ctx.state()))
                        .with_commit_properties(object.commit_properties());
                    write.await.map_err(|e| object.fail(e))?;
                }
            }
            Ok(FinishOutcome {
                rejected,
                skipped,
                retries: 0,
            })
        }
    }
}
