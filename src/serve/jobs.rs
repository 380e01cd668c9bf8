//! The syncs and entities a server runs, and their runs: which is idle, queued or running,
//! what a run in progress has done so far, and starting one. A run is started here whatever
//! asked for it (a schedule, a sequence, the API, accepted keys); each runs in a task of its
//! own, on a fresh load of the project (its own session, its own record of unreadable source
//! rows), at most `max_concurrent` at once. Nothing here knows HTTP.
//!
//! The engine does the rest as `backflow run` would: the state's lock or lease keeps a second
//! server from running the same sync at the same time, and the run is in history however it
//! ends.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use super::keys::{self, AcceptedKeys};
use super::metrics::Metrics;
use crate::history::{self, RunCounts, RunRecord, RunStatus};
use crate::progress::{Delivery, Progress};
use crate::project::{Project, RunTarget};
use crate::schedule::Schedule;
use crate::sync::RunOptions;

/// A sync or an entity, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sync,
    Entity,
}

impl Kind {
    /// Its name in history: an entity's runs are under `hub.NAME`.
    pub fn history_name(self, name: &str) -> String {
        match self {
            Kind::Sync => name.to_string(),
            Kind::Entity => crate::hub::history_name(name),
        }
    }
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    /// Everything it runs after finished.
    After,
    /// The API (or the page).
    Api,
    /// Keys accepted by the API.
    Keys,
}

impl Trigger {
    pub fn parse(text: &str) -> Option<Trigger> {
        [
            Trigger::Schedule,
            Trigger::After,
            Trigger::Api,
            Trigger::Keys,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::After => "after",
            Trigger::Api => "api",
            Trigger::Keys => "keys",
        }
    }
}

/// What a caller asks of a run.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub full_resync: bool,
}

/// One schedulable sync or entity.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub schedule: Schedule,
    pub after: Vec<String>,
    /// Those that run after this one.
    pub dependents: Vec<String>,
}

