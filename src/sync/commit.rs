//! The commit stage: the manifest of the next state version is put (create-if-absent) under
//! the run's lease, and only then is anything the run did marked synced. The intents it covers
//! are removed after it, and old versions vacuumed.

use super::intents::IntentLog;
use super::state::NextState;
use super::{Prepared, SyncError, SyncRef, failpoint};
use crate::history::RunCounts;
use crate::state::{FORMAT_VERSION, Manifest, SyncLock, Watermark};

/// How far a state is up to date with what the sync reads: the cursor's watermark, and the
/// version of a source with a change feed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UpTo {
    pub watermark: Option<Watermark>,
    pub source_version: Option<crate::state::SourceVersion>,
}

/// Whether committing would record nothing `previous` does not (the run sent nothing, got no
/// late rejections and wrote no intents: the caller knows): same watermark, mapping,
/// destination, key type, upstream, source version and format, no intents of earlier runs to fold in, no whole
/// read. Not when `previous` is older than the newest version (that one was damaged): the next
/// commit must put an intact version above it.
pub(super) fn changes_nothing(prepared: &Prepared, previous: &Manifest, up_to: &UpTo) -> bool {
    prepared.target.version == previous.version + 1
        && !prepared.rescan
        && prepared.pending.is_empty()
        && prepared.covered.is_empty()
        && prepared.reported == 0
        && previous.fields.as_deref() == Some(prepared.fields.as_str())
        && previous.upstream == prepared.upstream
        && previous.watermark == up_to.watermark
        && previous.source_version == up_to.source_version
        && previous.format == FORMAT_VERSION
        && previous.key_type == prepared.key_type.to_string()
        && previous.destination_fingerprint.as_deref() == Some(prepared.fingerprint.as_str())
}

/// Commit `next` as version `version` of the sync's state; returns the committed manifest.
pub(super) async fn commit(
    sync: &SyncRef<'_>,
    prepared: &Prepared,
    next: NextState,
    up_to: UpTo,
    counts: &RunCounts,
    lock: &SyncLock,
    intents: Option<IntentLog>,
) -> Result<Manifest, SyncError> {
    let (name, config) = (sync.name, sync.config);
    let manifest = Manifest {
        format: FORMAT_VERSION,
        sync: name.to_string(),
        version: prepared.target.version,
        run_id: sync.run_id.clone(),
        committed_at: chrono::Utc::now().to_rfc3339(),
        snapshot: next.snapshot,
        rows: next.rows,
        destination: config.to.clone(),
        object: config.object.clone(),
        behavior: config.behavior.to_string(),
        key: config.key.stored(),
        key_type: prepared.key_type.to_string(),
        watermark: up_to.watermark,
        destination_fingerprint: Some(prepared.fingerprint.clone()),
        fields: Some(prepared.fields.clone()),
        upstream: prepared.upstream,
        source_version: up_to.source_version,
        deltas: next.deltas,
        counts: Some(counts.clone()),
        // Filled in by the commit.
        snapshot_bytes: None,
        checksum: None,
    };
    failpoint!("before_commit", name);
    lock.confirm().await?;
    sync.project.state.commit(&manifest).await?;
    failpoint!("after_commit", name);
    // The committed snapshot covers every intent read or written by this run.
    let own = intents.map(|i| i.files).unwrap_or_default();
    for rel in prepared
        .pending
        .iter()
        .chain(&prepared.covered)
        .chain(own.iter())
    {
        if let Err(e) = sync.project.state.delete(rel).await {
            tracing::warn!(sync = name, error = %e, "could not remove an intent file");
        }
    }
    sync.project.state.vacuum(name).await;
    Ok(manifest)
}
