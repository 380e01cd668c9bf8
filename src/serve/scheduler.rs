//! The scheduler: starts each target when its schedule says it is due, and the targets that
//! run `after` others when those have all finished successfully in the same round.
//!
//! - A tick that finds its target still running is skipped, and recorded in history as
//!   skipped (never queued up, never a second run at once).
//! - An interval counts from its last tick; after downtime (or a tick that came late) a
//!   schedule is due once, now, not once per missed tick. A cron line fires at its next time.
//! - `continuous` is due again when its run ended (and `min_interval` after it started).
//! - A round: each run of a target (scheduled or asked for by the API) that succeeds counts
//!   for the targets after it; a target runs when every one it names has counted since its
//!   last run. A failed run skips those after it, and those after them, with the reason.
//!   Runs for accepted keys touch a few records and start no round.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::jobs::{Finished, Jobs, Request, StartError, Trigger};
use crate::history::RunStatus;
use crate::schedule::Schedule;

/// The longest the scheduler sleeps between looks (a wall clock that jumps is noticed).
const LONGEST_SLEEP: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(jobs: Arc<Jobs>, mut finished: mpsc::UnboundedReceiver<Finished>) {
    let now = Utc::now();
    // When each scheduled target is due next.
    let mut due: HashMap<String, DateTime<Utc>> = HashMap::new();
    for t in jobs.targets.values() {
        if let Some(at) = t.schedule.next_after(now, None, None) {
            due.insert(t.name.clone(), at);
            jobs.set_next_run(&t.name, Some(at));
        }
    }
    // For each target that runs after others: those that succeeded in this round.
    let mut counted: HashMap<String, BTreeSet<String>> = HashMap::new();
    loop {
        if jobs.stopping() {
            return;
        }
        let now = Utc::now();
        let mut fire: Vec<(String, DateTime<Utc>)> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, at)| (n.clone(), *at))
            .collect();
        fire.sort_by_key(|(_, at)| *at);
        for (name, at) in fire {
            jobs.metrics
                .tick_lateness((now - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
            tick(&jobs, &name, at).await;
            let Some(target) = jobs.targets.get(&name) else {
                continue;
            };
            let next = match &target.schedule {
                // Due again when the run ends.
                Schedule::Continuous { .. } => None,
                // From the tick's own time, so that ticks do not drift with lateness.
                s => s.next_after(Utc::now(), Some(at), None),
            };
            match next {
                Some(n) => due.insert(name.clone(), n),
                None => due.remove(&name),
            };
            jobs.set_next_run(&name, next);
        }
        let wake = due
            .values()
            .min()
            .map(|at| (*at - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(LONGEST_SLEEP)
            .min(LONGEST_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
            news = finished.recv() => {
                let Some(news) = news else { return };
                if jobs.stopping() {
                    return;
                }
                after_run(&jobs, &news, &mut due, &mut counted).await;
            }
            _ = crate::interrupt::stopped() => return,
        }
    }
}

/// A target's schedule is due: start it, or record the skip.
async fn tick(jobs: &Arc<Jobs>, name: &str, at: DateTime<Utc>) {
    match jobs.start(name, Trigger::Schedule, Request::default()) {
        Ok(run_id) => tracing::debug!(target_name = name, %run_id, due = %at, "scheduled run"),
        Err(StartError::Running { run_id, .. }) => {
            jobs.skip(
                name,
                Trigger::Schedule,
                format!(
                    "skipped: the tick due at {} found run {run_id} still going",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
            .await;
        }
        Err(e) => tracing::debug!(target_name = name, error = %e, "tick not run"),
    }
}

/// A run ended: a continuous schedule is due again, and those after it may run (or are
/// skipped).
async fn after_run(
    jobs: &Arc<Jobs>,
    news: &Finished,
    due: &mut HashMap<String, DateTime<Utc>>,
    counted: &mut HashMap<String, BTreeSet<String>>,
) {
    let Some(target) = jobs.targets.get(&news.target) else {
        return;
    };
    if let Schedule::Continuous { .. } = target.schedule {
        let (start, end) = jobs.last_times(&target.name);
        if let Some(at) = target.schedule.next_after(Utc::now(), start, end) {
            due.insert(target.name.clone(), at);
            jobs.set_next_run(&target.name, Some(at));
        }
    }
    if news.trigger == Trigger::Keys || news.status == RunStatus::Skipped {
        return;
    }
    if news.status != RunStatus::Succeeded {
        // Those after it are skipped, and those after them.
        let reason = format!(
            "skipped: \"{}\" did not succeed in this round (run {}: {})",
            news.target,
            news.run_id,
            news.status.as_str()
        );
        let mut todo: VecDeque<String> = target.dependents.iter().cloned().collect();
        let mut seen = BTreeSet::new();
        while let Some(d) = todo.pop_front() {
            if !seen.insert(d.clone()) {
                continue;
            }
            counted.remove(&d);
            jobs.skip(&d, Trigger::After, reason.clone()).await;
            if let Some(t) = jobs.targets.get(&d) {
                todo.extend(t.dependents.iter().cloned());
            }
        }
        return;
    }
    for d in &target.dependents {
        let Some(dependent) = jobs.targets.get(d) else {
            continue;
        };
        let done = counted.entry(d.clone()).or_default();
        done.insert(news.target.clone());
        if !dependent.after.iter().all(|a| done.contains(a)) {
            continue;
        }
        counted.remove(d);
        match jobs.start(d, Trigger::After, Request::default()) {
            Ok(_) => {}
            Err(StartError::Running { run_id, .. }) => {
                jobs.skip(
                    d,
                    Trigger::After,
                    format!(
                        "skipped: \"{}\" finished, but run {run_id} was still going",
                        news.target
                    ),
                )
                .await;
            }
            Err(e) => tracing::debug!(target_name = %d, error = %e, "not run"),
        }
    }
}
