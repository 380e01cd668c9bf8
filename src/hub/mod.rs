//! The hub: several systems contribute records of one entity (an account from a CRM, a billing
//! database and a support tool); backflow unifies them into **golden records** and writes the
//! unified values back to every system that should have them.
//!
//! One **cycle** of an entity, each stage a DataFusion plan over Arrow batches:
//!
//! ```text
//!  read ─────────► attach ───────────► authority ─────────► merge ────────────► commit
//!  per source:     ID map first, then   per touched golden   duplicates by      golden, contributions,
//!  past its        match rules in       record, per field:   merge rules:       log → manifest v+1
//!  position, in    priority order;      the winning          winner by rule,    (create-if-absent);
//!  watermark       no match: a new      source's value       losers' values     the source positions
//!  order, at most  golden record        (priority, recent,   fill/override,     move with it
//!  batch_size                           first non-NULL)      losers retired
//! ```
//!
//! - **Contributions** are each source record's last values in the entity's fields, with when
//!   each field last changed; their `(source, id) → golden id` is the ID map.
//! - **Golden values** are recomputed from the contributions of every golden record a cycle
//!   touched, so a re-run of a cycle gives the same golden records.
//! - **The transaction log** records every change: a field set (old → new, and the source it
//!   came from), a record created, a source record linked, a duplicate merged.
//! - **Write-backs** are syncs (`<entity>-to-<source>`, update-only, keyed by the source's id)
//!   from the golden records linked to the source, each with its own watermark (the hub cycle
//!   of the last change it sent). What a source itself reported is what its write-back compares
//!   with, so a change that came from a source is not echoed back to it unless the unified
//!   value differs.
//!
//! Nothing moves until the manifest commits: a crash anywhere leaves the previous version, and
//! the next run reads the same records again (at-least-once) and computes the same result.

mod assigned;
mod attach;
mod authority;
mod context;
mod create;
mod cycle;
mod deletes;
mod log;
mod merge;
pub mod plan;
pub mod quarantine;
mod read;
pub mod show;
mod sql;
pub mod state;
pub mod unmerge;
pub mod writeback;

use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use indexmap::IndexMap;
use serde::Serialize;

use crate::history::{self, RunCounts, RunRecord, RunStatus, SampleRecord};
use crate::project::Project;
use crate::state::{Chain, StateError};
pub use cycle::Cycle;
use state::HubManifest;

pub use crate::config::entity::HubLink;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("entity \"{entity}\", source \"{source_name}\": {message}")]
    Source {
        entity: String,
        source_name: String,
        message: String,
    },
    #[error("entity \"{entity}\": {stage}: {source}")]
    Engine {
        entity: String,
        stage: &'static str,
        source: DataFusionError,
    },
    #[error("entity \"{entity}\": {message}")]
    Settings { entity: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("entity \"{entity}\": injected failure at {point}")]
    Failpoint { entity: String, point: &'static str },
    #[error(
        "entity \"{entity}\": this run would retire {retiring} of its {live} live golden \
         records (their last source record was deleted), more than max_retirements = {limit} \
         allows; nothing was committed. If the deletes are real, run `backflow run {entity} \
         --allow-deletes` once, or raise max_retirements; if a source lost its records by \
         mistake (an empty export, a wrong filter), fix it and run again"
    )]
    Guarded {
        entity: String,
        retiring: u64,
        live: u64,
        limit: crate::config::DeleteLimit,
    },
    #[error(
        "entity \"{entity}\": stopped by a signal after {cycles} committed cycle(s); the next \
         run reads on from there"
    )]
    Interrupted { entity: String, cycles: u64 },
}

