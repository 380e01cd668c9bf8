//! The commit stage: the manifest of the next state version is put (create-if-absent) under
//! the run's lease, and only then is anything the run did marked synced. The intents it covers
//! are removed after it, and old versions vacuumed.

use super::intents::IntentLog;
use super::state::NextState;
use super::{Prepared, SyncError, SyncRef, failpoint};
use crate::history::RunCounts;
use crate::state::{FORMAT_VERSION, Manifest, SyncLock, Watermark};

/// Whether committing would record nothing `previous` does not (the run sent nothing, got no
/// late rejections and wrote no intents: the caller knows): same watermark, mapping,
/// destination, key type, upstream and format, no intents of earlier runs to fold in, no whole
/// read. Not when `previous` is older than the newest version (that one was damaged): the next
/// commit must put an intact version above it.
pub(super) fn changes_nothing(
    prepared: &Prepared,
    previous: &Manifest,
    watermark: Option<&Watermark>,
) -> bool {
    prepared.target.version == previous.version + 1
        && !prepared.rescan
        && prepared.pending.is_empty()
        && prepared.covered.is_empty()
        && prepared.reported == 0
        && previous.fields.as_deref() == Some(prepared.fields.as_str())
        && previous.upstream == prepared.upstream
        && previous.watermark.as_ref() == watermark
        && previous.format == FORMAT_VERSION
        && previous.key_type == prepared.key_type.to_string()
        && previous.destination_fingerprint.as_deref() == Some(prepared.fingerprint.as_str())
}

/// Commit `next` as version `version` of the sync's state; returns the committed manifest.
pub(super) async fn commit(
    sync: &SyncRef<'_>,
    prepared: &Prepared,
    next: NextState,
    watermark: Option<Watermark>,
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
        watermark,
        destination_fingerprint: Some(prepared.fingerprint.clone()),
        fields: Some(prepared.fields.clone()),
        upstream: prepared.upstream,
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