/// What a run in progress has done so far.
#[derive(Debug, Default)]
pub struct Live {
    rows: AtomicU64,
    queued: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LiveCounts {
    /// Rows of the diff processed so far.
    pub rows_diffed: u64,
    /// Records handed to the destination so far (destinations that report it: HTTP APIs).
    pub records_queued: u64,
    /// Records the destination is done with.
    pub records_sent: u64,
    pub retries: u64,
}

impl Live {
    fn counts(&self) -> LiveCounts {
        LiveCounts {
            rows_diffed: self.rows.load(Ordering::Relaxed),
            records_queued: self.queued.load(Ordering::Relaxed),
            records_sent: self.delivered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

impl Progress for Live {
    fn rows(&self, _: &str, processed: u64) {
        self.rows.store(processed, Ordering::Relaxed);
    }

    fn delivery(&self, _: &str, d: Delivery) {
        self.queued.store(d.queued, Ordering::Relaxed);
        self.delivered.store(d.done, Ordering::Relaxed);
        self.retries.store(d.retries, Ordering::Relaxed);
    }
}

/// A run as the API shows it: live while it goes, then its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub run_id: String,
    /// The sync or entity.
    pub target: String,
    pub kind: Kind,
    /// `queued`, `running`, then the outcome (`succeeded`, `failed`, `interrupted`, `guarded`).
    pub status: String,
    pub trigger: Option<Trigger>,
    pub full_resync: bool,
    /// Keys of a run for given keys.
    pub keys: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: Option<RunCounts>,
    pub live: Option<LiveCounts>,
    pub error: Option<String>,
    /// Runs of the entity's write-backs that went with it.
    pub writebacks: Vec<String>,
}

impl RunView {
    /// A finished run from history.
    pub fn from_record(r: &RunRecord, kind: Kind) -> RunView {
        let name = match kind {
            Kind::Entity => r.sync.strip_prefix("hub.").unwrap_or(&r.sync).to_string(),
            Kind::Sync => r.sync.clone(),
        };
        RunView {
            run_id: r.run_id.clone(),
            target: name,
            kind,
            status: r.status.as_str().to_string(),
            trigger: r.trigger.as_deref().and_then(Trigger::parse),
            full_resync: r.full_resync,
            keys: r.keys,
            started_at: DateTime::from_timestamp_millis(r.started_at_ms),
            finished_at: DateTime::from_timestamp_millis(r.finished_at_ms),
            counts: Some(r.counts.clone()),
            live: None,
            error: r.error.clone(),
            writebacks: Vec::new(),
        }
    }
}

/// The state of one target.
#[derive(Debug, Default)]
struct Slot {
    /// The run in progress or waiting for a turn, with its live counts.
    current: Option<(String, Arc<Live>)>,
    /// When the last run started and ended (since this server started).
    last_start: Option<DateTime<Utc>>,
    last_end: Option<DateTime<Utc>>,
    /// Keys accepted while a run went: a run for them follows.
    keys_waiting: bool,
}

/// The state of a target, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Idle,
    /// Started, waiting for a free run slot (`--max-concurrent`).
    Queued,
    Running,
}

/// A run that ended, for whoever waits for it (the scheduler: sequences, continuous runs).
#[derive(Debug, Clone)]
pub struct Finished {
    pub target: String,
    pub run_id: String,
    pub status: RunStatus,
    pub trigger: Trigger,
}

/// Why a run was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{kind} \"{name}\" is running (run {run_id}); wait for it to finish")]
    Running {
        kind: &'static str,
        name: String,
        run_id: String,
    },
    #[error("\"{0}\" is no sync or entity this server runs")]
    Unknown(String),
    #[error("the server is stopping; no run is started")]
    Stopping,
}

/// Every target of the server and its runs.
pub struct Jobs {
    pub dir: PathBuf,
    /// The project as loaded when the server started (settings, state store).
    pub project: Arc<Project>,
    pub targets: IndexMap<String, Target>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Recent runs by id (started by this server), newest last; bounded.
    runs: Mutex<VecDeque<RunView>>,
    limit: Arc<Semaphore>,
    stopping: AtomicBool,
    finished: mpsc::UnboundedSender<Finished>,
    pub metrics: Metrics,
    pub keys: AcceptedKeys,
    pub alerts: Arc<super::alerts::Alerts>,
    /// The runtime runs go on (apart from the one serving the API).
    engine: tokio::runtime::Handle,
    /// Each target's last run that was not a skip (from history at start, then as they end).
    last: Mutex<HashMap<String, RunView>>,
    /// When each scheduled target is due next (the scheduler keeps it).
    next_due: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// How long a failed run for accepted keys waits before it is tried again.
const KEYS_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs kept in memory for `GET /api/runs/{id}` (older ones are read from history).
const RECENT_RUNS: usize = 1000;

impl Jobs {
    /// The server's targets: every entity and every sync that is not a hub write-back.
    /// Returns the receiver of finished runs too.
    pub fn new(
        dir: PathBuf,
        project: Arc<Project>,
        max_concurrent: usize,
        alerts: Arc<super::alerts::Alerts>,
        engine: tokio::runtime::Handle,
    ) -> Result<(Arc<Jobs>, mpsc::UnboundedReceiver<Finished>), String> {
        let mut targets: IndexMap<String, Target> = IndexMap::new();
        for (name, timing) in crate::schedule::targets(&project.config) {
            let schedule = Schedule::parse(timing).map_err(|e| format!("\"{name}\": {e}"))?;
            let kind = if project.config.entities.contains_key(&name) {
                Kind::Entity
            } else {
                Kind::Sync
            };
            targets.insert(
                name.clone(),
                Target {
                    name,
                    kind,
                    schedule,
                    after: timing.after.to_vec(),
                    dependents: Vec::new(),
                },
            );
        }
        let edges: Vec<(String, String)> = targets
            .values()
            .flat_map(|t| t.after.iter().map(|a| (a.clone(), t.name.clone())))
            .collect();
        for (upstream, dependent) in edges {
            if let Some(t) = targets.get_mut(&upstream) {
                t.dependents.push(dependent);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new(targets.keys());
        let keys = AcceptedKeys::new(project.clone());
        Ok((
            Arc::new(Jobs {
                dir,
                project,
                targets,
                slots: Mutex::new(HashMap::new()),
                runs: Mutex::new(VecDeque::new()),
                limit: Arc::new(Semaphore::new(max_concurrent.max(1))),
                stopping: AtomicBool::new(false),
                finished: tx,
                metrics,
                keys,
                alerts,
                engine,
                last: Mutex::new(HashMap::new()),
                next_due: Mutex::new(HashMap::new()),
            }),
            rx,
        ))
    }

    /// Read each target's last run from history (at start).
    pub async fn load_last_runs(&self) {
        for target in self.targets.values() {
            let history_name = target.kind.history_name(&target.name);
            match history::runs(&self.project.state, &history_name, 20).await {
                Ok(runs) => {
                    if let Some(r) = runs.iter().find(|r| r.status == RunStatus::Succeeded)
                        && let Some(at) = DateTime::from_timestamp_millis(r.finished_at_ms)
                    {
                        self.alerts.succeeded_at(&target.name, at);
                    }
                    if let Some(r) = runs.iter().find(|r| r.status != RunStatus::Skipped) {
                        let view = RunView::from_record(r, target.kind);
                        if r.status == RunStatus::Succeeded {
                            self.metrics.succeeded_at(&target.name, r.finished_at_ms);
                        }
                        if let Ok(mut last) = self.last.lock() {
                            last.insert(target.name.clone(), view);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(target_name = %target.name, error = %e, "cannot read run history")
                }
            }
        }
    }

    /// The target's last run that was not a skip.
    pub fn last_run(&self, name: &str) -> Option<RunView> {
        self.last.lock().ok()?.get(name).cloned()
    }

    /// When the target is due next by its schedule.
    pub fn next_run(&self, name: &str) -> Option<DateTime<Utc>> {
        self.next_due.lock().ok()?.get(name).copied()
    }

    pub(super) fn set_next_run(&self, name: &str, at: Option<DateTime<Utc>>) {
        if let Ok(mut due) = self.next_due.lock() {
            match at {
                Some(at) => due.insert(name.to_string(), at),
                None => due.remove(name),
            };
        }
    }

    /// Start no more runs (a stop was asked for).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Runs going or waiting for a slot.
    pub fn active(&self) -> usize {
        self.slots
            .lock()
            .map(|s| s.values().filter(|s| s.current.is_some()).count())
            .unwrap_or(0)
    }

    /// The target's state and its current run's id.
    pub fn state(&self, name: &str) -> (State, Option<String>) {
        let current = self.slots.lock().ok().and_then(|s| {
            s.get(name)
                .and_then(|s| s.current.as_ref().map(|(id, _)| id.clone()))
        });
        let Some(run_id) = current else {
            return (State::Idle, None);
        };
        let running = self.runs.lock().is_ok_and(|runs| {
            runs.iter()
                .rev()
                .find(|r| r.run_id == run_id)
                .is_some_and(|r| r.status == "running")
        });
        (
            if running {
                State::Running
            } else {
                State::Queued
            },
            Some(run_id),
        )
    }

    /// When the target's last run started and ended (since the server started).
    pub fn last_times(&self, name: &str) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        self.slots
            .lock()
            .ok()
            .and_then(|s| s.get(name).map(|s| (s.last_start, s.last_end)))
            .unwrap_or((None, None))
    }

    /// A run this server started, live or finished.
    pub fn view(&self, run_id: &str) -> Option<RunView> {
        let runs = self.runs.lock().ok()?;
        let mut v = runs.iter().rev().find(|r| r.run_id == run_id)?.clone();
        drop(runs);
        if v.status == "running" {
            let slots = self.slots.lock().ok()?;
            if let Some((_, live)) = slots
                .get(&v.target)
                .and_then(|s| s.current.as_ref())
                .filter(|(id, _)| *id == v.run_id)
            {
                v.live = Some(live.counts());
            }
        }
        Some(v)
    }

    fn update(&self, run_id: &str, f: impl FnOnce(&mut RunView)) {
        if let Ok(mut runs) = self.runs.lock()
            && let Some(v) = runs.iter_mut().rev().find(|r| r.run_id == run_id)
        {
            f(v);
        }
    }

    /// What started run `run_id`, as history keeps it.
    fn trigger_of(&self, run_id: &str) -> Option<String> {
        self.view(run_id)
            .and_then(|v| v.trigger)
            .map(|t| t.as_str().to_string())
    }

    /// Record that a run of `name` was due but not started, and why (history and metrics).
    pub async fn skip(&self, name: &str, trigger: Trigger, reason: String) {
        let Some(target) = self.targets.get(name) else {
            return;
        };
        tracing::info!(target_name = name, reason = %reason, "run skipped");
        self.metrics
            .run_finished(name, &RunStatus::Skipped, None, 0.0);
        let now = Utc::now().timestamp_millis();
        let record = RunRecord {
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            sync: target.kind.history_name(name),
            status: RunStatus::Skipped,
            started_at_ms: now,
            finished_at_ms: now,
            full_resync: false,
            counts: RunCounts::default(),
            state_version: None,
            error: Some(reason),
            behavior: None,
            destination: None,
            object: None,
            warnings: Vec::new(),
            trigger: Some(trigger.as_str().to_string()),
            keys: None,
        };
        if let Err(e) = history::record(&self.project.state, &record, &[]).await {
            tracing::warn!(target_name = name, error = %e, "could not record a skipped run");
        }
    }

    /// Start a run of `name` now (or as soon as a run slot is free). Returns its id; refused
    /// when the target has a run going or waiting.
    pub fn start(
        self: &Arc<Self>,
        name: &str,
        trigger: Trigger,
        request: Request,
    ) -> Result<String, StartError> {
        let target = self
            .targets
            .get(name)
            .ok_or_else(|| StartError::Unknown(name.to_string()))?
            .clone();
        if self.stopping() {
            return Err(StartError::Stopping);
        }
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let live = Arc::new(Live::default());
        {
            let mut slots = self.slots.lock().map_err(|_| StartError::Stopping)?;
            let slot = slots.entry(name.to_string()).or_default();
            if let Some((running, _)) = &slot.current {
                return Err(StartError::Running {
                    kind: match target.kind {
                        Kind::Sync => "sync",
                        Kind::Entity => "entity",
                    },
                    name: name.to_string(),
                    run_id: running.clone(),
                });
            }
            slot.current = Some((run_id.clone(), live.clone()));
            if trigger == Trigger::Keys {
                slot.keys_waiting = false;
            }
        }
        if let Ok(mut runs) = self.runs.lock() {
            runs.push_back(RunView {
                run_id: run_id.clone(),
                target: name.to_string(),
                kind: target.kind,
                status: "queued".into(),
                trigger: Some(trigger),
                full_resync: request.full_resync,
                keys: None,
                started_at: None,
                finished_at: None,
                counts: None,
                live: None,
                error: None,
                writebacks: Vec::new(),
            });
            while runs.len() > RECENT_RUNS {
                runs.pop_front();
            }
        }
        self.metrics.queued(1);
        let jobs = self.clone();
        let id = run_id.clone();
        tokio::spawn(async move {
            jobs.execute(target, id, trigger, request, live).await;
        });
        Ok(run_id)
    }

    /// Keys were accepted for `name`: run for them now, or after the run going.
    pub fn keys_arrived(self: &Arc<Self>, name: &str) {
        match self.start(name, Trigger::Keys, Request::default()) {
            Ok(_) => {}
            Err(StartError::Running { .. }) => {
                if let Ok(mut slots) = self.slots.lock() {
                    slots.entry(name.to_string()).or_default().keys_waiting = true;
                }
            }
            Err(e) => tracing::debug!(target_name = name, error = %e, "keys wait"),
        }
    }

    async fn execute(
        self: Arc<Self>,
        target: Target,
        run_id: String,
        trigger: Trigger,
        request: Request,
        live: Arc<Live>,
    ) {
        let name = target.name.clone();
        let permit = self.limit.clone().acquire_owned().await;
        self.metrics.queued(-1);
        let started = Utc::now();
        if self.stopping() {
            let why = "the server stopped before the run started".to_string();
            self.end(
                &target,
                &run_id,
                trigger,
                RunStatus::Interrupted,
                Some(why),
                started,
                &live,
            )
            .await;
            return;
        }
        if let Ok(mut slots) = self.slots.lock() {
            slots.entry(name.clone()).or_default().last_start = Some(started);
        }
        // Keys to run for, taken now: keys accepted from here on wait for the next run.
        let taken = if trigger == Trigger::Keys {
            match self.keys.take(&name).await {
                Ok(t) => t,
                Err(e) => {
                    let error = format!("cannot read the keys accepted for it: {e}");
                    self.end(
                        &target,
                        &run_id,
                        trigger,
                        RunStatus::Failed,
                        Some(error),
                        started,
                        &live,
                    )
                    .await;
                    return;
                }
            }
        } else {
            keys::Taken::default()
        };
        let only_keys = (trigger == Trigger::Keys).then(|| taken.clone());
        if trigger == Trigger::Keys && taken.is_empty() {
            // A run before this one took them.
            let why = "no keys were waiting: a run before this one took them".to_string();
            self.end(
                &target,
                &run_id,
                trigger,
                RunStatus::Skipped,
                Some(why),
                started,
                &live,
            )
            .await;
            return;
        }
        self.update(&run_id, |v| {
            v.status = "running".into();
            v.started_at = Some(started);
            v.keys = only_keys.as_ref().map(|k| k.len() as u64);
        });
        self.metrics.running(1);
        // Every line the run logs carries the sync (or entity) and the run id.
        let span = tracing::info_span!("run", target_name = %name, run_id = %run_id);
        tracing::info!(parent: &span, trigger = trigger.as_str(), "run started");
        // The run goes on the engine's own runtime: its CPU-bound stretches (checking a large
        // CSV, hashing) never hold up the API, the scheduler or the signals. A run that panics
        // ends as failed, never leaving its sync "running".
        let run = {
            let jobs = self.clone();
            let (target, run_id, live) = (target.clone(), run_id.clone(), live.clone());
            tracing::Instrument::instrument(
                async move {
                    jobs.run_target(&target, &run_id, &request, only_keys, live)
                        .await
                },
                span.clone(),
            )
        };
        let outcome = match self.engine.spawn(run).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let error = format!(
                    "the run stopped on an internal error ({}); nothing was committed past its \
                     last commit, and the next run picks up from there",
                    if e.is_panic() { "a panic" } else { "cancelled" }
                );
                self.record_failure(&target, &run_id, RunStatus::Failed, &error)
                    .await;
                Outcome {
                    status: RunStatus::Failed,
                    counts: None,
                    error: Some(error),
                    writebacks: Vec::new(),
                }
            }
        };
        self.metrics.running(-1);
        drop(permit);
        let status = outcome.status.clone();
        tracing::info!(
            parent: &span,
            status = status.as_str(),
            error = outcome.error.as_deref().unwrap_or(""),
            "run finished"
        );
        if status == RunStatus::Succeeded {
            // The keys taken are done; those of a failed run stay, for the next one.
            if let Err(e) = self.keys.done(&name, &taken).await {
                tracing::warn!(sync = %name, error = %e, "cannot clear accepted keys");
            }
        }
        let secs = (Utc::now() - started).num_milliseconds().max(0) as f64 / 1000.0;
        self.metrics
            .run_finished(&name, &status, outcome.counts.as_ref(), secs);
        self.update(&run_id, |v| {
            v.counts = outcome.counts.clone();
            v.writebacks = outcome.writebacks.clone();
        });
        self.end(
            &target,
            &run_id,
            trigger,
            status,
            outcome.error,
            started,
            &live,
        )
        .await;
    }

    /// The run's end: its view, the target's slot, and the news for the scheduler. A run for
    /// keys that arrived meanwhile follows at once.
    #[allow(clippy::too_many_arguments)]
    async fn end(
        self: &Arc<Self>,
        target: &Target,
        run_id: &str,
        trigger: Trigger,
        status: RunStatus,
        error: Option<String>,
        started: DateTime<Utc>,
        live: &Live,
    ) {
        let finished = Utc::now();
        let live = live.counts();
        self.update(run_id, |v| {
            v.status = status.as_str().to_string();
            v.started_at.get_or_insert(started);
            v.finished_at = Some(finished);
            v.error = error;
            v.live = Some(live);
        });
        if status != RunStatus::Skipped
            && let Some(view) = self.view(run_id)
        {
            if let Ok(mut last) = self.last.lock() {
                last.insert(target.name.clone(), view.clone());
            }
            // (Delivery is in the background: a run never waits for a webhook.)
            self.alerts.run_ended(target.kind, &view).await;
        }
        let retry_keys = trigger == Trigger::Keys && status == RunStatus::Failed;
        let keys_waiting = match self.slots.lock() {
            Ok(mut slots) => {
                let slot = slots.entry(target.name.clone()).or_default();
                slot.current = None;
                slot.last_end = Some(finished);
                std::mem::take(&mut slot.keys_waiting)
            }
            Err(_) => false,
        };
        let _ = self.finished.send(Finished {
            target: target.name.clone(),
            run_id: run_id.to_string(),
            status,
            trigger,
        });
        if keys_waiting && !self.stopping() {
            self.keys_arrived(&target.name);
        } else if retry_keys && !self.stopping() {
            let jobs = self.clone();
            let name = target.name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(KEYS_RETRY).await;
                if !jobs.stopping() {
                    jobs.keys_arrived(&name);
                }
            });
        }
    }