/// Stop here when the failpoint `point` is configured with this entity's name (or `*`).
/// Compiled in only with the `failpoints` feature (tests).
macro_rules! failpoint {
    ($point:expr, $entity:expr) => {
        #[cfg(not(feature = "failpoints"))]
        let _ = &$entity;
        #[cfg(feature = "failpoints")]
        {
            if let Some(Some(target)) = fail::eval($point, |arg| arg) {
                if target == format!("panic:{}", $entity) {
                    panic!("failpoint {} for entity {}", $point, $entity);
                }
                if target == $entity || target == "*" {
                    return Err(HubError::Failpoint {
                        entity: $entity.to_string(),
                        point: $point,
                    });
                }
            }
        }
    };
}
pub(crate) use failpoint;

/// How a hub run treats its state.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Read every source from the start again (the ID map and golden records stay).
    pub full_resync: bool,
    /// Stop after this many cycles (default: until every source is read to its end).
    pub max_cycles: Option<u64>,
    /// The run's id (default: a new one).
    pub run_id: Option<String>,
    /// Read only these records, by source and id (ids as text, as people write them), in one
    /// cycle: an app saying which of its records just changed. Other sources are not read,
    /// and no source's position moves, so the next full read sees these records again (as
    /// unchanged). An id the source does not have reads nothing.
    pub only_ids: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// What started the run, kept in its history.
    pub trigger: Option<String>,
    /// Let a cycle retire more golden records than `max_retirements` allows.
    pub allow_retirements: bool,
    /// Settle one quarantined record (`backflow hub resolve`): the run is one cycle that
    /// reads no source.
    pub resolution: Option<quarantine::Resolution>,
}

/// What one source did in a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SourceCounts {
    /// Records read.
    pub read: u64,
    /// Records left out: a NULL id, or one id twice at the same watermark.
    pub invalid: u64,
    /// Records attached by the ID map (seen before).
    pub by_id: u64,
    /// Records attached to an existing golden record by a match rule.
    pub matched: u64,
    /// Records that started a new golden record.
    pub new: u64,
    /// Receive-only records that match no golden record (yet).
    pub unlinked: u64,
    /// Records deleted in the source (gone, or marked by `deleted`), taken out of their
    /// golden records.
    pub deleted: u64,
    /// Records put in quarantine (an ambiguous match, or invalid with an id) that were not
    /// there before.
    pub quarantined: u64,
}

/// The outcome of one entity's run, as printed and stored in history.
#[derive(Debug, Clone, Serialize)]
pub struct HubReport {
    pub entity: String,
    pub status: RunStatus,
    pub run_id: String,
    /// Cycles committed.
    pub cycles: u64,
    pub sources: IndexMap<String, SourceCounts>,
    /// Golden records created.
    pub created: u64,
    /// Golden records whose values changed.
    pub updated: u64,
    /// Golden records touched whose values stayed the same.
    pub unchanged: u64,
    /// Golden records retired into another by a merge.
    pub merged: u64,
    /// Golden records retired because every source record they had was deleted.
    pub retired: u64,
    /// From opening the sources the entity reads to the end of the run (`sources_ms`
    /// included).
    pub duration_ms: i64,
    /// Of `duration_ms`, the time opening the sources the entity reads took before it started
    /// (see `SyncReport::sources_ms`).
    pub sources_ms: i64,
    pub state_version: Option<u64>,
    pub error: Option<String>,
    pub samples: Vec<SampleRecord>,
}

/// What one cycle did.
#[derive(Debug, Default)]
pub(crate) struct CycleOutcome {
    pub sources: IndexMap<String, SourceCounts>,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub merged: u64,
    pub retired: u64,
    /// Whether some source had more records waiting.
    pub more: bool,
    /// The sources read to their end (the run reads them no more).
    pub drained: std::collections::BTreeSet<String>,
    /// Whether the cycle committed a version (one that read nothing new does not).
    pub committed: bool,
    /// A plan: the mass-retirement guard's message, when the cycle would trip it.
    pub guarded: Option<String>,
    /// A plan: samples of the changes the cycle would make.
    pub changes: Vec<show::LogEntry>,
    pub version: u64,
}

/// The name run history keeps an entity's runs under.
pub fn history_name(entity: &str) -> String {
    format!("hub.{entity}")
}

