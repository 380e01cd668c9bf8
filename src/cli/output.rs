//! What `run` and `plan` print for people (JSON is in `json`).

use crate::history::{self, RunStatus};
use crate::sync::{PlanReport, SyncReport};

/// A run's time, and the part of it opening its sources took when that shows (`4.3s, of
/// which opening sources 4.1s`).
fn took(duration_ms: i64, sources_ms: i64) -> String {
    let secs = |ms: i64| ms as f64 / 1000.0;
    if sources_ms >= 100 {
        format!(
            "{:.1}s, of which opening sources {:.1}s",
            secs(duration_ms),
            secs(sources_ms)
        )
    } else {
        format!("{:.1}s", secs(duration_ms))
    }
}

/// Warnings go to stderr, like errors, so that stdout stays the results.
pub(super) fn print_warnings(warnings: &[String]) {
    for w in warnings {
        err!("    warning: {w}");
    }
}

/// An entity's run as JSON: the hub's report, its samples in the common sample shape.
pub(super) fn entity_json(r: &crate::hub::HubReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        let samples: Vec<super::json::Sample> =
            r.samples.iter().map(super::json::Sample::from).collect();
        o.insert(
            "samples".into(),
            serde_json::to_value(samples).unwrap_or_default(),
        );
        o.insert("warnings".into(), serde_json::json!([]));
    }
    v
}

pub(super) fn print_run(r: &SyncReport) {
    let c = &r.counts;
    let mark = if r.status == RunStatus::Succeeded {
        "✓"
    } else {
        "✗"
    };
    out!(
        "{mark} {}  ({} → {}/{})  read {}  created {}  updated {}  deleted {}  unchanged {}  invalid {}  rejected {}{}{}  [{}]",
        r.sync,
        r.behavior,
        r.destination,
        r.object,
        c.read,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged,
        c.invalid,
        c.rejected,
        if c.skipped > 0 {
            format!("  skipped {}", c.skipped)
        } else {
            String::new()
        },
        if c.retries > 0 {
            format!("  retries {}", c.retries)
        } else {
            String::new()
        } + &if c.unowned > 0 {
            format!("  unowned {}", c.unowned)
        } else {
            String::new()
        },
        took(r.duration_ms, r.sources_ms)
    );
    if c.held > 0 {
        out!(
            "    held: {} record(s) that left the model were not deleted: the model's sources left out rows they could not read, which may be them (fix the rows and run again)",
            c.held
        );
    }
    print_warnings(&r.warnings);
    for s in &r.sent {
        out!(
            "    sent ({}): key {} → {}\n      {}",
            s.op,
            s.key.as_deref().unwrap_or("NULL"),
            s.answer,
            s.record
        );
    }
    for s in r.samples.iter().take(5) {
        let kind = match s.kind {
            history::RecordKind::Invalid => "invalid",
            history::RecordKind::Rejected => "rejected",
        };
        out!(
            "    {kind}: key {} — {}",
            s.key.as_deref().unwrap_or("NULL"),
            s.reason
        );
    }
    if r.samples.len() > 5 {
        out!(
            "    … {} more in `backflow history {} --samples`",
            r.samples.len() - 5,
            r.sync
        );
    }
    if let Some(e) = &r.error {
        err!("    error: {e}");
    }
}

