//! Alerts: `[alerts.NAME]` webhooks told when a sync or entity fails, recovers, rejects or
//! leaves out more records than a threshold, or has not succeeded for too long.
//!
//! One alert per transition: a condition is *raised* once, then stays raised (and quiet) until
//! it clears (a success, a run back under the threshold), so a sync failing every minute alerts
//! once. Which conditions are raised is kept in the state (`serve/alerts.json`), so a restart
//! does not alert again either. Delivery runs in a task of its own, retried with backoff, and
//! never holds up or fails a run; every alert, delivered or given up on, is recorded under
//! `alerts/` in the state (`GET /api/alerts`). The URL comes from the environment and is never
//! shown.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::jobs::{Kind, RunView};
use crate::config::alert::WebhookAlert;
use crate::history::{self, AlertRecord};
use crate::project::Project;

/// Where raised conditions are kept, under the state root.
const STATE: &str = "serve/alerts.json";

/// Deliveries tried per alert, with a doubling pause from one second.
const ATTEMPTS: u32 = 5;

/// How often staleness is looked at.
pub const STALENESS_EVERY: Duration = Duration::from_secs(5);

struct Watch {
    name: String,
    config: WebhookAlert,
    url: String,
    timeout: Duration,
    stale_after: Option<chrono::Duration>,
}

impl Watch {
    fn covers(&self, target: &str) -> bool {
        self.config.on.is_empty() || self.config.on.iter().any(|t| t == target)
    }
}

/// Raised conditions: alert → target → conditions.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Raised(BTreeMap<String, BTreeMap<String, BTreeSet<String>>>);

pub struct Alerts {
    project: Arc<Project>,
    watches: Vec<Watch>,
    raised: Mutex<Raised>,
    /// The last success of each target (from history at start, then as runs end).
    last_success: Mutex<HashMap<String, DateTime<Utc>>>,
    started: DateTime<Utc>,
    client: reqwest::Client,
}

/// A transition to tell.
struct Note {
    condition: &'static str,
    message: String,
}