/// The newest intact state of an entity.
pub async fn latest(project: &Project, entity: &str) -> Result<Option<HubManifest>, StateError> {
    project.state.latest_in(&Chain::entity(entity)).await
}

/// Run an entity's cycles until its sources are read to their end (or `max_cycles`), record
/// the run in history, and register the new golden records in `ctx`.
pub async fn run(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    options: HubOptions,
) -> HubReport {
    let started = chrono::Utc::now().timestamp_millis();
    let sources_ms = project.source_time_ms(
        project
            .config
            .entities
            .get(name)
            .into_iter()
            .flat_map(|e| e.sources.values().map(|s| s.from.as_str())),
    ) as i64;
    let run_id = options
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let mut samples = Vec::new();
    let mut total = CycleOutcome::default();
    let mut cycles = 0u64;
    let mut drained = std::collections::BTreeSet::new();
    let mut first = true;
    let (lock, mut refused) = match project.state.acquire(&Chain::entity(name), &run_id).await {
        Ok(l) => (Some(l), None),
        Err(e) => (None, Some(e)),
    };
    let result: Result<(), HubError> = async {
        check_blocking(project, ctx, name).await?;
        let Some(lock) = &lock else {
            return Err(refused.take().map(HubError::State).unwrap_or_else(|| {
                HubError::Settings {
                    entity: name.to_string(),
                    message: "no lock (this is a bug in backflow)".into(),
                }
            }));
        };
        loop {
            let outcome = cycle::run(
                project,
                ctx,
                name,
                &run_id,
                cycle::CycleOptions {
                    from_start: options.full_resync && first,
                    decide_all: options.full_resync,
                    only_ids: options.only_ids.as_ref(),
                    detect_gone: first,
                    allow_retirements: options.allow_retirements,
                    retired_before: total.retired,
                    resolution: options.resolution.as_ref(),
                    dry_run: false,
                },
                &drained,
                &mut samples,
                Some(lock),
            )
            .await?;
            first = false;
            cycles += u64::from(outcome.committed);
            drained.extend(outcome.drained.iter().cloned());
            for (s, c) in &outcome.sources {
                let t = total.sources.entry(s.clone()).or_default();
                t.read += c.read;
                t.invalid += c.invalid;
                t.by_id += c.by_id;
                t.matched += c.matched;
                t.new += c.new;
                t.unlinked += c.unlinked;
                t.deleted += c.deleted;
                t.quarantined += c.quarantined;
            }
            total.created += outcome.created;
            total.updated += outcome.updated;
            total.unchanged += outcome.unchanged;
            total.merged += outcome.merged;
            total.retired += outcome.retired;
            total.version = outcome.version;
            if !outcome.committed
                || !outcome.more
                || options.only_ids.is_some()
                || options.resolution.is_some()
                || options.max_cycles.is_some_and(|m| cycles >= m)
            {
                return Ok(());
            }
            // A cycle is the safe point: what committed stays, the rest waits for the next run.
            if crate::interrupt::requested() {
                return Err(HubError::Interrupted {
                    entity: name.to_string(),
                    cycles,
                });
            }
        }
    }
    .await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    // Rows a CSV source left out never reached the entity: invalid records of their source.
    for (source, config) in &project.config.entities[name].sources {
        let (count, rows) = project.quarantined(&config.from);
        total.sources.entry(source.clone()).or_default().invalid += count;
        for r in rows
            .into_iter()
            .take(crate::history::SAMPLE_LIMIT.saturating_sub(samples.len()))
        {
            samples.push(SampleRecord {
                kind: crate::history::RecordKind::Invalid,
                key: None,
                reason: format!(
                    "source {} {} line {}: {}",
                    r.source, r.file, r.line, r.reason
                ),
                record: serde_json::json!({ "line": r.line, "row": r.record }).to_string(),
            });
        }
    }
    // Later syncs read the golden records just committed.
    let registered = register(project, ctx, name).await;
    let finished = chrono::Utc::now().timestamp_millis();
    let guarded = matches!(result, Err(HubError::Guarded { .. }));
    let interrupted = matches!(result, Err(HubError::Interrupted { .. }));
    let mut error = match (result, registered) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(()), Err(e)) => Some(e.to_string()),
        (Ok(()), Ok(())) => None,
    };
    let status = match (&error, guarded, interrupted) {
        (None, _, _) => RunStatus::Succeeded,
        (Some(_), true, _) => RunStatus::Guarded,
        (Some(_), _, true) => RunStatus::Interrupted,
        (Some(_), false, false) => RunStatus::Failed,
    };
    let state_version = (total.version > 0).then_some(total.version);
    let record = RunRecord {
        run_id: run_id.clone(),
        sync: history_name(name),
        status: status.clone(),
        started_at_ms: started,
        finished_at_ms: finished,
        full_resync: options.full_resync,
        counts: RunCounts {
            read: total.sources.values().map(|s| s.read).sum(),
            invalid: total.sources.values().map(|s| s.invalid).sum(),
            created: total.created,
            updated: total.updated,
            deleted: total.merged + total.retired,
            unchanged: total.unchanged,
            ..Default::default()
        },
        state_version,
        error: error.clone(),
        behavior: None,
        destination: None,
        object: None,
        warnings: Vec::new(),
        trigger: options.trigger.clone(),
        keys: options
            .only_ids
            .as_ref()
            .map(|ids| ids.values().map(|i| i.len() as u64).sum()),
    };
    if let Err(e) = history::record(&project.state, &record, &samples).await {
        let note = format!("run history was not recorded: {e}");
        error = Some(match error {
            Some(prev) => format!("{prev}; {note}"),
            None => note,
        });
    }
    HubReport {
        entity: name.to_string(),
        status,
        run_id,
        cycles,
        sources: total.sources,
        created: total.created,
        updated: total.updated,
        unchanged: total.unchanged,
        merged: total.merged,
        retired: total.retired,
        duration_ms: finished - started + sources_ms,
        sources_ms,
        state_version,
        error,
        samples,
    }
}

