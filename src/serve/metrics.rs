//! `GET /metrics`: what the server did, in the Prometheus (OpenMetrics) text format, through
//! the prometheus-client crate. Runs by target and status, records by operation, rejected and
//! invalid records, run durations, the last success of each target, runs waiting for a slot,
//! runs going, accepted keys waiting, and how late scheduled ticks fire.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::history::{RunCounts, RunStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Of {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    target: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    target: String,
    operation: String,
}

pub struct Metrics {
    registry: Registry,
    runs: Family<Outcome, Counter>,
    records: Family<Operation, Counter>,
    rejected: Family<Of, Counter>,
    invalid: Family<Of, Counter>,
    duration: Family<Of, Histogram>,
    last_success: Family<Of, Gauge<f64, AtomicU64>>,
    queued: Gauge,
    running: Gauge,
    keys_waiting: Gauge,
    lateness: Histogram,
}

impl Metrics {
    pub fn new<'a>(targets: impl Iterator<Item = &'a String>) -> Metrics {
        let mut registry = Registry::with_prefix("backflow");
        let runs = Family::<Outcome, Counter>::default();
        registry.register("runs", "Runs by sync or entity and outcome", runs.clone());
        let records = Family::<Operation, Counter>::default();
        registry.register(
            "records",
            "Records sent by sync or entity and operation (created, updated, deleted)",
            records.clone(),
        );
        let rejected = Family::<Of, Counter>::default();
        registry.register(
            "rejected_records",
            "Records the destination refused",
            rejected.clone(),
        );
        let invalid = Family::<Of, Counter>::default();
        registry.register(
            "invalid_records",
            "Rows never sent: a NULL or duplicate key, an unreadable source row",
            invalid.clone(),
        );
        let duration = Family::<Of, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.05, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "run_duration_seconds",
            "How long runs took",
            duration.clone(),
        );
        let last_success = Family::<Of, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When the last successful run of each sync or entity ended (Unix time)",
            last_success.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "runs_queued",
            "Runs started and waiting for a free run slot",
            queued.clone(),
        );
        let running = Gauge::default();
        registry.register("runs_running", "Runs going", running.clone());
        let keys_waiting = Gauge::default();
        registry.register(
            "keys_waiting",
            "Keys accepted by the API and not yet synced",
            keys_waiting.clone(),
        );
        let lateness = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "schedule_lateness_seconds",
            "How long after its due time each scheduled tick fired",
            lateness.clone(),
        );
        let m = Metrics {
            registry,
            runs,
            records,
            rejected,
            invalid,
            duration,
            last_success,
            queued,
            running,
            keys_waiting,
            lateness,
        };
        // Every target is listed from the start, with zeros.
        for t in targets {
            let _ = m.runs.get_or_create(&Outcome {
                target: t.clone(),
                status: "succeeded".into(),
            });
            let _ = m.runs.get_or_create(&Outcome {
                target: t.clone(),
                status: "failed".into(),
            });
        }
        m
    }

    pub fn run_finished(
        &self,
        target: &str,
        status: &RunStatus,
        counts: Option<&RunCounts>,
        secs: f64,
    ) {
        let of = Of {
            target: target.to_string(),
        };
        self.runs
            .get_or_create(&Outcome {
                target: target.to_string(),
                status: status.as_str().to_string(),
            })
            .inc();
        if *status == RunStatus::Skipped {
            return;
        }
        self.duration.get_or_create(&of).observe(secs);
        if *status == RunStatus::Succeeded {
            self.succeeded_at(target, chrono::Utc::now().timestamp_millis());
        }
        if let Some(c) = counts {
            for (op, n) in [
                ("created", c.created),
                ("updated", c.updated),
                ("deleted", c.deleted),
            ] {
                self.records
                    .get_or_create(&Operation {
                        target: target.to_string(),
                        operation: op.into(),
                    })
                    .inc_by(n);
            }
            self.rejected.get_or_create(&of).inc_by(c.rejected);
            self.invalid.get_or_create(&of).inc_by(c.invalid);
        }
    }

    pub fn succeeded_at(&self, target: &str, at_ms: i64) {
        self.last_success
            .get_or_create(&Of {
                target: target.to_string(),
            })
            .set(at_ms as f64 / 1000.0);
    }

    pub fn queued(&self, by: i64) {
        self.queued.inc_by(by);
    }

    pub fn running(&self, by: i64) {
        self.running.inc_by(by);
    }

    pub fn tick_lateness(&self, secs: f64) {
        self.lateness.observe(secs);
    }

    /// The metrics as text, with the keys waiting now.
    pub fn encode(&self, keys_waiting: u64) -> String {
        self.keys_waiting.set(keys_waiting as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}
