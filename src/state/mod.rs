//! The state store: each sync's last-synced snapshot and watermark, committed atomically.
//!
//! ```text
//! <state>/
//!   syncs/<sync>/_manifests/00000000000000000007.json   one per committed version, never rewritten
//!   syncs/<sync>/data/v00000000000000000007-<uuid>/
//!       snapshot.parquet    (__bf_key, __bf_hash): every key in sync, with its row hash
//!       sent.parquet        (__bf_key, __bf_hash, __bf_keep): what this run's destination accepted
//!                           (both with __bf_fields, a hash per field, for send = "changed")
//!   syncs/<sync>/pending/<run>-<n>.parquet          __bf_key: keys a run is about to write,
//!                                                  written before the destination write,
//!                                                  removed once a commit covers them
//!   history/<sync>/runs/<start>-<run>.parquet      one row per run (see history.rs)
//!   history/<sync>/records/<start>-<run>.parquet   invalid and rejected samples of that run
//!   locks/<sync>.lock                              held while a run of <sync> is going (local state)
//! ```
//!
//! The commit protocol:
//!
//! ```text
//!  run ──► write data/v{N+1}-<uuid>/*.parquet ──► put _manifests/{N+1}.json (create-if-absent) ──► vacuum
//!           (new files, unique names;             (the one atomic step: it either exists,           (drop versions
//!            a crash leaves orphans only)          complete, or it does not; a second writer         older than
//!                                                  of N+1 gets AlreadyExists)                        N-1)
//! ```
//!
//! Readers load the newest manifest and exactly the files it names; they never scan `data/`.
//! A crash before the manifest put leaves version N as it was, and the next run redoes the work.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

mod error;
pub mod lease;
mod manifest;

pub use error::{Result, StateError};
pub use manifest::*;

use crate::storage::Location;

/// Committed versions kept per sync (older ones and their files are removed after a commit).
const KEEP_VERSIONS: u64 = 2;

/// A chain of committed versions under one folder of the state: `syncs/<sync>` or
/// `hub/<entity>`, with `_manifests/` and `data/` inside.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The folder, relative to the state root.
    root: String,
    /// What the chain belongs to, for messages: `sync "people"`, `entity "account"`.
    owner: String,
    /// Its run lock: `locks/<lock>.lock`.
    lock: String,
}

impl Chain {
    pub fn sync(name: &str) -> Chain {
        Chain {
            root: format!("syncs/{name}"),
            owner: format!("sync \"{name}\""),
            lock: name.to_string(),
        }
    }
    pub fn entity(name: &str) -> Chain {
        Chain {
            root: format!("hub/{name}"),
            owner: format!("entity \"{name}\""),
            // Sync names never hold a dot: no clash.
            lock: format!("hub.{name}"),
        }
    }
    /// The chain's folder, relative to the state root.
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// Where state lives.
#[derive(Debug, Clone)]
pub struct StateStore {
    store: Arc<dyn ObjectStore>,
    location: Location,
    root: ObjectPath,
    lease_ttl: std::time::Duration,
    /// Whether the store was seen to honour create-if-absent writes (checked once, before the
    /// first lease of an object-store state).
    conditional: Arc<tokio::sync::OnceCell<()>>,
}

/// Held while a sync (or an entity) runs: an OS file lock on local state, a lease in an object
/// store (see `lease.rs`).
#[derive(Debug)]
pub struct SyncLock {
    _file: Option<std::fs::File>,
    lease: Option<crate::state::lease::Lease>,
}

impl SyncLock {
    /// What writes check first: whether the lease is still held (always, for a file lock).
    pub fn fence(&self) -> Option<crate::state::lease::Fence> {
        self.lease.as_ref().map(|l| l.fence())
    }

    /// Right before a commit: whether the lease is still this run's.
    pub async fn confirm(&self) -> Result<()> {
        match &self.lease {
            Some(l) => l.confirm().await,
            None => Ok(()),
        }
    }