/// Register entity `name` in `ctx` as a table of its live golden records (`golden_id`, the
/// fields, `golden_created_at`, `golden_updated_at`), from the newest committed state.
pub async fn register(project: &Project, ctx: &SessionContext, name: &str) -> Result<(), HubError> {
    let entity = &project.config.entities[name];
    let manifest = latest(project, name).await?;
    let engine = |source| HubError::Engine {
        entity: name.to_string(),
        stage: "register",
        source,
    };
    let golden = golden_table(project, ctx, name, manifest.as_ref())
        .await
        .map_err(engine)?;
    let mut exprs = vec![datafusion::prelude::col(state::GOLDEN_ID)];
    exprs.extend(entity.fields.keys().map(datafusion::prelude::ident));
    exprs.push(datafusion::prelude::ident(state::CREATED_AT).alias("golden_created_at"));
    exprs.push(datafusion::prelude::ident(state::UPDATED_AT).alias("golden_updated_at"));
    let live = golden
        .filter(
            datafusion::prelude::ident(state::MERGED_INTO)
                .is_null()
                .and(datafusion::prelude::ident(state::RETIRED_AT).is_null()),
        )
        .and_then(|df| df.select(exprs))
        .map_err(engine)?;
    let _ = ctx.deregister_table(name);
    ctx.register_table(name, live.into_view()).map_err(engine)?;
    Ok(())
}

/// Every golden record (retired ones included) of a committed version, in the current
/// entity schema.
pub async fn golden_table(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    manifest: Option<&HubManifest>,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    let entity = &project.config.entities[name];
    let schema = state::golden_schema(entity);
    let Some(m) = manifest else {
        return state::read_aligned(&project.state, ctx, &[], &schema).await;
    };
    let mut layers = vec![&m.golden];
    layers.extend(&m.golden_deltas);
    state::read_layered(&project.state, ctx, &layers, &schema, state::GOLDEN_ID).await
}

