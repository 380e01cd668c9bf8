//! Keys accepted by `POST /api/syncs/{name}/keys`, and source ids by
//! `POST /api/entities/{entity}/sources/{source}/ids` (an app saying which records just
//! changed).
//! Each request's keys are written to the state as a file of their own before the request is
//! answered, so that neither a run going at the time nor a crash of the server loses them. A
//! run for keys takes the files there when it starts, and removes them when it succeeded; keys
//! that arrive meanwhile wait for the next run.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::project::Project;
use crate::state::StateError;

/// Where accepted keys wait, under the state root.
const DIR: &str = "serve/keys";

/// The most keys one request may carry.
pub const MAX_KEYS_PER_REQUEST: usize = 100_000;

#[derive(Serialize, Deserialize)]
struct Stored {
    keys: Vec<String>,
    accepted_at_ms: i64,
    /// The entity's source the keys are ids of (None: a sync's keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// The keys a run took: their files (removed when the run succeeded) and the keys, each once.
#[derive(Debug, Default, Clone)]
pub struct Taken {
    pub files: Vec<String>,
    /// A sync's keys.
    pub keys: Vec<String>,
    /// An entity's ids, by source.
    pub ids: std::collections::BTreeMap<String, Vec<String>>,
}

impl Taken {
    /// Keys and ids, all sources together.
    pub fn len(&self) -> usize {
        self.keys.len() + self.ids.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys waiting for each sync.
pub struct AcceptedKeys {
    project: Arc<Project>,
    /// Keys waiting per sync, counted (for the API and the metrics).
    waiting: Mutex<HashMap<String, u64>>,
}

impl AcceptedKeys {
    pub fn new(project: Arc<Project>) -> AcceptedKeys {
        AcceptedKeys {
            project,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn dir(sync: &str) -> String {
        format!("{DIR}/{sync}")
    }

    /// Keep `keys` for a run of `sync` (or ids of an entity's `source`): written to the state
    /// before this returns.
    pub async fn accept(
        &self,
        sync: &str,
        source: Option<&str>,
        keys: Vec<String>,
    ) -> Result<(), StateError> {
        let n = keys.len() as u64;
        let stored = Stored {
            keys,
            accepted_at_ms: chrono::Utc::now().timestamp_millis(),
            source: source.map(str::to_string),
        };
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        // Named by time first, so that runs take them in the order they came.
        let rel = format!(
            "{}/{:013}-{}.json",
            Self::dir(sync),
            stored.accepted_at_ms,
            uuid::Uuid::new_v4().simple()
        );
        self.project.state.put_new(&rel, bytes).await?;
        if let Ok(mut w) = self.waiting.lock() {
            *w.entry(sync.to_string()).or_default() += n;
        }
        Ok(())
    }

    /// Every key waiting for `sync` now.
    pub async fn take(&self, sync: &str) -> Result<Taken, StateError> {
        let dir = Self::dir(sync);
        let mut files = self.project.state.list_files(&dir).await?;
        files.retain(|f| f.ends_with(".json"));
        files.sort();
        let mut seen: BTreeSet<(Option<String>, String)> = BTreeSet::new();
        let mut taken = Taken::default();
        for f in files {
            let rel = format!("{dir}/{f}");
            let bytes = self.project.state.read(&rel).await?;
            match serde_json::from_slice::<Stored>(&bytes) {
                Ok(stored) => {
                    for k in stored.keys {
                        if !seen.insert((stored.source.clone(), k.clone())) {
                            continue;
                        }
                        match &stored.source {
                            None => taken.keys.push(k),
                            Some(s) => taken.ids.entry(s.clone()).or_default().push(k),
                        }
                    }
                }
                // (Written by this server whole, so never seen; kept out of every run.)
                Err(e) => {
                    tracing::error!(file = %rel, error = %e, "accepted keys unreadable; removed")
                }
            }
            taken.files.push(rel);
        }
        Ok(taken)
    }

    /// The run that took `taken` succeeded: they are done.
    pub async fn done(&self, sync: &str, taken: &Taken) -> Result<(), StateError> {
        for f in &taken.files {
            self.project.state.delete(f).await?;
        }
        if !taken.files.is_empty() {
            self.recount(sync).await;
        }
        Ok(())
    }

    /// Count the keys waiting for `sync` again, from the files.
    pub async fn recount(&self, sync: &str) -> u64 {
        let n = match self.take(sync).await {
            Ok(t) => t.len() as u64,
            Err(_) => return self.waiting(sync),
        };
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(sync.to_string(), n);
        }
        n
    }

    /// Keys waiting for `sync` (as counted).
    pub fn waiting(&self, sync: &str) -> u64 {
        self.waiting
            .lock()
            .ok()
            .and_then(|w| w.get(sync).copied())
            .unwrap_or(0)
    }

    /// Keys waiting, all syncs together.
    pub fn waiting_total(&self) -> u64 {
        self.waiting.lock().map(|w| w.values().sum()).unwrap_or(0)
    }
}