    /// Give the lock up now (a file lock goes with the process anyway).
    pub async fn release(self) {
        if let Some(l) = self.lease {
            l.release().await;
        }
    }
}

impl StateStore {
    pub fn open(location: Location) -> Result<StateStore> {
        let store = location.store()?;
        Self::with_store(location, store)
    }

    /// A state store at `location` that reads and writes through `store` (a wrapper that
    /// injects faults, in tests; a store configured by an embedding application).
    pub fn with_store(location: Location, store: Arc<dyn ObjectStore>) -> Result<StateStore> {
        let root = location.object_path()?;
        Ok(StateStore {
            store,
            location,
            root,
            lease_ttl: crate::state::lease::DEFAULT_TTL,
            conditional: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// How long a run's lease lasts without renewal (object-store state).
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> StateStore {
        self.lease_ttl = ttl;
        self
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Make state files readable by DataFusion in `ctx`.
    pub fn register(&self, ctx: &datafusion::prelude::SessionContext) -> Result<()> {
        if self.location.local.is_none() {
            ctx.register_object_store(&self.location.store_url(), self.store.clone());
        }
        Ok(())
    }

    /// The object path of `rel` (a path relative to the state root).
    pub fn path(&self, rel: &str) -> ObjectPath {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// How messages show an object path: the absolute local path (leading `/` included, so that
    /// it can be pasted into a shell), or the object's URL.
    pub fn shown(&self, path: &ObjectPath) -> String {
        match &self.location.local {
            Some(_) => format!("/{path}"),
            None => format!("{}{path}", self.location.store_url()),
        }
    }

    /// A URL (or absolute local path) DataFusion can read `rel` from.
    pub fn table_url(&self, rel: &str) -> String {
        match &self.location.local {
            Some(dir) => {
                let mut p = dir.clone();
                for part in rel.split('/').filter(|s| !s.is_empty()) {
                    p.push(part);
                }
                p.display().to_string()
            }
            None => {
                let base = self.location.url.as_str().trim_end_matches('/');
                format!("{base}/{rel}")
            }
        }
    }

    fn io(
        &self,
        op: &'static str,
        path: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> StateError {
        let location = self.location.display.clone();
        let path = self.shown(path);
        move |source| StateError::Io {
            location,
            op,
            path,
            source: Box::new(source),
        }
    }

    /// Take a chain's run lock. On a local state directory this is an OS file lock, released
    /// when the process ends however it ends; object-store state relies on the conditional
    /// manifest put alone.
    pub fn lock_chain(&self, chain: &Chain) -> Result<SyncLock> {
        let Some(dir) = &self.location.local else {
            return Ok(SyncLock {
                _file: None,
                lease: None,
            });
        };
        let dir = dir.join("locks");
        let path = dir.join(format!("{}.lock", chain.lock));
        let lock_err = |source| StateError::Lock {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(lock_err)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => Ok(SyncLock {
                _file: Some(file),
                lease: None,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
                owner: chain.owner.clone(),
                path: path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
        }
    }

    /// Take a chain's run lock for run `run`: the file lock of local state, a lease (renewed
    /// while the run goes) in an object store.
    pub async fn acquire(&self, chain: &Chain, run: &str) -> Result<SyncLock> {
        if self.location.local.is_some() {
            return self.lock_chain(chain);
        }
        self.conditional
            .get_or_try_init(|| self.check_conditional())
            .await?;
        let path = self.path(&format!("locks/{}.lease", chain.lock));
        let lease = crate::state::lease::Lease::acquire(
            self.store.clone(),
            path,
            &chain.owner,
            run,
            self.lease_ttl,
        )
        .await?;
        Ok(SyncLock {
            _file: None,
            lease: Some(lease),
        })
    }

    /// Whether the object store refuses a second create-if-absent write of one object. Leases
    /// and commits rest on it: a store that ignores the condition (an S3-compatible server
    /// without `If-None-Match`) would let two runs both commit the same version, so state is
    /// not kept there. One probe object, written twice and removed.
    async fn check_conditional(&self) -> Result<()> {
        let path = self.path(&format!(
            "locks/.conditional-write-check-{}",
            uuid::Uuid::new_v4()
        ));
        let put = || {
            self.store.put_opts(
                &path,
                PutPayload::from_static(b"probe"),
                PutMode::Create.into(),
            )
        };
        let refused = |reason: String| StateError::NoConditionalWrites {
            location: self.location.display.clone(),
            reason,
        };
        match put().await {
            Ok(_) => {}
            Err(object_store::Error::NotImplemented { .. }) => {
                return Err(refused(
                    "its client has conditional writes turned off (AWS_CONDITIONAL_PUT=disabled, \
                     or a store type without them)"
                        .into(),
                ));
            }
            Err(e) => return Err(self.io("check conditional writes on", &path)(e)),
        }
        let second = put().await;
        if let Err(e) = self.store.delete(&path).await {
            tracing::debug!(error = %e, "could not remove the conditional-write probe");
        }
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Ok(_) => Err(refused(
                "the server accepted a second create-if-absent write of the same object: it \
                 ignores If-None-Match"
                    .into(),
            )),
            Err(e) => Err(self.io("check conditional writes on", &path)(e)),
        }
    }

    /// Take the sync's run lock (see [`StateStore::lock_chain`]).
    pub fn lock(&self, sync: &str) -> Result<SyncLock> {
        self.lock_chain(&Chain::sync(sync))
    }

    fn manifests_dir(&self, chain: &Chain) -> ObjectPath {
        self.path(&format!("{}/_manifests", chain.root))
    }

    /// All committed versions of a chain, ascending.
    async fn versions(&self, chain: &Chain) -> Result<Vec<u64>> {
        let dir = self.manifests_dir(chain);
        let metas: Vec<_> = match self.store.list(Some(&dir)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.io("list", &dir)(e)),
        };
        let mut versions: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.strip_suffix(".json"))
            .filter_map(|v| v.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    fn manifest_rel(chain: &Chain, version: u64) -> String {
        format!("{}/_manifests/{version:020}.json", chain.root)
    }

    async fn read_manifest(&self, chain: &Chain, version: u64) -> Result<bytes::Bytes> {
        let path = self.path(&Self::manifest_rel(chain, version));
        self.store
            .get(&path)
            .await
            .map_err(self.io("read", &path))?
            .bytes()
            .await
            .map_err(self.io("read", &path))
    }

    /// The newest committed version number of a sync (readable or not): the next commit is
    /// this plus one.
    pub async fn newest_version(&self, sync: &str) -> Result<u64> {
        self.newest_version_in(&Chain::sync(sync)).await
    }

    /// The newest committed version number of a chain (readable or not).
    pub async fn newest_version_in(&self, chain: &Chain) -> Result<u64> {
        Ok(self.versions(chain).await?.pop().unwrap_or(0))
    }

    /// The newest intact manifest of a sync (see [`StateStore::latest_in`]).
    pub async fn latest(&self, sync: &str) -> Result<Option<Manifest>> {
        self.latest_in(&Chain::sync(sync)).await
    }

    /// The newest committed manifest of a chain that is intact, if any. A manifest that is torn
    /// (unparsable, its checksum wrong) or one of whose files is torn (not the size it
    /// committed) is skipped with a warning and the version before it is used: the runs since
    /// then are re-checked (at-least-once). State written by a newer backflow is refused, and
    /// when versions exist but none is intact the result is an error, never "no state".
    pub async fn latest_in<M: Versioned>(&self, chain: &Chain) -> Result<Option<M>> {
        let versions = self.versions(chain).await?;
        let mut newest_problem: Option<String> = None;
        for &version in versions.iter().rev() {
            match self.intact::<M>(chain, version).await {
                Ok(m) => {
                    if let Some(problem) = &newest_problem {
                        tracing::warn!(
                            owner = chain.owner,
                            version,
                            "using the last intact state version; a newer one is damaged: {problem}"
                        );
                    }
                    return Ok(Some(m));
                }
                Err(e @ StateError::NewerFormat { .. }) => return Err(e),
                Err(StateError::Corrupt { reason, path, .. }) => {
                    newest_problem.get_or_insert(format!("{path}: {reason}"));
                }
                Err(e) => return Err(e),
            }
        }
        match newest_problem {
            None => Ok(None),
            Some(reason) => Err(StateError::Unreadable {
                owner: chain.owner.clone(),
                reason,
                manifests: self.shown(&self.manifests_dir(chain)),
            }),
        }
    }

    /// Version `version`'s manifest, checked: parsable, its checksum right, its files the
    /// size they had.
    async fn intact<M: Versioned>(&self, chain: &Chain, version: u64) -> Result<M> {
        let path = self.path(&Self::manifest_rel(chain, version));
        let bytes = self.read_manifest(chain, version).await?;
        let shown = self.shown(&path);
        let corrupt = |reason: String| StateError::Corrupt {
            owner: chain.owner.clone(),
            path: shown.clone(),
            reason,
        };
        let mut manifest: M = decode(&bytes, version, &chain.owner, &shown)?;
        for (file, expected) in manifest.files_mut() {
            let Some(expected) = *expected else { continue };
            let file = self.path(file);
            match self.store.head(&file).await {
                Ok(meta) if meta.size == expected => {}
                Ok(meta) => {
                    return Err(corrupt(format!(
                        "its file {file} has {} bytes, {expected} were committed",
                        meta.size
                    )));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(corrupt(format!("its file {file} is missing")));
                }
                Err(e) => return Err(self.io("read", &file)(e)),
            }
        }
        Ok(manifest)
    }

    /// Flush a local state file and its folder to disk (no-op for object stores, whose puts
    /// are durable when they return).
    fn fsync(&self, rel: &str) -> Result<()> {
        let Some(root) = self.local_dir() else {
            return Ok(());
        };
        let file = root.join(rel);
        let flush = |p: &std::path::Path| {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|source| StateError::Fsync {
                    path: p.display().to_string(),
                    source,
                })
        };
        flush(&file)?;
        if let Some(dir) = file.parent() {
            flush(dir)?;
        }
        Ok(())
    }

    /// A fresh directory (relative to the root) for the files of a sync's version `version`.
    pub fn new_data_dir(&self, sync: &str, version: u64) -> String {
        self.new_data_dir_in(&Chain::sync(sync), version)
    }

    /// A fresh directory (relative to the root) for the files of a chain's version `version`.
    pub fn new_data_dir_in(&self, chain: &Chain, version: u64) -> String {
        format!(
            "{}/data/v{version:020}-{}",
            chain.root,
            uuid::Uuid::new_v4().simple()
        )
    }

    /// A Parquet writer for a new state file `rel`.
    pub fn parquet_writer(
        &self,
        rel: &str,
        schema: SchemaRef,
    ) -> Result<AsyncArrowWriter<BufWriter>> {
        self.parquet_writer_with(rel, schema, writer_properties())
    }

    /// A Parquet writer for a new state file `rel`, with its own settings.
    pub fn parquet_writer_with(
        &self,
        rel: &str,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<AsyncArrowWriter<BufWriter>> {
        let path = self.path(rel);
        let writer = BufWriter::new(self.store.clone(), path);
        AsyncArrowWriter::try_new(writer, schema, Some(properties)).map_err(|source| {
            StateError::Parquet {
                path: rel.to_string(),
                source,
            }
        })
    }

    /// Read back what was just written to `rel`: it must exist, have `expected` bytes when
    /// given, and a Parquet file must end with its footer. A storage that tears or loses a
    /// write is caught here, before anything relies on the file (the run fails; nothing is
    /// committed).
    pub async fn verify(&self, rel: &str, expected: Option<u64>) -> Result<()> {
        let path = self.path(rel);
        let torn = |reason: String| StateError::Torn {
            location: self.location.display.clone(),
            path: rel.to_string(),
            reason,
        };
        let meta = match self.store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(torn("it is missing".into()));
            }
            Err(e) => return Err(self.io("read", &path)(e)),
        };
        if let Some(n) = expected
            && meta.size != n
        {
            return Err(torn(format!("{} bytes instead of {n}", meta.size)));
        }
        if rel.ends_with(".parquet") {
            if meta.size < 12 {
                return Err(torn(format!("{} bytes: no Parquet footer", meta.size)));
            }
            let tail = self
                .store
                .get_range(&path, meta.size - 8..meta.size)
                .await
                .map_err(self.io("read", &path))?;
            let footer = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
            if &tail[4..8] != b"PAR1" || footer + 12 > meta.size {
                return Err(torn("its Parquet footer is missing or cut".into()));
            }
        }
        Ok(())
    }

    /// Run `plan` and write what it returns to the new state file `rel`, batch by batch, in
    /// `schema` (default: the plan's, with string views as plain strings and every column
    /// nullable). Returns the number of rows written.
    pub async fn write_plan(
        &self,
        plan: datafusion::prelude::DataFrame,
        rel: &str,
        schema: Option<SchemaRef>,
    ) -> Result<u64> {
        use futures::StreamExt;
        let plan_err = |e: datafusion::error::DataFusionError| StateError::Plan {
            path: rel.to_string(),
            source: Box::new(e),
        };
        let parquet_err = |source| StateError::Parquet {
            path: rel.to_string(),
            source,
        };
        let schema = schema.unwrap_or_else(|| storage_schema(plan.schema().as_arrow()));
        // Its columns encoded side by side: a cheap plan leaves encoding as the whole stage.
        let mut writer = crate::parallel_writer::ParallelWriter::try_new(
            BufWriter::new(self.store.clone(), self.path(rel)),
            schema.clone(),
            writer_properties(),
        )
        .map_err(parquet_err)?;
        let task = std::sync::Arc::new(plan.task_ctx());
        let physical = plan.create_physical_plan().await.map_err(plan_err)?;
        let mut stream =
            datafusion::physical_plan::execute_stream(physical.clone(), task).map_err(plan_err)?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(plan_err)?;
            rows += batch.num_rows() as u64;
            // The plan may read strings back as views or widen nullability; the file keeps
            // its schema.
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| plan_err(e.into()))?;
            let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| plan_err(e.into()))?;
            writer.write(&batch).await.map_err(parquet_err)?;
        }
        writer.close().await.map_err(parquet_err)?;
        // Where a state file's time went (`RUST_LOG=backflow::state=trace`).
        if tracing::enabled!(tracing::Level::TRACE) {
            let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                physical.as_ref(),
            )
            .indent(true)
            .to_string();
            tracing::trace!(path = rel, plan = %shown, "state file written");
        }
        self.verify(rel, None).await?;
        Ok(rows)
    }

    /// Commit `manifest` as the sync's next version (see [`StateStore::commit_in`]).
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        self.commit_in(&Chain::sync(&manifest.sync), manifest).await
    }