/// Validate an entity against the real schemas of its sources (reads metadata, writes
/// nothing): id and watermark columns exist, field expressions parse and cast to the field
/// types, and the stored state (if any) is readable.
pub async fn check(project: &Project, ctx: &SessionContext, name: &str) -> Result<(), HubError> {
    let entity = &project.config.entities[name];
    let manifest = latest(project, name).await?;
    for (source, config) in &entity.sources {
        let relation = read::relation(ctx, name, source, config).await?;
        let context = read::ReadContext {
            name,
            entity,
            now_us: 0,
        };
        let from = manifest
            .as_ref()
            .and_then(|m| m.sources.get(source))
            .and_then(|s| s.position.as_ref());
        let stored = manifest
            .as_ref()
            .and_then(|m| m.sources.get(source))
            .and_then(|s| s.id_type.parse::<arrow::datatypes::DataType>().ok());
        let (plan, _) = read::plan(
            &context,
            relation,
            source,
            config,
            read::Window::After(from),
            stored.as_ref(),
        )?;
        plan.create_physical_plan()
            .await
            .map_err(|e| HubError::Source {
                entity: name.to_string(),
                source_name: source.clone(),
                message: e.to_string(),
            })?;
        if config.writeback.as_ref().is_some_and(|w| w.create) {
            let id_type = match stored {
                Some(t) => t,
                None => read::relation(ctx, name, source, config)
                    .await?
                    .schema()
                    .field_with_unqualified_name(&config.id)
                    .map(|f| f.data_type().clone())
                    .unwrap_or(arrow::datatypes::DataType::Utf8),
            };
            let golden = golden_table(project, ctx, name, manifest.as_ref())
                .await
                .map_err(|e| HubError::Engine {
                    entity: name.to_string(),
                    stage: "check",
                    source: e,
                })?;
            // (An empty source tells no id type: it takes the ids' type; see create.rs.)
            if id_type != arrow::datatypes::DataType::Null {
                create::id_expr(name, source, config, &id_type, &golden)?;
            }
        }
    }
    check_blocking(project, ctx, name).await
}

/// The most records a source may have for a fuzzy match rule without `block`: past it, every
/// record would be compared with every golden record.
pub const UNBLOCKED_LIMIT: u64 = 100_000;

/// Refuse a fuzzy match rule without a blocking key when a source has more than
/// [`UNBLOCKED_LIMIT`] records (counted only when such a rule exists).
pub async fn check_blocking(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
) -> Result<(), HubError> {
    let entity = &project.config.entities[name];
    let unblocked: Vec<String> = entity
        .match_rules
        .iter()
        .filter(|r| matches!(r, crate::config::entity::MatchRule::Fuzzy(f) if f.block.is_empty()))
        .map(|r| r.name())
        .collect();
    if unblocked.is_empty() {
        return Ok(());
    }
    for (source, config) in entity.contributors() {
        let rows = read::relation(ctx, name, source, config)
            .await?
            .count()
            .await
            .map_err(|e| HubError::Source {
                entity: name.to_string(),
                source_name: source.clone(),
                message: e.to_string(),
            })? as u64;
        if rows > UNBLOCKED_LIMIT {
            return Err(HubError::Settings {
                entity: name.to_string(),
                message: format!(
                    "match rule \"{}\" has no `block` and source \"{source}\" has {rows} records: \
                     every record would be compared with every golden record (billions of \
                     comparisons). Add `block = [\"...\"]` naming fields that similar records \
                     share exactly (a postcode, a city, the first letters of a name through a \
                     field mapping), so that only records in the same block are compared; \
                     without a block a fuzzy rule is allowed up to {UNBLOCKED_LIMIT} records",
                    unblocked.join("\", \"")
                ),
            });
        }
    }
    Ok(())
}

/// Register every entity of the project (see [`register`]).
pub async fn register_all(project: &Project, ctx: &SessionContext) -> Result<(), HubError> {
    for name in project.config.entities.keys() {
        register(project, ctx, name).await?;
    }
    Ok(())
}
