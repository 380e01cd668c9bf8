//! Run leases for state in an object store, where there is no file lock: a run of a sync (or
//! an entity) holds `locks/<name>.lease` while it goes.
//!
//! ```text
//!  acquire: create-if-absent {run, expires_at}      taken → "already running" (until expires_at)
//!           expired → replace it, conditional on     (a second taker loses the conditional put)
//!           the version read
//!  renew:   every ttl/3, conditional on the version  failed → the lease is lost: the run stops
//!           this run last wrote                      before its next destination batch and its
//!                                                    commit ("lost its lease")
//!  release: delete it (a run that dies leaves it to expire)
//! ```
//!
//! The lease keeps two runs from overlapping; the create-if-absent put of each manifest
//! version still decides if they do (a run frozen past its lease that wakes up finds its
//! lease gone, or its version committed, and commits nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::error::StateError;

/// How long a lease lasts unless renewed, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    run: String,
    expires_at_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A held lease; renewed in the background until released or dropped.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    owner: String,
    run: String,
    fence: Fence,
    renewer: tokio::task::JoinHandle<()>,
}

/// What a run checks before it writes: whether it still holds its lease — not lost, and
/// renewed recently enough (a run whose renewals stalled stops before its lease runs out).
#[derive(Debug, Clone)]
pub struct Fence {
    owner: String,
    lost: Arc<AtomicBool>,
    /// The lease's expiry as last written, minus a margin (ms since the epoch).
    valid_until_ms: Arc<AtomicI64>,
}

impl Fence {
    pub fn check(&self) -> Result<(), StateError> {
        if self.lost.load(Ordering::SeqCst) || now_ms() > self.valid_until_ms.load(Ordering::SeqCst)
        {
            return Err(StateError::LeaseLost {
                owner: self.owner.clone(),
            });
        }
        Ok(())
    }
}

fn io(op: &'static str, path: &ObjectPath) -> impl FnOnce(object_store::Error) -> StateError {
    let path = path.to_string();
    move |source| StateError::Io {
        location: "lease".into(),
        op,
        path,
        source: Box::new(source),
    }
}

fn version_of(r: object_store::PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: r.e_tag,
        version: r.version,
    }
}

/// Put a lease record, replacing the one at `seen` (or unconditionally on a store that cannot
/// replace conditionally).
async fn replace(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    payload: PutPayload,
    seen: UpdateVersion,
) -> object_store::Result<UpdateVersion> {
    match store
        .put_opts(path, payload.clone(), PutMode::Update(seen).into())
        .await
    {
        Err(object_store::Error::NotImplemented { .. }) => store
            .put_opts(path, payload, PutMode::Overwrite.into())
            .await
            .map(version_of),
        other => other.map(version_of),
    }
}

/// The lease record at `path`, with the version it was read at (None: there is none).
async fn read(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
) -> Result<Option<(Option<Record>, UpdateVersion)>, StateError> {
    let got = match store.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    let seen = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(io("read", path))?;
    // A lease that cannot be read is taken as expired.
    Ok(Some((serde_json::from_slice(&bytes).ok(), seen)))
}

impl Lease {
    /// Take the lease at `path` for `run`, or fail with `Locked` while another run holds it.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        owner: &str,
        run: &str,
        ttl: Duration,
    ) -> Result<Lease, StateError> {
        let ttl_ms = ttl.as_millis() as i64;
        let body = |at: i64| {
            PutPayload::from(
                serde_json::to_vec(&Record {
                    run: run.to_string(),
                    expires_at_ms: at + ttl_ms,
                })
                .unwrap_or_default(),
            )
        };
        let locked = |until: i64, holder: &str| StateError::Locked {
            owner: owner.to_string(),
            path: format!(
                "{path} (a lease of run {holder} until {}; a run that was killed keeps it until \
                 then)",
                chrono::DateTime::from_timestamp_millis(until)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        };
        let mut written_at = now_ms();
        let mut version = None;
        // Twice: the holder may give the lease up between our create and our read.
        for _ in 0..2 {
            written_at = now_ms();
            match store
                .put_opts(&path, body(written_at), PutMode::Create.into())
                .await
            {
                Ok(r) => {
                    version = Some(version_of(r));
                    break;
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(io("create", &path)(e)),
            }
            let Some((held, seen)) = read(&store, &path).await? else {
                continue;
            };
            match held {
                // Ours (a create that succeeded and was retried).
                Some(h) if h.run == run => {
                    version = Some(seen);
                    break;
                }
                Some(h) if h.expires_at_ms > now_ms() => {
                    return Err(locked(h.expires_at_ms, &h.run));
                }
                // Expired: take it over, unless another run does first.
                _ => {
                    written_at = now_ms();
                    match replace(&store, &path, body(written_at), seen).await {
                        Ok(v) => {
                            version = Some(v);
                            break;
                        }
                        Err(object_store::Error::Precondition { .. }) => {
                            return Err(locked(now_ms() + ttl_ms, "another"));
                        }
                        Err(e) => return Err(io("take over", &path)(e)),
                    }
                }
            }
        }
        let Some(version) = version else {
            return Err(locked(now_ms() + ttl_ms, "another"));
        };
        let fence = Fence {
            owner: owner.to_string(),
            lost: Arc::new(AtomicBool::new(false)),
            valid_until_ms: Arc::new(AtomicI64::new(written_at + ttl_ms - ttl_ms / 6)),
        };
        let renewer = {
            let (store, path, fence, run) =
                (store.clone(), path.clone(), fence.clone(), run.to_string());
            tokio::spawn(async move {
                let mut version = version;
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if frozen() {
                        continue;
                    }
                    let at = now_ms();
                    let payload = PutPayload::from(
                        serde_json::to_vec(&Record {
                            run: run.clone(),
                            expires_at_ms: at + ttl_ms,
                        })
                        .unwrap_or_default(),
                    );
                    let renewed =
                        match replace(&store, &path, payload.clone(), version.clone()).await {
                            Ok(v) => Some(v),
                            // The put may have landed and its answer got lost: still ours?
                            Err(_) => match read(&store, &path).await {
                                Ok(Some((Some(h), seen))) if h.run == run => {
                                    replace(&store, &path, payload, seen).await.ok()
                                }
                                _ => None,
                            },
                        };
                    match renewed {
                        Some(v) => {
                            version = v;
                            fence
                                .valid_until_ms
                                .store(at + ttl_ms - ttl_ms / 6, Ordering::SeqCst);
                        }
                        None => {
                            tracing::warn!(lease = %path, "the run's lease could not be renewed: it stops before its next write");
                            fence.lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        Ok(Lease {
            store,
            path,
            owner: owner.to_string(),
            run: run.to_string(),
            fence,
            renewer,
        })
    }

    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Whether the lease is still this run's (read from the store: a run frozen past its
    /// lease learns here that another run took it).
    pub async fn confirm(&self) -> Result<(), StateError> {
        self.fence.check()?;
        match read(&self.store, &self.path).await {
            Ok(Some((Some(h), _))) if h.run == self.run => Ok(()),
            _ => {
                self.fence.lost.store(true, Ordering::SeqCst);
                Err(StateError::LeaseLost {
                    owner: self.owner.clone(),
                })
            }
        }
    }

    /// Give the lease up (when it is still this run's).
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(Some((Some(h), _))) = read(&self.store, &self.path).await
            && h.run == self.run
        {
            let _ = self.store.delete(&self.path).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Tests freeze renewals (as a process stopped by the system would) with the `lease_renew`
/// failpoint.
fn frozen() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval("lease_renew", |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}