    /// Run a sync, or an entity followed by its write-backs, as `backflow run NAME` would.
    async fn run_target(
        &self,
        target: &Target,
        run_id: &str,
        request: &Request,
        only_keys: Option<keys::Taken>,
        live: Arc<Live>,
    ) -> Outcome {
        let name = target.name.as_str();
        let trigger = self.trigger_of(run_id);
        let failed = |error: String| Outcome {
            status: RunStatus::Failed,
            counts: None,
            error: Some(error),
            writebacks: Vec::new(),
        };
        // A fresh load: the project's files may have changed since the server started (a
        // model edited), and each run keeps its own record of unreadable source rows.
        let project = match Project::load(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                let error = e.to_string();
                self.record_failure(target, run_id, RunStatus::Failed, &error)
                    .await;
                return failed(error);
            }
        };
        let runs = match project.select_targets(&[name.to_string()]) {
            Ok(t) => t,
            Err(e) => {
                let error = format!(
                    "{e} (the project changed since the server started; restart it to pick up \
                     new or renamed syncs)"
                );
                self.record_failure(target, run_id, RunStatus::Failed, &error)
                    .await;
                return failed(error);
            }
        };
        let names: Vec<String> = runs
            .iter()
            .map(|t| match t {
                RunTarget::Entity(n) | RunTarget::Sync(n) => n.clone(),
            })
            .collect();
        let ctx = match project.session_for(&names).await {
            Ok(c) => c,
            Err(e) => {
                let error = e.to_string();
                self.record_failure(target, run_id, RunStatus::Failed, &error)
                    .await;
                return failed(error);
            }
        };
        let mut outcome = Outcome {
            status: RunStatus::Succeeded,
            counts: None,
            error: None,
            writebacks: Vec::new(),
        };
        for run in runs {
            if crate::interrupt::requested() {
                // Stopped before this part started (opening the sources took the time): the
                // run did not happen, and says so.
                if outcome.status == RunStatus::Succeeded {
                    let error = format!(
                        "\"{name}\": the server was asked to stop before the run started \
                         (while its sources were being opened); nothing was sent"
                    );
                    if outcome.counts.is_none() {
                        self.record_failure(target, run_id, RunStatus::Interrupted, &error)
                            .await;
                    }
                    outcome.status = RunStatus::Interrupted;
                    outcome.error = Some(error);
                }
                break;
            }
            match run {
                RunTarget::Entity(entity) => {
                    let report = crate::hub::run(
                        &project,
                        &ctx,
                        &entity,
                        crate::hub::HubOptions {
                            full_resync: request.full_resync,
                            run_id: Some(run_id.to_string()),
                            only_ids: only_keys.as_ref().map(|t| t.ids.clone()),
                            trigger: trigger.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
                    outcome.counts = Some(RunCounts {
                        read: report.sources.values().map(|s| s.read).sum(),
                        invalid: report.sources.values().map(|s| s.invalid).sum(),
                        created: report.created,
                        updated: report.updated,
                        deleted: report.merged + report.retired,
                        unchanged: report.unchanged,
                        ..Default::default()
                    });
                    if report.status != RunStatus::Succeeded {
                        outcome.status = report.status;
                        outcome.error = report.error;
                        // Write-backs of a failed cycle have nothing new to send.
                        break;
                    }
                }
                RunTarget::Sync(sync) => {
                    let main = sync == name;
                    let options = RunOptions {
                        full_resync: request.full_resync,
                        only_keys: only_keys.as_ref().filter(|_| main).map(|t| t.keys.clone()),
                        run_id: main.then(|| run_id.to_string()),
                        trigger: trigger.clone(),
                        ..RunOptions::default()
                    };
                    let report =
                        crate::sync::run(&project, &ctx, &sync, options, live.clone()).await;
                    if main {
                        outcome.counts = Some(report.counts.clone());
                    } else {
                        outcome.writebacks.push(report.run_id.clone());
                    }
                    if report.status != RunStatus::Succeeded
                        && outcome.status == RunStatus::Succeeded
                    {
                        outcome.status = report.status;
                        outcome.error = report.error;
                    }
                }
            }
        }
        outcome
    }

    /// A run that failed (or was stopped) before the engine started it is in history all the
    /// same. Not when the project's folder is gone: its state would be made again there.
    async fn record_failure(&self, target: &Target, run_id: &str, status: RunStatus, error: &str) {
        if self.project.state.local_dir().is_some()
            && !self.dir.join(crate::config::CONFIG_FILE).exists()
        {
            tracing::warn!(target_name = %target.name, error, "the project's folder is gone: not recorded in its history");
            return;
        }
        let now = Utc::now().timestamp_millis();
        let record = RunRecord {
            run_id: run_id.to_string(),
            sync: target.kind.history_name(&target.name),
            status,
            started_at_ms: now,
            finished_at_ms: now,
            full_resync: false,
            counts: RunCounts::default(),
            state_version: None,
            error: Some(error.to_string()),
            behavior: None,
            destination: None,
            object: None,
            warnings: Vec::new(),
            trigger: self.trigger_of(run_id),
            keys: self.view(run_id).and_then(|v| v.keys),
        };
        if let Err(e) = history::record(&self.project.state, &record, &[]).await {
            tracing::warn!(target_name = %target.name, error = %e, "could not record a failed run");
        }
    }
}

struct Outcome {
    status: RunStatus,
    counts: Option<RunCounts>,
    error: Option<String>,
    writebacks: Vec<String>,
}
