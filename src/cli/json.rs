//! The JSON scripts read: with `--json`, `run`, `plan`, `check` and `history` print one object
//! per line, each a [`Record`] of one documented shape (README, "JSON output"), and `run`
//! writes every result of the invocation to `run_results.json` in the state folder. A new
//! field may appear within a `schema_version`; a field that changes meaning or goes away moves
//! it to the next one.

use serde::Serialize;

use crate::history::{RecordKind, RunCounts, RunRecord, RunStatus, SampleRecord};
use crate::sync::{PlanReport, SyncReport};

/// The version of the JSON shapes below.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of JSON output: a sync, an entity, or a problem that stopped the command.
#[derive(Debug, Serialize)]
pub struct Record<T: Serialize> {
    pub schema_version: u32,
    /// `run`, `plan`, `check` or `history`.
    pub command: &'static str,
    /// `sync`, `entity` or `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub body: T,
}

impl<T: Serialize> Record<T> {
    pub fn new(command: &'static str, kind: &'static str, body: T) -> Self {
        Record {
            schema_version: SCHEMA_VERSION,
            command,
            kind,
            body,
        }
    }

    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A sync as run, planned, checked or found in history. Fields a command does not know are
/// null (`check` and `plan` have no state version; `check` has no counts and no samples).
#[derive(Debug, Serialize)]
pub struct SyncRecord {
    pub sync: String,
    /// The run's id (`plan` and `check` get one too: a plan's samples can be told apart).
    pub run_id: Option<String>,
    pub status: RunStatus,
    pub behavior: Option<String>,
    pub destination: Option<String>,
    pub object: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// The part of `duration_ms` opening the sources took (run only).
    pub sources_ms: Option<i64>,
    pub full_resync: bool,
    pub state_version: Option<u64>,
    pub watermark: Option<String>,
    #[serde(flatten)]
    pub counts: Option<RunCounts>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub samples: Vec<Sample>,
    /// `plan`: when the sync runs by itself under `serve` (`manual`, `every 30s`, …); null
    /// elsewhere.
    pub schedule: Option<String>,
    /// `plan`: its next run by that schedule (RFC 3339, UTC), when it has one.
    pub next_run: Option<String>,
    /// `history`: what started the run under `serve` (`schedule`, `after`, `api`, `keys`);
    /// null for `backflow run` and elsewhere.
    pub trigger: Option<String>,
    /// `history`: how many keys a run for given keys was for.
    pub keys: Option<u64>,
}

/// A record a command shows as an example: `invalid` or `rejected` (run, history, plan), what
/// a run would do with it (`create`, `update`, `delete`: plan), or what a test run
/// (`run --sample`) sent (`create`, `update`, `upsert`, `append`, `delete`, with the
/// destination's answer as `reason`: `accepted` or why it refused).
#[derive(Debug, Serialize)]
pub struct Sample {
    pub kind: &'static str,
    /// The key, as text (null when NULL or unknown).
    pub key: Option<String>,
    /// Why (invalid and rejected records).
    pub reason: Option<String>,
    /// The record's fields as a JSON object (a CSV line that could not be read: its line and
    /// text).
    pub record: serde_json::Value,
}

impl From<&SampleRecord> for Sample {
    fn from(s: &SampleRecord) -> Self {
        Sample {
            kind: match s.kind {
                RecordKind::Invalid => "invalid",
                RecordKind::Rejected => "rejected",
            },
            key: s.key.clone(),
            reason: Some(s.reason.clone()),
            record: serde_json::from_str(&s.record)
                .unwrap_or_else(|_| serde_json::Value::String(s.record.clone())),
        }
    }
}

impl From<&crate::sync::SentRecord> for Sample {
    fn from(s: &crate::sync::SentRecord) -> Self {
        Sample {
            kind: match s.op.as_str() {
                "create" => "create",
                "update" => "update",
                "delete" => "delete",
                "append" => "append",
                _ => "upsert",
            },
            key: s.key.clone(),
            reason: Some(s.answer.clone()),
            record: serde_json::from_str(&s.record)
                .unwrap_or_else(|_| serde_json::Value::String(s.record.clone())),
        }
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

impl SyncRecord {
    pub fn from_run(r: &SyncReport, started_at_ms: i64, full_resync: bool) -> Self {
        SyncRecord {
            sync: r.sync.clone(),
            run_id: Some(r.run_id.clone()),
            status: r.status.clone(),
            behavior: Some(r.behavior.to_string()),
            destination: Some(r.destination.clone()),
            object: Some(r.object.clone()),
            started_at: rfc3339(started_at_ms),
            duration_ms: Some(r.duration_ms),
            sources_ms: Some(r.sources_ms),
            full_resync,
            state_version: r.state_version,
            watermark: r.watermark.clone(),
            counts: Some(r.counts.clone()),
            error: r.error.clone(),
            warnings: r.warnings.clone(),
            samples: r
                .sent
                .iter()
                .map(Sample::from)
                .chain(r.samples.iter().map(Sample::from))
                .collect(),
            schedule: None,
            next_run: None,
            trigger: None,
            keys: None,
        }
    }

    pub fn from_plan(r: &PlanReport, started_at_ms: i64, full_resync: bool) -> Self {
        let mut samples: Vec<Sample> = Vec::new();
        for (kind, list) in [
            ("create", &r.samples.create),
            ("update", &r.samples.update),
            ("delete", &r.samples.delete),
        ] {
            samples.extend(list.iter().map(|v| Sample {
                kind,
                key: None,
                reason: None,
                record: v.clone(),
            }));
        }
        samples.extend(r.samples.invalid.iter().map(Sample::from));
        SyncRecord {
            sync: r.sync.clone(),
            run_id: Some(r.run_id.clone()),
            status: r.status.clone(),
            behavior: Some(r.behavior.to_string()),
            destination: Some(r.destination.clone()),
            object: Some(r.object.clone()),
            started_at: rfc3339(started_at_ms),
            duration_ms: Some(r.duration_ms),
            sources_ms: None,
            full_resync,
            state_version: None,
            watermark: None,
            counts: Some(r.counts.clone()),
            error: r.error.clone(),
            warnings: r.warnings.clone(),
            samples,
            schedule: None,
            next_run: None,
            trigger: None,
            keys: None,
        }
    }

    pub fn from_history(r: &RunRecord, samples: &[SampleRecord]) -> Self {
        SyncRecord {
            sync: r.sync.clone(),
            run_id: Some(r.run_id.clone()),
            status: r.status.clone(),
            behavior: r.behavior.clone(),
            destination: r.destination.clone(),
            object: r.object.clone(),
            started_at: rfc3339(r.started_at_ms),
            duration_ms: Some(r.finished_at_ms - r.started_at_ms),
            sources_ms: None,
            full_resync: r.full_resync,
            state_version: r.state_version,
            watermark: None,
            counts: Some(r.counts.clone()),
            error: r.error.clone(),
            warnings: r.warnings.clone(),
            samples: samples.iter().map(Sample::from).collect(),
            schedule: None,
            next_run: None,
            trigger: r.trigger.clone(),
            keys: r.keys,
        }
    }
}

/// What `check` found for one sync or entity.
#[derive(Debug, Serialize)]
pub struct CheckRecord {
    /// A source's warnings (a dbt model the warehouse lacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    pub status: RunStatus,
    pub behavior: Option<String>,
    pub destination: Option<String>,
    pub object: Option<String>,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// A problem that stopped the command before any sync ran (exit code 2).
#[derive(Debug, Serialize)]
pub struct ErrorRecord {
    pub status: RunStatus,
    pub error: String,
}

/// `run_results.json`: everything one `run` did, for a scheduler to pick up.
#[derive(Debug, Serialize)]
pub struct RunResults {
    pub schema_version: u32,
    pub command: &'static str,
    pub invocation_id: String,
    /// The syncs and entities asked for (empty: all).
    pub selected: Vec<String>,
    pub full_resync: bool,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub elapsed_ms: i64,
    /// `succeeded` when every result did, `interrupted` when a stop was asked for, else
    /// `failed`.
    pub status: RunStatus,
    /// One [`Record`] per sync or entity run, in the order they ran; a problem that stopped
    /// the command is an `error` record.
    pub results: Vec<serde_json::Value>,
}

impl RunResults {
    pub fn new(selected: Vec<String>, full_resync: bool, started_at_ms: i64) -> Self {
        RunResults {
            schema_version: SCHEMA_VERSION,
            command: "run",
            invocation_id: uuid::Uuid::new_v4().simple().to_string(),
            selected,
            full_resync,
            started_at: rfc3339(started_at_ms),
            finished_at: None,
            elapsed_ms: 0,
            status: RunStatus::Succeeded,
            results: Vec::new(),
        }
    }

    pub fn push<T: Serialize>(&mut self, record: &Record<T>) {
        if let Ok(v) = serde_json::to_value(record) {
            self.results.push(v);
        }
    }

    /// Close the invocation and write it to `run_results.json` in the state folder
    /// (replacing the last one, atomically). A failure is logged: the runs are recorded in
    /// history either way.
    pub async fn write(
        mut self,
        state: &crate::state::StateStore,
        status: RunStatus,
        started_at_ms: i64,
    ) {
        let now = chrono::Utc::now().timestamp_millis();
        self.finished_at = rfc3339(now);
        self.elapsed_ms = now - started_at_ms;
        self.status = status;
        let bytes = match serde_json::to_vec_pretty(&self) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode run_results.json");
                return;
            }
        };
        if let Err(e) = state.put_replace(RUN_RESULTS, bytes).await {
            tracing::warn!(error = %e, "could not write run_results.json");
        }
    }
}

/// Where [`RunResults`] go, relative to the state folder.
pub const RUN_RESULTS: &str = "run_results.json";
