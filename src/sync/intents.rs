//! Write-ahead intents: before a batch goes to the destination, its keys are written to
//! `syncs/<sync>/pending/<run>-<n>.parquet` ([`IntentLog`]). A run that dies before its commit
//! leaves them behind; the next run reads them ([`pending`]) and treats their keys as unknown,
//! so whatever the dead run did to those records is redone or undone. A commit covers the
//! intents it read and wrote; they are removed after it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::map::KEY;
use super::{SyncError, failpoint};
use crate::project::Project;
use crate::state::{Manifest, StateError, StateStore};

/// Write-ahead intents: the keys a run is about to write, one small Parquet file per batch,
/// put (create-if-absent) before the batch goes to the destination.
pub struct IntentLog {
    store: StateStore,
    dir: String,
    run_id: String,
    /// The files written, relative to the state root.
    pub files: Vec<String>,
    fence: Option<crate::state::lease::Fence>,
}

impl IntentLog {
    pub fn new(store: &StateStore, dir: &str, run_id: &str) -> Self {
        IntentLog {
            store: store.clone(),
            dir: dir.to_string(),
            run_id: run_id.to_string(),
            files: Vec::new(),
            fence: None,
        }
    }

    /// Check `fence` (the run's lease) before every batch: a run that lost its lease writes
    /// nothing more.
    pub fn with_fence(mut self, fence: Option<crate::state::lease::Fence>) -> Self {
        self.fence = fence;
        self
    }

    pub(super) async fn record(&mut self, sync: &str, keys: &ArrayRef) -> Result<(), SyncError> {
        if let Some(f) = &self.fence {
            f.check()?;
        }
        let rel = format!(
            "{}/{}-{:06}.parquet",
            self.dir,
            self.run_id,
            self.files.len()
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            KEY,
            keys.data_type().clone(),
            true,
        )]));
        let err = |e: parquet::errors::ParquetError| {
            SyncError::State(StateError::Parquet {
                path: rel.clone(),
                source: e,
            })
        };
        let batch =
            RecordBatch::try_new(schema.clone(), vec![keys.clone()]).map_err(|e| err(e.into()))?;
        let buf = crate::state::parquet_bytes(&batch).map_err(err)?;
        if let Err(e) = self.store.put_new(&rel, buf).await {
            // Nothing of this batch was sent: an intent that did not arrive whole announces
            // nothing, and must not be read by the next run.
            let _ = self.store.delete(&rel).await;
            return Err(e.into());
        }
        self.files.push(rel);
        failpoint!("after_intent", sync);
        Ok(())
    }
}

/// Intent files (relative to the state root): those of interrupted runs, which the state must
/// take into account, and those of the run that made the newest commit, which it covers (that
/// run stopped between its commit and their removal). Both are removed after the next commit.
#[derive(Debug, Default)]
pub(super) struct Intents {
    /// Of interrupted runs, readable.
    pub pending: Vec<String>,
    /// Of the run that made the newest commit.
    pub covered: Vec<String>,
    /// Of interrupted runs, and damaged (they cannot be read whole).
    pub damaged: Vec<String>,
}

pub(super) async fn pending(
    project: &Project,
    name: &str,
    previous: Option<&Manifest>,
) -> Result<Intents, SyncError> {
    let mut found = Intents::default();
    for f in project.state.list_files(&dir(name)).await? {
        if !f.ends_with(".parquet") {
            continue;
        }
        let rel = format!("{}/{f}", dir(name));
        if previous.is_some_and(|m| f.starts_with(&format!("{}-", m.run_id))) {
            found.covered.push(rel);
            continue;
        }
        // An intent is small: it is decoded whole, so that damage anywhere in it shows here,
        // not in the middle of the run.
        let bytes = match project.state.read(&rel).await {
            Ok(b) => b,
            // Removed since it was listed (by a run that committed it).
            Err(StateError::Io { source, .. })
                if matches!(*source, object_store::Error::NotFound { .. }) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let whole = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map(|reader| reader.into_iter().all(|batch| batch.is_ok()));
        match whole {
            Ok(true) => found.pending.push(rel),
            _ => {
                tracing::warn!(
                    sync = name,
                    file = rel,
                    "an intent file is damaged: every record is sent again"
                );
                found.damaged.push(rel);
            }
        }
    }
    Ok(found)
}

/// The key type the intent files were written with (for a model too empty to have one).
pub(super) async fn key_type(
    project: &Project,
    ctx: &SessionContext,
    pending: &[String],
) -> Option<DataType> {
    let first = pending.first()?;
    let df = ctx
        .read_parquet(
            project.state.table_url(first),
            ParquetReadOptions::default(),
        )
        .await
        .ok()?;
    df.schema().fields().first().map(|f| f.data_type().clone())
}

/// Where a sync's write-ahead intents live (relative to the state root).
pub(super) fn dir(sync: &str) -> String {
    format!("syncs/{sync}/pending")
}
