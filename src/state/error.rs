//! What can go wrong with the state, each naming the file and what to do.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("state store {location}: {op} {path}: {source}{}", crate::storage::wait_hint(&source.to_string()))]
    Io {
        location: String,
        op: &'static str,
        path: String,
        source: Box<object_store::Error>,
    },
    #[error(
        "state of {owner}: manifest {path} is unreadable ({reason}); the state was not changed"
    )]
    Corrupt {
        owner: String,
        path: String,
        reason: String,
    },
    #[error(
        "state of {owner} was written by a newer backflow (state format {found}, this release reads {reads}); upgrade backflow — the state was left untouched"
    )]
    NewerFormat {
        owner: String,
        found: u32,
        reads: u32,
    },
    #[error(
        "{owner} is already running (lock {path} is held by another backflow process); wait for it to finish"
    )]
    Locked { owner: String, path: String },
    #[error(
        "{owner}: another run committed state version {version} first; this run's changes were sent but its state was not committed, and the next run will re-check them"
    )]
    Conflict { owner: String, version: u64 },
    #[error(
        "{owner}: this run lost its lease (another run took it over after it expired, or it could not be renewed); it stops here without committing, and the next run re-checks what it sent"
    )]
    LeaseLost { owner: String },
    #[error(
        "state store {location} cannot hold backflow's state: {reason}. Runs lease and commit state \
         with create-if-absent writes, so that two runs never both commit; without them they \
         could. Use a store with conditional writes (AWS S3, Google Cloud Storage, Azure Blob \
         Storage, Cloudflare R2, MinIO, Ceph RGW of 2024 or later) or a local state path; \
         nothing was run or changed"
    )]
    NoConditionalWrites { location: String, reason: String },
    #[error("cannot create lock file {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "state of {owner}: no committed version is readable (newest: {reason}); the state was left untouched. \
         To start over, move {manifests} aside and run with --full-resync"
    )]
    Unreadable {
        owner: String,
        reason: String,
        manifests: String,
    },
    #[error("state store: cannot flush {path} to disk: {source}")]
    Fsync {
        path: String,
        source: std::io::Error,
    },
    #[error("state store: cannot write {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error(
        "state store {location}: {path} did not arrive whole ({reason}); nothing was committed"
    )]
    Torn {
        location: String,
        path: String,
        reason: String,
    },
    #[error("state store: cannot compute {path}: {source}")]
    Plan {
        path: String,
        source: Box<datafusion::error::DataFusionError>,
    },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;
