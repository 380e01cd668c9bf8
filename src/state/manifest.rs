//! Manifests: one committed version of a chain (a sync's state; a hub entity's state is
//! another [`Versioned`] kind), stored as JSON with a checksum, and decoded only when whole.

use serde::{Deserialize, Serialize};

use super::error::{Result, StateError};

/// The manifest format this release writes and reads.
/// 3: a sync's state may be a snapshot plus deltas (2: a snapshot alone; 1: checksums and
/// snapshot sizes may be absent).
pub const FORMAT_VERSION: u32 = 3;
/// What a run did, as reported by `run --json`, stored in history and in the manifest the run
/// committed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunCounts {
    /// Rows read from the model (after the cursor filter).
    pub read: u64,
    /// Rows never sent: NULL or duplicate key.
    pub invalid: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Rows already in sync, or changes the behaviour does not send (create-only updates).
    pub unchanged: u64,
    /// Rows the destination refused; retried on the next run.
    pub rejected: u64,
    /// Rows the destination already had and the behaviour does not touch (create-only).
    pub skipped: u64,
    /// Requests the destination sent again after a failure, a timeout or a rate limit (HTTP
    /// APIs; 0 elsewhere).
    pub retries: u64,
    /// Records that left the model but were not deleted, because a source of the model left
    /// out rows it could not read (they may be those records). Deleted once the rows are fixed.
    #[serde(default)]
    pub held: u64,
    /// Records the destination object holds that are not in the model and that this sync has
    /// no record of sending (counted only by a run without state): a mirror leaves them alone.
    #[serde(default)]
    pub unowned: u64,
}

/// The watermark of a sync with a cursor: the cursor value up to which rows are in sync.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Watermark {
    /// The cursor column in the model.
    pub column: String,
    /// The Arrow data type of the value, as Arrow writes it (`Timestamp(µs)`, `Int64`, …).
    pub data_type: String,
    /// The value, as Arrow casts it to text.
    pub value: String,
}

/// The version of a source with a change feed that a state is up to date with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceVersion {
    /// The table's identity (a Delta table's id): a table replaced by another under the same
    /// path starts over, whatever its version numbers.
    pub table: String,
    pub version: u64,
}

/// One committed version of a sync's state. Stored as JSON in `_manifests/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub sync: String,
    pub version: u64,
    pub run_id: String,
    pub committed_at: String,
    /// The snapshot file, relative to the state root.
    pub snapshot: String,
    /// Number of keys in the state (the snapshot with its deltas).
    pub rows: u64,
    /// What cursor runs accepted since the snapshot was written, oldest first: each a
    /// `sent.parquet` (`__bf_key`, `__bf_hash`, `__bf_keep`); a key's newest entry wins over
    /// the snapshot. A cursor run adds its file here instead of rewriting every key; one run
    /// in a while folds them back into a new snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Delta>,
    pub destination: String,
    pub object: String,
    pub behavior: String,
    /// The destination key field.
    pub key: String,
    /// The key's Arrow type.
    pub key_type: String,
    pub watermark: Option<Watermark>,
    /// What identifies the destination object (see `Destination::fingerprint`).
    #[serde(default)]
    pub destination_fingerprint: Option<String>,
    /// The mapped fields and their type families (the row-hash header).
    #[serde(default)]
    pub fields: Option<String>,
    /// For a hub write-back: the hub version whose golden records this version sent (the
    /// next run overlays what the source reported after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<u64>,
    /// For a sync reading a source that records its changes (a Delta table with Change Data
    /// Feed): the source's version this state is up to date with; the next run reads the
    /// changes after it. None when the run left something to read again (an invalid or
    /// rejected row), or the source has no versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<SourceVersion>,
    /// The snapshot file's size in bytes: a torn (truncated) snapshot is detected by it.
    #[serde(default)]
    pub snapshot_bytes: Option<u64>,
    /// What the run that committed this version did (its history record has the same
    /// `run_id`): state and history can be checked against each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<RunCounts>,
    /// XXH3-64 (hex) of this manifest's JSON with `checksum` empty: a torn or altered manifest
    /// is detected by it.
    #[serde(default)]
    pub checksum: Option<String>,
}

/// One delta of a sync's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    pub path: String,
    pub rows: u64,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// A manifest kind: one committed version of a chain of versions (a sync's state, a hub
/// entity's state). The store checks, commits and vacuums any kind the same way.
pub trait Versioned: Serialize + serde::de::DeserializeOwned + Clone {
    fn version(&self) -> u64;
    fn checksum(&self) -> Option<&str>;
    fn set_checksum(&mut self, checksum: Option<String>);
    /// The data files this version names (relative to the state root), each with its size as
    /// recorded by the commit: a torn file is detected by it.
    fn files_mut(&mut self) -> Vec<(&str, &mut Option<u64>)>;
    /// Whether a manifest without a checksum may still be trusted (format-1 sync manifests
    /// from before checksums).
    fn may_lack_checksum(&self, _format: u32) -> bool {
        false
    }

    /// The checksum of this manifest's content (its checksum field excluded).
    fn content_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.set_checksum(None);
        let json = serde_json::to_vec(&copy).unwrap_or_default();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
    }
}

impl Versioned for Manifest {
    fn version(&self) -> u64 {
        self.version
    }
    fn checksum(&self) -> Option<&str> {
        self.checksum.as_deref()
    }
    fn set_checksum(&mut self, checksum: Option<String>) {
        self.checksum = checksum;
    }
    fn files_mut(&mut self) -> Vec<(&str, &mut Option<u64>)> {
        let mut files = vec![(self.snapshot.as_str(), &mut self.snapshot_bytes)];
        for d in &mut self.deltas {
            files.push((d.path.as_str(), &mut d.bytes));
        }
        files
    }
    fn may_lack_checksum(&self, format: u32) -> bool {
        // Only manifests of format 1 from before checksums may lack one, and those never
        // recorded a snapshot size either: anything else lost its checksum to damage.
        format < 2 && self.snapshot_bytes.is_none()
    }
}

/// Decode a manifest read as version `version`: parsable, of a format this release reads,
/// named as it says, its checksum right (the files it names are checked by the caller).
/// `owner` and `path` only go into messages.
pub fn decode<M: Versioned>(bytes: &[u8], version: u64, owner: &str, path: &str) -> Result<M> {
    let corrupt = |reason: String| StateError::Corrupt {
        owner: owner.to_string(),
        path: path.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format > u64::from(FORMAT_VERSION) {
        return Err(StateError::NewerFormat {
            owner: owner.to_string(),
            found: u32::try_from(format).unwrap_or(u32::MAX),
            reads: FORMAT_VERSION,
        });
    }
    let format = format as u32;
    // From the bytes, not the parsed value: a value's objects lose their key order, and the
    // checksum covers the order written.
    let manifest: M = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if manifest.version() != version {
        return Err(corrupt(format!(
            "it says version {} but is named {version}",
            manifest.version()
        )));
    }
    match manifest.checksum() {
        Some(sum) if sum != manifest.content_checksum() => {
            return Err(corrupt("its checksum does not match its content".into()));
        }
        Some(_) => {}
        None if !manifest.may_lack_checksum(format) => {
            return Err(corrupt("its checksum is missing".into()));
        }
        None => {}
    }
    Ok(manifest)
}
