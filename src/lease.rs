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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::state::StateError;

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
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

/// What a run checks before it writes: whether it still holds its lease.
#[derive(Debug, Clone)]
pub struct Fence {
    owner: String,
    lost: Arc<AtomicBool>,
}

impl Fence {
    pub fn check(&self) -> Result<(), StateError> {
        if self.lost.load(Ordering::SeqCst) {
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

impl Lease {
    /// Take the lease at `path` for `run`, or fail with `Locked` while another run holds it.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        owner: &str,
        run: &str,
        ttl: Duration,
    ) -> Result<Lease, StateError> {
        let body = |at: i64| {
            PutPayload::from(
                serde_json::to_vec(&Record {
                    run: run.to_string(),
                    expires_at_ms: at + ttl.as_millis() as i64,
                })
                .unwrap_or_default(),
            )
        };
        let locked = |until: i64, holder: &str| StateError::Locked {
            owner: owner.to_string(),
            path: format!(
                "{path} (a lease of run {holder} until {})",
                chrono::DateTime::from_timestamp_millis(until)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        };
        let version = match store
            .put_opts(&path, body(now_ms()), PutMode::Create.into())
            .await
        {
            Ok(r) => UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            },
            Err(object_store::Error::AlreadyExists { .. }) => {
                let got = store.get(&path).await.map_err(io("read", &path))?;
                let seen = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await.map_err(io("read", &path))?;
                // A lease that cannot be read is taken as expired.
                let held: Option<Record> = serde_json::from_slice(&bytes).ok();
                if let Some(h) = &held
                    && h.expires_at_ms > now_ms()
                {
                    return Err(locked(h.expires_at_ms, &h.run));
                }
                // Expired: take it over, unless another run does first.
                match store
                    .put_opts(&path, body(now_ms()), PutMode::Update(seen).into())
                    .await
                {
                    Ok(r) => UpdateVersion {
                        e_tag: r.e_tag,
                        version: r.version,
                    },
                    Err(object_store::Error::Precondition { .. }) => {
                        return Err(locked(now_ms() + ttl.as_millis() as i64, "another"));
                    }
                    Err(e) => return Err(io("take over", &path)(e)),
                }
            }
            Err(e) => return Err(io("create", &path)(e)),
        };
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (store, path, lost, run) =
                (store.clone(), path.clone(), lost.clone(), run.to_string());
            let every = ttl / 3;
            tokio::spawn(async move {
                let mut version = version;
                loop {
                    tokio::time::sleep(every).await;
                    if frozen() {
                        continue;
                    }
                    let payload = PutPayload::from(
                        serde_json::to_vec(&Record {
                            run: run.clone(),
                            expires_at_ms: now_ms() + ttl.as_millis() as i64,
                        })
                        .unwrap_or_default(),
                    );
                    match store
                        .put_opts(&path, payload, PutMode::Update(version.clone()).into())
                        .await
                    {
                        Ok(r) => {
                            version = UpdateVersion {
                                e_tag: r.e_tag,
                                version: r.version,
                            }
                        }
                        Err(e) => {
                            tracing::warn!(lease = %path, error = %e, "the run's lease could not be renewed: it stops before its next write");
                            lost.store(true, Ordering::SeqCst);
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
            lost,
            renewer,
        })
    }

    pub fn fence(&self) -> Fence {
        Fence {
            owner: self.owner.clone(),
            lost: self.lost.clone(),
        }
    }

    /// Whether the lease is still this run's (read from the store: a run frozen past its
    /// lease learns here that another run took it).
    pub async fn confirm(&self) -> Result<(), StateError> {
        self.fence().check()?;
        let held: Option<Record> = match self.store.get(&self.path).await {
            Ok(got) => got
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            Err(_) => None,
        };
        match held {
            Some(h) if h.run == self.run => Ok(()),
            _ => {
                self.lost.store(true, Ordering::SeqCst);
                Err(StateError::LeaseLost {
                    owner: self.owner.clone(),
                })
            }
        }
    }

    /// Give the lease up (when it is still this run's).
    pub async fn release(self) {
        self.renewer.abort();
        if self.confirm().await.is_ok() {
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