pub(super) fn print_hub_run(r: &crate::hub::HubReport) {
    let mark = if r.status == RunStatus::Succeeded {
        "✓"
    } else {
        "✗"
    };
    let read: u64 = r.sources.values().map(|s| s.read).sum();
    let per_source = r
        .sources
        .iter()
        .map(|(n, s)| format!("{n} {}", s.read))
        .collect::<Vec<_>>()
        .join(", ");
    let sum = |f: fn(&crate::hub::SourceCounts) -> u64| r.sources.values().map(f).sum::<u64>();
    out!(
        "{mark} {}  (hub, {} cycle{})  read {read} ({per_source})  linked by id {}  matched {}  new {}{}{}{}  golden: created {}  updated {}  unchanged {}  merged {}{}  invalid {}  [{}]",
        r.entity,
        r.cycles,
        if r.cycles == 1 { "" } else { "s" },
        sum(|s| s.by_id),
        sum(|s| s.matched),
        sum(|s| s.new),
        match sum(|s| s.unlinked) {
            0 => String::new(),
            n => format!("  unlinked {n}"),
        },
        match sum(|s| s.deleted) {
            0 => String::new(),
            n => format!("  deleted in sources {n}"),
        },
        match sum(|s| s.quarantined) {
            0 => String::new(),
            n => format!("  quarantined {n} (`backflow hub quarantine {}`)", r.entity),
        },
        r.created,
        r.updated,
        r.unchanged,
        r.merged,
        match r.retired {
            0 => String::new(),
            n => format!("  retired {n}"),
        },
        sum(|s| s.invalid),
        took(r.duration_ms, r.sources_ms)
    );
    for s in r.samples.iter().take(5) {
        out!(
            "    invalid: {} — {}",
            s.key.as_deref().unwrap_or("(no id)"),
            s.reason
        );
    }
    if r.samples.len() > 5 {
        out!(
            "    … {} more in `backflow history {} --samples`",
            r.samples.len() - 5,
            r.entity
        );
    }
    if let Some(e) = &r.error {
        err!("    error: {e}");
    }
}

pub(super) fn print_plan(r: &PlanReport) {
    let c = &r.counts;
    let mark = if r.status == RunStatus::Succeeded {
        "•"
    } else {
        "✗"
    };
    out!(
        "{mark} {}  ({} → {}/{})  would create {}  update {}  delete {}; unchanged {}  invalid {}  (read {})",
        r.sync,
        r.behavior,
        r.destination,
        r.object,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged,
        c.invalid,
        c.read
    );
    if c.rejected > 0 {
        out!(
            "    {} would be rejected: their lookups find no record, or more than one",
            c.rejected
        );
    }
    print_warnings(&r.warnings);
    for (label, list) in [
        ("create", &r.samples.create),
        ("update", &r.samples.update),
        ("delete", &r.samples.delete),
    ] {
        for v in list {
            out!("    {label}: {v}");
        }
    }
    for s in r.samples.invalid.iter().take(5) {
        let label = match s.kind {
            crate::history::RecordKind::Rejected => "rejected",
            crate::history::RecordKind::Invalid => "invalid",
        };
        out!(
            "    {label}: key {} — {}",
            s.key.as_deref().unwrap_or("NULL"),
            s.reason
        );
    }
    if let Some(e) = &r.error {
        err!("    error: {e}");
    }
}

pub(super) fn print_entity_plan(p: &crate::hub::plan::EntityPlan) {
    let mark = if p.status == RunStatus::Succeeded {
        "✓"
    } else {
        "✗"
    };
    let read = p
        .sources
        .iter()
        .map(|(n, s)| format!("{n} {}", s.read))
        .collect::<Vec<_>>()
        .join(", ");
    out!(
        "{mark} {}  (hub plan)  would read {}  golden: create {}  update {}  merge {}  retire {}  quarantine {}{}  [{:.1}s]",
        p.entity,
        if read.is_empty() {
            "nothing".to_string()
        } else {
            read
        },
        p.created,
        p.updated,
        p.merged,
        p.retired,
        p.quarantined,
        if p.more {
            "  (more records wait: a run takes more cycles; this plans the first)"
        } else {
            ""
        },
        p.duration_ms as f64 / 1000.0
    );
    if let Some(g) = &p.guarded {
        out!("  a run would stop here: {g}");
    }
    for c in &p.changes {
        let record = match (&c.source, &c.source_id) {
            (Some(s), Some(id)) => format!(" {s}:{id}"),
            _ => String::new(),
        };
        let golden = if c.op == "quarantine" {
            String::new()
        } else {
            format!(" golden {}", c.golden_id)
        };
        let field = match (&c.field, &c.old_value, &c.new_value) {
            (Some(f), old, new) => format!(
                " {f}: {} → {}",
                old.as_deref().unwrap_or("NULL"),
                new.as_deref().unwrap_or("NULL")
            ),
            _ => String::new(),
        };
        let detail = c
            .detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        out!("    {}{golden}{record}{field}{detail}", c.op);
    }
    if let Some(e) = &p.error {
        err!("    error: {e}");
    }
}