impl Alerts {
    /// The project's alerts, each URL read from its environment variable (an error names the
    /// variable missing).
    pub async fn new(project: Arc<Project>) -> Result<Alerts, String> {
        let mut watches = Vec::new();
        for (name, alert) in &project.config.alerts {
            let w = alert.webhook();
            let url = std::env::var(&w.url_env)
                .ok()
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "alert \"{name}\": the environment variable {} (its webhook's URL) is not set",
                        w.url_env
                    )
                })?;
            url::Url::parse(url.trim()).map_err(|_| {
                format!(
                    "alert \"{name}\": the environment variable {} does not hold a URL",
                    w.url_env
                )
            })?;
            let stale_after = w
                .no_success_for
                .as_deref()
                .and_then(crate::duration::parse)
                .and_then(|d| chrono::Duration::from_std(d).ok());
            watches.push(Watch {
                name: name.clone(),
                config: w.clone(),
                url: url.trim().to_string(),
                timeout: w
                    .timeout
                    .as_deref()
                    .and_then(crate::duration::parse)
                    .unwrap_or(Duration::from_secs(10)),
                stale_after,
            });
        }
        let raised = match project.state.read(STATE).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "alert state unreadable: starting afresh");
                Raised::default()
            }),
            Err(_) => Raised::default(),
        };
        Ok(Alerts {
            project,
            watches,
            raised: Mutex::new(raised),
            last_success: Mutex::new(HashMap::new()),
            started: Utc::now(),
            client: reqwest::Client::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// A success of `target` at `at` (read from history at start).
    pub fn succeeded_at(&self, target: &str, at: DateTime<Utc>) {
        if let Ok(mut l) = self.last_success.lock() {
            let e = l.entry(target.to_string()).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Raise `condition` of `target` for `watch`: true when it was not raised yet.
    fn raise(&self, watch: &str, target: &str, condition: &str) -> bool {
        self.raised.lock().is_ok_and(|mut r| {
            r.0.entry(watch.to_string())
                .or_default()
                .entry(target.to_string())
                .or_default()
                .insert(condition.to_string())
        })
    }

    /// Clear `condition`: true when it was raised.
    fn clear(&self, watch: &str, target: &str, condition: &str) -> bool {
        self.raised.lock().is_ok_and(|mut r| {
            r.0.get_mut(watch)
                .and_then(|t| t.get_mut(target))
                .is_some_and(|c| c.remove(condition))
        })
    }

    async fn save(&self) {
        let bytes = match self.raised.lock() {
            Ok(r) => serde_json::to_vec(&*r).unwrap_or_default(),
            Err(_) => return,
        };
        if let Err(e) = self.project.state.put_replace(STATE, bytes).await {
            tracing::warn!(error = %e, "cannot keep the alert state");
        }
    }

    /// A run ended: raise and clear conditions, and send what changed.
    pub async fn run_ended(self: &Arc<Self>, kind: Kind, run: &RunView) {
        if self.watches.is_empty() {
            return;
        }
        let target = run.target.as_str();
        let what = match kind {
            Kind::Sync => format!("sync \"{target}\""),
            Kind::Entity => format!("entity \"{target}\""),
        };
        let failed = matches!(run.status.as_str(), "failed" | "guarded");
        let succeeded = run.status == "succeeded";
        if succeeded {
            self.succeeded_at(target, run.finished_at.unwrap_or_else(Utc::now));
        }
        let mut changed = false;
        for w in self.watches.iter().filter(|w| w.covers(target)) {
            let mut notes = Vec::new();
            if failed && self.raise(&w.name, target, "failure") {
                changed = true;
                if w.config.on_failure {
                    notes.push(Note {
                        condition: "failure",
                        message: format!(
                            "✗ {what} {} (run {}): {}",
                            if run.status == "guarded" {
                                "was stopped by its delete guard"
                            } else {
                                "failed"
                            },
                            run.run_id,
                            run.error.as_deref().unwrap_or("no reason recorded")
                        ),
                    });
                }
            }
            if succeeded {
                if self.clear(&w.name, target, "failure") {
                    changed = true;
                    if w.config.on_recovery {
                        notes.push(Note {
                            condition: "recovery",
                            message: format!("✓ {what} recovered: run {} succeeded", run.run_id),
                        });
                    }
                }
                changed |= self.clear(&w.name, target, "no_success_for");
            }
            if let Some(counts) = run.counts.as_ref().filter(|_| failed || succeeded) {
                for (condition, threshold, n, label) in [
                    (
                        "rejected_over",
                        w.config.rejected_over,
                        counts.rejected,
                        "rejected",
                    ),
                    (
                        "invalid_over",
                        w.config.invalid_over,
                        counts.invalid,
                        "invalid",
                    ),
                ] {
                    let Some(threshold) = threshold else { continue };
                    if threshold.exceeded(n, counts.read) {
                        if self.raise(&w.name, target, condition) {
                            changed = true;
                            notes.push(Note {
                                condition,
                                message: format!(
                                    "⚠ {what}: {n} {label} records of {} read in run {}, over \
                                     {threshold}",
                                    counts.read, run.run_id
                                ),
                            });
                        }
                    } else if succeeded {
                        changed |= self.clear(&w.name, target, condition);
                    }
                }
            }
            for note in notes {
                self.send(w, target, kind, Some(run), note);
            }
        }
        if changed {
            self.save().await;
        }
    }

    /// Raise `no_success_for` for every watched target without a success for that long.
    pub async fn look_for_stale(self: &Arc<Self>, targets: &[(String, Kind)]) {
        let now = Utc::now();
        let mut changed = false;
        for w in &self.watches {
            let Some(after) = w.stale_after else { continue };
            for (target, kind) in targets.iter().filter(|(t, _)| w.covers(t)) {
                let last = self
                    .last_success
                    .lock()
                    .ok()
                    .and_then(|l| l.get(target).copied());
                if now - last.unwrap_or(self.started) <= after {
                    continue;
                }
                if self.raise(&w.name, target, "no_success_for") {
                    changed = true;
                    let what = match kind {
                        Kind::Sync => format!("sync \"{target}\""),
                        Kind::Entity => format!("entity \"{target}\""),
                    };
                    let message = match last {
                        Some(t) => format!(
                            "⏱ {what} has not succeeded since {} (no_success_for = {})",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            w.config.no_success_for.as_deref().unwrap_or_default()
                        ),
                        None => format!(
                            "⏱ {what} has not succeeded since the server started at {} \
                             (no_success_for = {})",
                            self.started
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            w.config.no_success_for.as_deref().unwrap_or_default()
                        ),
                    };
                    self.send(
                        w,
                        target,
                        *kind,
                        None,
                        Note {
                            condition: "no_success_for",
                            message,
                        },
                    );
                }
            }
        }
        if changed {
            self.save().await;
        }
    }

    /// Deliver in the background, retried with backoff; recorded either way.
    fn send(
        self: &Arc<Self>,
        w: &Watch,
        target: &str,
        kind: Kind,
        run: Option<&RunView>,
        note: Note,
    ) {
        let body = serde_json::to_vec(&serde_json::json!({
            "text": format!("backflow: {}", note.message),
            "alert": w.name,
            "target": target,
            "kind": kind,
            "condition": note.condition,
            "run_id": run.map(|r| r.run_id.clone()),
            "status": run.map(|r| r.status.clone()),
            "error": run.and_then(|r| r.error.clone()),
            "counts": run.and_then(|r| r.counts.clone()),
            "at": Utc::now().to_rfc3339(),
        }))
        .unwrap_or_default();
        let mut record = AlertRecord {
            alert: w.name.clone(),
            target: target.to_string(),
            condition: note.condition.to_string(),
            message: note.message,
            run_id: run.map(|r| r.run_id.clone()),
            sent_at: 0,
            delivered: false,
            attempts: 0,
            error: None,
        };
        let (url, timeout) = (w.url.clone(), w.timeout);
        let alerts = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(1);
            while record.attempts < ATTEMPTS {
                record.attempts += 1;
                let sent = alerts
                    .client
                    .post(&url)
                    .timeout(timeout)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        record.delivered = true;
                        record.error = None;
                        break;
                    }
                    // (Never the URL: it may carry a secret.)
                    Ok(r) => record.error = Some(format!("the webhook answered {}", r.status())),
                    Err(e) if e.is_timeout() => {
                        record.error = Some(format!(
                            "the webhook did not answer within {timeout:?} (timeout)"
                        ))
                    }
                    Err(_) => record.error = Some("the webhook could not be reached".into()),
                }
                if record.attempts < ATTEMPTS {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
            record.sent_at = Utc::now().timestamp_millis();
            if !record.delivered {
                tracing::warn!(
                    alert = %record.alert,
                    target_name = %record.target,
                    error = ?record.error,
                    "alert not delivered"
                );
            }
            if let Err(e) = history::record_alert(&alerts.project.state, &record).await {
                tracing::warn!(error = %e, "cannot record an alert");
            }
        });
    }
}