    /// Commit `manifest` as the chain's next version: the single atomic step of a cycle. The
    /// sizes of the files it names and its own checksum are recorded, and on a local disk the
    /// files are flushed before the manifest is written and the manifest after.
    pub async fn commit_in<M: Versioned>(&self, chain: &Chain, manifest: &M) -> Result<()> {
        let rel = Self::manifest_rel(chain, manifest.version());
        let path = self.path(&rel);
        let mut manifest = manifest.clone();
        for (file, size) in manifest.files_mut() {
            let file_path = self.path(file);
            let meta = self
                .store
                .head(&file_path)
                .await
                .map_err(self.io("read", &file_path))?;
            *size = Some(meta.size);
            self.fsync(file)?;
        }
        let checksum = manifest.content_checksum();
        manifest.set_checksum(Some(checksum));
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StateError::Corrupt {
            owner: chain.owner.clone(),
            path: self.shown(&path),
            reason: format!("cannot encode manifest: {e} (this is a bug in backflow)"),
        })?;
        let len = json.len() as u64;
        match self
            .store
            .put_opts(&path, PutPayload::from(json), PutMode::Create.into())
            .await
        {
            Ok(_) => {
                // Committed. A manifest that is missing or cut when read back was not (the
                // storage lost the write); a read that fails otherwise says nothing of it.
                match self.verify(&rel, Some(len)).await {
                    Ok(()) => {}
                    Err(e @ StateError::Torn { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(owner = chain.owner, error = %e, "the committed manifest could not be read back")
                    }
                }
                self.fsync(&rel)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Err(StateError::Conflict {
                owner: chain.owner.clone(),
                version: manifest.version(),
            }),
            Err(e) => Err(self.io("commit", &path)(e)),
        }
    }

    /// Remove a sync's old versions (see [`StateStore::vacuum_in`]).
    pub async fn vacuum(&self, sync: &str) {
        self.vacuum_in::<Manifest>(&Chain::sync(sync)).await
    }

    /// Remove manifests older than the newest [`KEEP_VERSIONS`] and every data directory that
    /// none of the kept manifests names a file in (including orphans of crashed runs). Best
    /// effort: failures are logged, never fatal, as the committed state is already safe.
    pub async fn vacuum_in<M: Versioned>(&self, chain: &Chain) {
        if let Err(e) = self.try_vacuum::<M>(chain).await {
            tracing::warn!(owner = chain.owner, error = %e, "could not remove old state versions");
        }
    }

    async fn try_vacuum<M: Versioned>(&self, chain: &Chain) -> Result<()> {
        let versions = self.versions(chain).await?;
        let Some(&newest) = versions.last() else {
            return Ok(());
        };
        let oldest_kept = newest.saturating_sub(KEEP_VERSIONS - 1);
        let mut keep_dirs = Vec::new();
        for v in versions.iter().filter(|v| **v >= oldest_kept) {
            let bytes = self.read_manifest(chain, *v).await?;
            if let Ok(mut m) = serde_json::from_slice::<M>(&bytes) {
                for (file, _) in m.files_mut() {
                    if let Some((dir, _)) = file.rsplit_once('/') {
                        keep_dirs.push(dir.to_string());
                    }
                }
            }
        }
        let data_rel = format!("{}/data", chain.root);
        let data = self.path(&data_rel);
        let listing = self
            .store
            .list_with_delimiter(Some(&data))
            .await
            .map_err(self.io("list", &data))?;
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            // Keep directories of versions above the newest: a run in flight writes there.
            let version: Option<u64> = name
                .strip_prefix('v')
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse().ok());
            let rel = format!("{data_rel}/{name}");
            if keep_dirs.contains(&rel) || version.is_none_or(|v| v > newest) {
                continue;
            }
            let files: Vec<_> = self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(self.io("list", &dir))?;
            for f in files {
                self.store
                    .delete(&f.location)
                    .await
                    .map_err(self.io("delete", &f.location))?;
            }
            if let Some(local) = &self.location.local {
                let _ = std::fs::remove_dir(local.join(&rel));
            }
        }
        for v in versions.iter().filter(|v| **v < oldest_kept) {
            let path = self.path(&Self::manifest_rel(chain, *v));
            self.store
                .delete(&path)
                .await
                .map_err(self.io("delete", &path))?;
        }
        Ok(())
    }

