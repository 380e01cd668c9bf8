//! What a run reports: counts and samples as it goes ([`Tally`]), and at its end
//! ([`SyncReport`], [`PlanReport`]), as printed and as stored in history.

use serde::Serialize;

use crate::behavior::Behavior;
use crate::destinations::FinishOutcome;
use crate::history::{RecordKind, RunCounts, RunStatus, SAMPLE_LIMIT, SampleRecord};
use crate::values::scalar_text;

/// The outcome of one sync's run, as printed and stored in history.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub sync: String,
    pub status: RunStatus,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub behavior: Behavior,
    pub destination: String,
    pub object: String,
    pub run_id: String,
    /// From opening the sources the sync reads to the end of the run (`sources_ms` included).
    pub duration_ms: i64,
    /// Of `duration_ms`, the time opening the sources the sync reads took before the sync
    /// started (for a CSV source: copying it from its object store, inferring its column
    /// types, checking every row). A source several syncs read is opened once, and counted
    /// in each of them.
    pub sources_ms: i64,
    pub state_version: Option<u64>,
    pub watermark: Option<String>,
    pub error: Option<String>,
    /// What the user should know although the run succeeded (see [`warnings`]).
    pub warnings: Vec<String>,
    /// A test run's records as sent, with what the destination answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<SentRecord>,
    /// Up to 100 invalid and 100 rejected records, with reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SampleRecord>,
}

/// What a run would do, from `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub sync: String,
    /// An id of this plan (it commits nothing; history has no record of it).
    pub run_id: String,
    pub status: RunStatus,
    pub duration_ms: i64,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub behavior: Behavior,
    pub destination: String,
    pub object: String,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// Up to 5 records per action (create, update, delete) and the invalid ones.
    pub samples: PlanSamples,
}

/// Samples of what a run would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanSamples {
    pub create: Vec<serde_json::Value>,
    pub update: Vec<serde_json::Value>,
    pub delete: Vec<serde_json::Value>,
    pub invalid: Vec<SampleRecord>,
}

/// What a run's (or a plan's) counts call for telling the user.
pub(crate) fn warnings(sync: &str, behavior: Behavior, counts: &RunCounts) -> Vec<String> {
    let mut out = Vec::new();
    if behavior == Behavior::Mirror && counts.unowned > 0 {
        out.push(unowned_warning(sync, &counts.unowned.to_string()));
    }
    out
}

/// Why a mirror without state leaves `count` records of its destination alone.
pub(crate) fn unowned_warning(sync: &str, count: &str) -> String {
    format!(
        "{count} record(s) in the destination object are not in the model and are left alone: \
         sync \"{sync}\" has no state, so nothing says backflow created them. If it did (its \
         state was lost or reset), `backflow state adopt {sync}` takes them over, and the next \
         run deletes them (`backflow plan {sync}` shows which first)"
    )
}

/// One record a test run (`run --sample`) sent.
#[derive(Debug, Clone, Serialize)]
pub struct SentRecord {
    /// `create`, `update`, `upsert`, `append` or `delete`.
    pub op: String,
    pub key: Option<String>,
    /// The record's fields as sent (JSON).
    pub record: String,
    /// What the destination answered: `accepted`, or its reason for refusing.
    pub answer: String,
}

/// Counts and samples of a run in progress.
#[derive(Debug, Default)]
pub struct Tally {
    pub counts: RunCounts,
    pub samples: Vec<SampleRecord>,
    /// A test run's records as sent (see [`SentRecord`]).
    pub sent: Vec<SentRecord>,
    /// What the run tells the user besides its counts (a change feed it could not use), shown
    /// with its warnings.
    pub notes: Vec<String>,
    invalid_sampled: usize,
    rejected_sampled: usize,
}

impl Tally {
    /// Keep a sample of an invalid or rejected record (up to [`SAMPLE_LIMIT`] of each).
    pub(crate) fn sample(
        &mut self,
        kind: RecordKind,
        key: Option<String>,
        reason: String,
        record: String,
    ) {
        let n = match kind {
            RecordKind::Invalid => &mut self.invalid_sampled,
            RecordKind::Rejected => &mut self.rejected_sampled,
        };
        if *n < SAMPLE_LIMIT {
            *n += 1;
            self.samples.push(SampleRecord {
                kind,
                key,
                reason,
                record,
            });
        }
    }

    /// Whether another invalid record would still be sampled.
    pub(crate) fn samples_invalid(&self) -> bool {
        self.invalid_sampled < SAMPLE_LIMIT
    }

    /// What a destination reported in `finish` was counted as written until now: move it.
    pub fn finished(&mut self, key: &[String], outcome: &FinishOutcome) {
        let skipped = outcome.skipped.min(self.counts.created);
        self.counts.created -= skipped;
        self.counts.skipped += skipped;
        self.counts.retries += outcome.retries;
        for l in &outcome.rejected {
            let c = &mut self.counts;
            if c.updated > 0 {
                c.updated -= 1;
            } else {
                c.created = c.created.saturating_sub(1);
            }
            c.rejected += 1;
            let text = scalar_text(&l.key);
            // The key fields and their values (a composite key's text is the list of them).
            let parts = crate::keys::key_parts(&text, key.len())
                .unwrap_or_else(|_| vec![text.clone(); key.len()]);
            let record: serde_json::Map<String, serde_json::Value> = key
                .iter()
                .cloned()
                .zip(parts.into_iter().map(serde_json::Value::String))
                .collect();
            let record = serde_json::Value::Object(record).to_string();
            self.sample(RecordKind::Rejected, Some(text), l.reason.clone(), record);
        }
    }
}