    /// Write a whole small object, replacing what is there in one step (a reader sees the old
    /// one or the new one, never a part): `run_results.json`.
    pub async fn put_replace(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(rel);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(self.io("write", &path))?;
        Ok(())
    }

    /// Write a whole small object that must not exist yet (history files).
    /// The object is flushed to disk before this returns (intents must be durable before the
    /// destination write they announce).
    pub async fn put_new(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(rel);
        let len = bytes.len() as u64;
        self.store
            .put_opts(&path, PutPayload::from(bytes), PutMode::Create.into())
            .await
            .map_err(self.io("write", &path))?;
        self.verify(rel, Some(len)).await?;
        self.fsync(rel)
    }

    /// Names (relative to `rel`) of the objects directly under `rel`, sorted.
    pub async fn list_files(&self, rel: &str) -> Result<Vec<String>> {
        let Some(listing) = self.listing(rel).await? else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// What is directly under `rel` (None when there is nothing, not even the folder).
    async fn listing(&self, rel: &str) -> Result<Option<object_store::ListResult>> {
        let dir = self.path(rel);
        match self.store.list_with_delimiter(Some(&dir)).await {
            Ok(l) => Ok(Some(l)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io("list", &dir)(e)),
        }
    }

    /// Names of the folders directly under `rel`, sorted.
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>> {
        let Some(listing) = self.listing(rel).await? else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|o| o.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Remove an object (a missing one is not an error).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("delete", &path)(e)),
        }
    }

    /// Read a whole object.
    pub async fn read(&self, rel: &str) -> Result<bytes::Bytes> {
        let path = self.path(rel);
        let got = self
            .store
            .get(&path)
            .await
            .map_err(self.io("read", &path))?;
        got.bytes().await.map_err(self.io("read", &path))
    }

    /// The local directory of the state, when it is on this machine.
    pub fn local_dir(&self) -> Option<&PathBuf> {
        self.location.local.as_ref()
    }
}

/// One batch as the bytes of a whole Parquet file (small state files written in one step:
/// history records, intents, ids a destination gave).
pub fn parquet_bytes(
    batch: &arrow::array::RecordBatch,
) -> std::result::Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut buf = Vec::new();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(writer_properties()))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf)
}

/// The schema a plan's rows are stored in: string views as plain strings, every column
/// nullable (a file's schema must not depend on how a plan happened to read its inputs).
pub fn storage_schema(schema: &arrow::datatypes::Schema) -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let dt = match f.data_type() {
                    DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                    DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
                    other => other.clone(),
                };
                Field::new(f.name(), dt, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Parquet settings for state and history files: zstd, statistics on (readers prune by key),
/// no dictionaries (keys and row hashes are all distinct: a dictionary only costs time). Row
/// and field hashes are stored as they are, without statistics: random bits do not compress,
/// and their minimum and maximum prune nothing.
pub fn writer_properties() -> WriterProperties {
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_dictionary_enabled(false);
    for column in ["__bf_hash", "__bf_fields"] {
        let path = ColumnPath::from(column);
        b = b
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    b.build()
}

/// Parquet settings for destination files: zstd, dictionaries where they pay off; none for
/// the key field of a one-field key (`distinct`), whose values are all different: a
/// dictionary there only costs time (interning every value until the page limit gives up).
pub fn file_writer_properties(distinct: Option<&str>) -> WriterProperties {
    let mut b =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default()));
    if let Some(column) = distinct {
        b = b
            .set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(column), false);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(version: u64) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            sync: "s".into(),
            version,
            run_id: "r".into(),
            committed_at: "now".into(),
            snapshot: format!("syncs/s/data/v{version:020}-x/snapshot.parquet"),
            rows: 0,
            destination: "d".into(),
            object: "o".into(),
            behavior: "upsert".into(),
            key: "id".into(),
            key_type: "Int64".into(),
            watermark: None,
            destination_fingerprint: None,
            fields: None,
            upstream: None,
            source_version: None,
            deltas: Vec::new(),
            snapshot_bytes: None,
            counts: None,
            checksum: None,
        }
    }

    #[tokio::test]
    async fn commits_are_create_if_absent_and_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(Location::resolve(".backflow", dir.path()).unwrap()).unwrap();
        assert!(store.latest("s").await.unwrap().is_none());
        for v in [1, 2] {
            store
                .put_new(&manifest(v).snapshot, parquet_like(64))
                .await
                .unwrap();
        }
        store.commit(&manifest(1)).await.unwrap();
        store.commit(&manifest(2)).await.unwrap();
        assert!(matches!(
            store.commit(&manifest(2)).await,
            Err(StateError::Conflict { version: 2, .. })
        ));
        assert_eq!(store.latest("s").await.unwrap().unwrap().version, 2);
    }

    #[tokio::test]
    async fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(Location::resolve(".backflow", dir.path()).unwrap()).unwrap();
        let mut m = manifest(1);
        m.format = FORMAT_VERSION + 1;
        store.put_new(&m.snapshot, parquet_like(64)).await.unwrap();
        store.commit(&m).await.unwrap();
        let err = store.latest("s").await.unwrap_err();
        assert!(matches!(err, StateError::NewerFormat { .. }), "{err}");
    }

    /// `n` bytes that end like a Parquet file (a 4-byte footer length, then `PAR1`).
    fn parquet_like(n: usize) -> Vec<u8> {
        let mut b = vec![7u8; n - 8];
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(b"PAR1");
        b
    }

    /// Commits version `version` with a snapshot file of `bytes` bytes.
    async fn commit_with_snapshot(store: &StateStore, version: u64, bytes: usize) -> Manifest {
        let m = manifest(version);
        store
            .put_new(&m.snapshot, parquet_like(bytes))
            .await
            .unwrap();
        store.commit(&m).await.unwrap();
        store
            .intact::<Manifest>(&Chain::sync("s"), version)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_torn_manifest_or_snapshot_falls_back_to_the_last_intact_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(Location::resolve(".backflow", dir.path()).unwrap()).unwrap();
        commit_with_snapshot(&store, 1, 100).await;
        let v2 = commit_with_snapshot(&store, 2, 200).await;
        assert_eq!(v2.snapshot_bytes, Some(200));
        assert!(v2.checksum.is_some());
        let root = dir.path().join(".backflow");
        let manifest2 = root.join("syncs/s/_manifests/00000000000000000002.json");

        // A torn snapshot (a write lost after the manifest): version 1 is used.
        let snap2 = root.join(&v2.snapshot);
        std::fs::write(&snap2, parquet_like(150)).unwrap();
        assert_eq!(store.latest("s").await.unwrap().unwrap().version, 1);
        std::fs::write(&snap2, parquet_like(200)).unwrap();
        assert_eq!(store.latest("s").await.unwrap().unwrap().version, 2);

        // A manifest whose content changed (its checksum no longer matches).
        let text = std::fs::read_to_string(&manifest2).unwrap();
        std::fs::write(&manifest2, text.replace("\"rows\": 0", "\"rows\": 5")).unwrap();
        assert_eq!(store.latest("s").await.unwrap().unwrap().version, 1);

        // A truncated manifest, and an empty one (a lost unsynced write).
        std::fs::write(&manifest2, &text[..text.len() / 2]).unwrap();
        assert_eq!(store.latest("s").await.unwrap().unwrap().version, 1);
        std::fs::write(&manifest2, "").unwrap();
        assert_eq!(store.latest("s").await.unwrap().unwrap().version, 1);
        // The next commit still takes the next number.
        assert_eq!(store.newest_version("s").await.unwrap(), 2);

        // Nothing intact: an error, never "no state".
        let manifest1 = root.join("syncs/s/_manifests/00000000000000000001.json");
        std::fs::write(&manifest1, "{").unwrap();
        let err = store.latest("s").await.unwrap_err();
        assert!(matches!(err, StateError::Unreadable { .. }), "{err}");
        // The advice names the folder as a path that can be pasted: absolute, leading `/`.
        let folder = root.join("syncs/s/_manifests");
        assert!(
            err.to_string()
                .contains(&format!("move {} aside", folder.display())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_write_that_did_not_arrive_whole_is_caught_when_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(Location::resolve(".backflow", dir.path()).unwrap()).unwrap();
        store
            .put_new("x/ok.parquet", parquet_like(64))
            .await
            .unwrap();
        store.verify("x/ok.parquet", Some(64)).await.unwrap();
        let cut = store
            .put_new("x/cut.parquet", vec![7u8; 64])
            .await
            .unwrap_err();
        assert!(matches!(cut, StateError::Torn { .. }), "{cut}");
        assert!(cut.to_string().contains("footer"), "{cut}");
        let err = store.verify("x/ok.parquet", Some(65)).await.unwrap_err();
        assert!(err.to_string().contains("64 bytes instead of 65"), "{err}");
        let err = store.verify("x/gone.parquet", None).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_second_lock_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(Location::resolve(".backflow", dir.path()).unwrap()).unwrap();
        let held = store.lock("s").unwrap();
        assert!(matches!(store.lock("s"), Err(StateError::Locked { .. })));
        drop(held);
        store.lock("s").unwrap();
        assert!(Path::new(&dir.path().join(".backflow/locks/s.lock")).exists());
    }
}
