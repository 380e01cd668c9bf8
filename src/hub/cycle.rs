//! One cycle of an entity: read → attach → authority → merge → commit. Every stage registers
//! its result as a table of the session (`bf_hub_*`, removed when the cycle ends); the stages
//! whose results later stages read more than once are written to the version's data folder
//! first, so each is computed once.

use std::collections::BTreeSet;
use std::sync::Mutex;

use datafusion::prelude::SessionContext;
use indexmap::IndexMap;

use super::read::{self, SourceRead};
use super::state::{self, HubManifest, SourceState, StateFile};
use super::{CycleOutcome, HubError, SourceCounts, failpoint};
use crate::history::SampleRecord;
use crate::project::Project;
use crate::state::{Chain, FORMAT_VERSION, Versioned};

pub use super::context::Cycle;
use super::context::{
    APART_OLD, ATTACHED, GOLDEN_NEXT, OVER, REMAP, REMOVED, contrib_old, golden_old, incoming,
};

/// How a cycle treats the state (see `--full-resync`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CycleOptions<'a> {
    /// Read every source from the start, whatever its position.
    pub from_start: bool,
    /// Decide every field of every golden record a source touched, changed or not.
    pub decide_all: bool,
    /// Read only these ids of these sources (see `HubOptions::only_ids`).
    pub only_ids: Option<&'a std::collections::BTreeMap<String, Vec<String>>>,
    /// Look for records gone from sources that detect deletes (the run's first cycle).
    pub detect_gone: bool,
    /// Let the cycle retire more golden records than `max_retirements` allows.
    pub allow_retirements: bool,
    /// Golden records the run's earlier cycles retired (the guard counts them too).
    pub retired_before: u64,
    /// Settle one quarantined record (see `HubOptions::resolution`).
    pub resolution: Option<&'a super::quarantine::Resolution>,
    /// Compute what the cycle would do, commit nothing (see `Cycle::dry_run`).
    pub dry_run: bool,
}

/// Run one cycle and commit it. `skip` lists sources already read to their end in this run.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    run_id: &str,
    options: CycleOptions<'_>,
    skip: &BTreeSet<String>,
    samples: &mut Vec<SampleRecord>,
    lock: Option<&crate::state::SyncLock>,
) -> Result<CycleOutcome, HubError> {
    let chain = Chain::entity(name);
    let previous: Option<HubManifest> = project.state.latest_in(&chain).await?;
    let version = project.state.newest_version_in(&chain).await? + 1;
    let cycle = Cycle {
        project,
        ctx,
        name,
        entity: &project.config.entities[name],
        version,
        run_id,
        now_us: chrono::Utc::now().timestamp_micros(),
        data_dir: project.state.new_data_dir_in(&chain, version),
        previous,
        dry_run: options.dry_run,
        tables: Mutex::new(Vec::new()),
        no_creates: Mutex::new(BTreeSet::new()),
        assigned_files: Mutex::new(Vec::new()),
    };
    let result = stages(&cycle, &chain, options, skip, samples, lock).await;
    cycle.clear();
    // A plan, or a cycle that found nothing to commit, leaves nothing behind. (A failed
    // cycle's files are left to the vacuum: it may have failed after its commit.)
    if options.dry_run || result.as_ref().is_ok_and(|o| !o.committed) {
        if let Ok(files) = project.state.list_files(&cycle.data_dir).await {
            for f in files {
                let _ = project
                    .state
                    .delete(&format!("{}/{f}", cycle.data_dir))
                    .await;
            }
        }
        if let Some(root) = project.state.local_dir() {
            let _ = std::fs::remove_dir(root.join(&cycle.data_dir));
        }
    }
    result
}

async fn stages(
    cycle: &Cycle<'_>,
    chain: &Chain,
    options: CycleOptions<'_>,
    skip: &BTreeSet<String>,
    samples: &mut Vec<SampleRecord>,
    lock: Option<&crate::state::SyncLock>,
) -> Result<CycleOutcome, HubError> {
    let entity = cycle.entity;
    let name = cycle.name;
    let project = cycle.project;
    let previous = cycle.previous.clone();

    // The committed state, in the current schemas.
    let golden = super::golden_table(project, cycle.ctx, name, previous.as_ref())
        .await
        .map_err(cycle.engine("state"))?;
    cycle.register("state", golden_old(), golden)?;
    let apart_files: Vec<&StateFile> = previous.iter().filter_map(|m| m.apart.as_ref()).collect();
    let apart = state::read_aligned(
        &project.state,
        cycle.ctx,
        &apart_files,
        &state::apart_schema(),
    )
    .await
    .map_err(cycle.engine("state"))?;
    cycle.register("state", APART_OLD, apart)?;

    // read
    let mut reads: IndexMap<String, SourceRead> = IndexMap::new();
    // Whether some source can have deleted records this cycle.
    let mut may_delete = false;
    // Records created under a stand-in id whose destination's id this cycle links.
    let mut folded = 0u64;
    let mut outcome = CycleOutcome {
        version: cycle.version,
        ..Default::default()
    };
    if let Some(p) = &previous {
        // Until this cycle commits, the state stays at the previous version.
        outcome.version = p.version;
    }
    for (source, config) in &entity.sources {
        let before = previous.as_ref().and_then(|m| m.sources.get(source));
        let relation = read::relation(cycle.ctx, name, source, config).await?;
        let context = read::ReadContext {
            name,
            entity,
            now_us: cycle.now_us,
        };
        let from = before
            .and_then(|b| b.position.as_ref())
            .filter(|_| !options.from_start);
        let ids = options
            .only_ids
            .map(|by_source| by_source.get(source).map_or(&[][..], Vec::as_slice));
        // A read after the position is tried whole first (see `read::Window::Whole`), unless
        // the last read was cut at a batch: then there is likely more than a batch to read.
        let window = match ids {
            Some(ids) => read::Window::Ids(ids),
            None if from.is_some_and(|p| !p.drained) => read::Window::After(from),
            None => read::Window::Whole(from),
        };
        let mut stored = before.and_then(|b| b.id_type.parse::<arrow::datatypes::DataType>().ok());
        if let Some(t) = super::create::empty_id_type(cycle, source, &relation).await? {
            stored = Some(t);
        }
        let (plan, id_type) = read::plan(
            &context,
            relation.clone(),
            source,
            config,
            window,
            stored.as_ref(),
        )?;
        let old_schema = state::contributions_schema(entity, source, &id_type);
        let files: Vec<&StateFile> = before.map(|b| vec![&b.contributions]).unwrap_or_default();
        let old = state::read_aligned(&project.state, cycle.ctx, &files, &old_schema)
            .await
            .map_err(cycle.engine("state"))?;
        // Records created under a stand-in id take the id their destination gave them.
        let old = if config.writeback.as_ref().is_some_and(|w| w.create) {
            let (old, n) = super::assigned::fold(cycle, source, old, &id_type).await?;
            folded += n;
            old
        } else {
            old
        };
        cycle.register("state", &contrib_old(source), old)?;

        let raw_table = format!("bf_hub_raw_{source}");
        let plan = if skip.contains(source) || ids.is_some_and(<[String]>::is_empty) {
            plan.limit(0, Some(0)).map_err(cycle.engine("read"))?
        } else {
            plan
        };
        let mut raw = cycle
            .materialize(
                "read",
                plan,
                &format!("in-{source}.parquet"),
                &raw_table,
                None,
            )
            .await?;
        // More records than a batch: the batch is the first of them, in order.
        if matches!(window, read::Window::Whole(_)) && raw.rows > entity.batch_size() as u64 {
            let (sorted, _) = read::plan(
                &context,
                relation.clone(),
                source,
                config,
                read::Window::After(from),
                stored.as_ref(),
            )?;
            raw = cycle
                .materialize(
                    "read",
                    sorted,
                    &format!("in-{source}-batch.parquet"),
                    &raw_table,
                    None,
                )
                .await?;
        }
        // A read of given ids is whole, however many they are.
        let full = ids.is_none() && raw.rows >= entity.batch_size() as u64;
        let last = read::last_position(cycle.ctx, &raw_table, config.watermark.is_some(), !full)
            .await
            .map_err(cycle.engine("read"))?;
        // A batch cut inside a group of records with the same watermark and id takes the
        // whole group (an id twice at one watermark is invalid: all of it must be seen).
        if let (true, Some(last)) = (full, &last) {
            let (group, _) = read::plan(
                &context,
                relation,
                source,
                config,
                read::Window::At(last),
                stored.as_ref(),
            )?;
            let table = format!("bf_hub_group_{source}");
            cycle.register("read", &table, group)?;
            let extra = cycle
                .count("read", &format!("SELECT COUNT(*) FROM {table}"))
                .await?;
            if extra > 1 {
                let same = format!(
                    "(__bf_wm IS NOT DISTINCT FROM (SELECT MAX(__bf_wm) FROM {table})) \
                     AND (__bf_sid IS NOT DISTINCT FROM (SELECT MAX(__bf_sid) FROM {table}))"
                );
                let whole = cycle
                    .sql(
                        "read",
                        &format!(
                            "SELECT * FROM {raw_table} WHERE NOT ({same}) UNION ALL SELECT * FROM {table}"
                        ),
                    )
                    .await?;
                raw = cycle
                    .materialize(
                        "read",
                        whole,
                        &format!("in-{source}-whole.parquet"),
                        &raw_table,
                        None,
                    )
                    .await?;
            }
        }
        let position = match (last, config.watermark.is_some()) {
            // Records read by id leave the source's position where it was.
            _ if ids.is_some() => before.and_then(|b| b.position.clone()),
            // A walk without a watermark that reached the end starts over next run.
            (_, false) if !full => None,
            (Some(p), _) => Some(p),
            // Nothing read: where it was, now read to its end.
            (None, _) => before
                .and_then(|b| b.position.clone())
                .filter(|_| !options.from_start)
                .map(|p| state::Position { drained: true, ..p }),
        };
        let table = incoming(source);
        // The ids read more than once, found once: validation runs again in every stage that
        // reads this source's records.
        let dup = cycle.sql("read", &read::dup_sql(&raw_table)).await?;
        cycle
            .materialize(
                "read",
                dup,
                &format!("dup-{source}.parquet"),
                &read::dup_table(&raw_table),
                None,
            )
            .await?;
        let (valid, invalid) = read::validate(cycle.ctx, &raw_table, source, samples)
            .await
            .map_err(cycle.engine("read"))?;
        super::quarantine::load(
            cycle,
            source,
            before.and_then(|b| b.quarantine.as_ref()),
            &id_type,
            &raw_table,
            invalid,
            options.resolution,
        )
        .await?;
        // Records the source marks deleted leave; the rest are this cycle's records.
        let kept = valid
            .clone()
            .filter(!datafusion::prelude::col(read::IN_DELETED))
            .map_err(cycle.engine("read"))?;
        cycle.register("read", &table, kept)?;
        // A source some of whose rows could not be read (a CSV row with too many fields) does
        // not tell which records are gone: theirs would look so.
        let unreadable = project.quarantined(&config.from).0;
        if unreadable > 0 && options.detect_gone && config.detects_deletes() {
            tracing::warn!(
                entity = name,
                source = source.as_str(),
                unreadable,
                "rows of the source could not be read: records missing from it are not taken as deleted in this run"
            );
        }
        let look = match ids {
            _ if !options.detect_gone
                || !config.detects_deletes()
                || skip.contains(source)
                || unreadable > 0 =>
            {
                super::deletes::Look::No
            }
            Some(ids) => super::deletes::Look::Ids(ids),
            None => super::deletes::Look::All,
        };
        may_delete |= super::deletes::gone(cycle, source, config, valid, look, &id_type).await?;
        outcome.sources.insert(
            source.clone(),
            SourceCounts {
                read: raw.rows,
                invalid,
                ..Default::default()
            },
        );
        outcome.more |= full;
        if !full && ids.is_none() {
            outcome.drained.insert(source.clone());
        }
        reads.insert(
            source.clone(),
            SourceRead {
                position,
                id_type,
                table,
            },
        );
    }
    // Which contributions leave this cycle, and the golden records they leave.
    let removed = super::deletes::removed(cycle, may_delete, options.resolution).await?;
    for (source, n) in &removed {
        if let Some(c) = outcome.sources.get_mut(source) {
            c.deleted = *n;
        }
    }
    let removed: u64 = removed.values().sum();
    // Nothing new read and nowhere moved: nothing to commit.
    let unmoved = reads.iter().all(|(s, r)| {
        previous
            .as_ref()
            .and_then(|m| m.sources.get(s))
            .is_some_and(|b| b.position == r.position)
    });
    let nothing_read = outcome.sources.values().all(|c| c.read == 0) && removed == 0;
    // Golden records a source that creates records has none of yet are linked for it even
    // when nothing was read.
    let creating: Vec<(String, arrow::datatypes::DataType)> = super::create::sources(cycle)
        .into_iter()
        .filter_map(|s| reads.get(&s).map(|r| (s, r.id_type.clone())))
        .collect();
    let waiting = folded
        + if creating.is_empty() {
            0
        } else {
            super::create::waiting(cycle, &creating).await?
        };
    if unmoved
        && nothing_read
        && waiting == 0
        && !options.decide_all
        && options.resolution.is_none()
    {
        return Ok(outcome);
    }
    failpoint!("hub_after_read", name);

    // attach
    super::quarantine::register_decision(cycle, options.resolution).await?;
    super::attach::attach(cycle, &reads, options.resolution).await?;
    super::attach::count(cycle, &mut outcome.sources).await?;
    let changes = super::attach::deltas(cycle).await?;
    let mut changed = changes.values().sum::<u64>() + removed;
    let mut quarantines = IndexMap::new();
    let ambiguous = super::quarantine::ambiguous(cycle).await?;
    for (source, read) in &reads {
        let held = ambiguous.get(source).copied().unwrap_or(0);
        let next = super::quarantine::next(cycle, source, &read.id_type, held).await?;
        changed += next.changed;
        if let Some(c) = outcome.sources.get_mut(source) {
            c.quarantined = next.added;
        }
        quarantines.insert(source.clone(), next.file);
    }
    if changed == 0 && waiting == 0 && !options.decide_all {
        // Only records read again as they were (ties at a watermark, a source without one):
        // nothing to commit but where the reading stands, if it moved.
        if options.dry_run {
            return Ok(outcome);
        }
        if let (false, Some(prev), Some(lock)) = (unmoved, &previous, lock) {
            let mut manifest = prev.clone();
            manifest.version = cycle.version;
            manifest.run_id = cycle.run_id.to_string();
            manifest.committed_at = chrono::Utc::now().to_rfc3339();
            manifest.checksum = None;
            for (source, read) in &reads {
                if let Some(s) = manifest.sources.get_mut(source) {
                    s.position = read.position.clone();
                }
            }
            failpoint!("hub_before_commit", name);
            lock.confirm().await?;
            project.state.commit_in(chain, &manifest).await?;
            outcome.version = cycle.version;
            outcome.committed = true;
            project.state.vacuum_in::<HubManifest>(chain).await;
        }
        return Ok(outcome);
    }
    failpoint!("hub_after_attach", name);

    // authority
    outcome.unchanged = super::authority::run(cycle, options.decide_all).await?;
    match super::deletes::guard(cycle, options.allow_retirements, options.retired_before).await {
        // A plan says it, and goes on to say what the cycle would do if allowed.
        Err(e @ HubError::Guarded { .. }) if options.dry_run => {
            outcome.guarded = Some(e.to_string())
        }
        other => other?,
    }

    // merge
    super::merge::register_apart(cycle, options.resolution).await?;
    let merges = super::merge::run(cycle).await?;
    failpoint!("hub_after_merge", name);

    // the next state: the golden records this cycle changed, as a layer over the committed
    // ones (or, once the layers grow, every golden record written again)
    let (golden, golden_deltas) = next_golden(cycle).await?;
    let mut sources = IndexMap::new();
    for (source, read) in &reads {
        let before = previous.as_ref().and_then(|m| m.sources.get(source));
        let unchanged = match before {
            Some(b) if b.id_type == read.id_type.to_string() && options.resolution.is_none() => {
                contributions_unchanged(cycle, source, &changes, merges > 0).await?
            }
            _ => false,
        };
        let contributions = match (unchanged, before) {
            // Nothing of the source's ID map changed: its file stays.
            (true, Some(b)) => {
                cycle.register(
                    "state",
                    &super::context::contrib_next(source),
                    cycle
                        .sql("state", &format!("SELECT * FROM {}", contrib_old(source)))
                        .await?,
                )?;
                b.contributions.clone()
            }
            _ => {
                super::merge::write_contributions(cycle, source, &read.id_type, merges > 0).await?
            }
        };
        sources.insert(
            source.clone(),
            SourceState {
                contributions,
                id_type: read.id_type.to_string(),
                position: read.position.clone(),
                quarantine: quarantines.shift_remove(source).flatten(),
            },
        );
    }
    let (log_file, counts) = super::log::write(cycle).await?;
    outcome.created = counts.created;
    outcome.updated = counts.updated;
    outcome.merged = counts.merged;
    outcome.retired = counts.retired;
    if options.dry_run {
        outcome.changes = super::plan::changes(cycle).await?;
        return Ok(outcome);
    }
    let Some(lock) = lock else {
        return Err(HubError::Settings {
            entity: name.to_string(),
            message: "a cycle that commits needs the entity's lock (this is a bug in backflow)"
                .into(),
        });
    };
    let mut log = previous.as_ref().map(|m| m.log.clone()).unwrap_or_default();
    log.push(log_file);
    let log = super::log::compact(cycle, log).await?;

    let next_golden_id = cycle
        .count(
            "attach",
            &format!("SELECT MAX(__bf_golden_id) + 1 FROM {ATTACHED} WHERE __bf_linked_by IN ('new', {})", super::sql::lit(super::quarantine::UNMERGED)),
        )
        .await? as i64;
    let manifest = HubManifest {
        format: FORMAT_VERSION,
        entity: name.to_string(),
        version: cycle.version,
        run_id: cycle.run_id.to_string(),
        committed_at: chrono::Utc::now().to_rfc3339(),
        next_golden_id: next_golden_id.max(previous.as_ref().map_or(1, |m| m.next_golden_id)),
        golden,
        golden_deltas,
        sources,
        log,
        apart: super::merge::write_apart(cycle, options.resolution, merges > 0).await?,
        checksum: None,
    };
    failpoint!("hub_before_commit", name);
    lock.confirm().await?;
    project.state.commit_in(chain, &manifest).await?;
    outcome.version = cycle.version;
    failpoint!("hub_after_commit", name);
    super::assigned::consumed(cycle).await;
    remove_scratch(cycle, &manifest).await;
    project.state.vacuum_in::<HubManifest>(chain).await;
    super::log::vacuum(project, chain).await;
    outcome.committed = true;
    Ok(outcome)
}

/// Golden-record layers kept before they are folded into one file again: at most this many,
/// holding at most a tenth as many rows as the whole (or any share, while they hold no more
/// than [`SMALL_LAYERS`] rows: small entities layer too, and reading that is cheap).
const GOLDEN_LAYERS: usize = 8;
const SMALL_LAYERS: u64 = 1024;

/// Write the next golden records and register them as `GOLDEN_NEXT`: this cycle's changed
/// ones (`OVER`) as a new layer over the committed ones, so that a cycle writes in
/// proportion to what it changed; or every golden record in one file, on the first cycle and
/// once the layers hold too many rows or files (reading them would cost more than writing
/// the whole). Returns the manifest's `golden` and `golden_deltas`.
async fn next_golden(cycle: &Cycle<'_>) -> Result<(StateFile, Vec<StateFile>), HubError> {
    let schema = state::golden_schema(cycle.entity);
    let changed = cycle
        .count("state", &format!("SELECT COUNT(*) FROM {OVER}"))
        .await?;
    if let Some(p) = &cycle.previous {
        if changed == 0 {
            // (A cycle that only linked ids, say: the golden records stay as they are.)
            let same = cycle
                .sql("state", &format!("SELECT * FROM {}", golden_old()))
                .await?;
            cycle.register("state", GOLDEN_NEXT, same)?;
            return Ok((p.golden.clone(), p.golden_deltas.clone()));
        }
        let layered: u64 = p.golden_deltas.iter().map(|d| d.rows).sum::<u64>() + changed;
        let fits = layered <= SMALL_LAYERS || layered.saturating_mul(10) <= p.golden.rows;
        if p.golden_deltas.len() < GOLDEN_LAYERS && fits {
            let over = cycle.sql("state", &format!("SELECT * FROM {OVER}")).await?;
            let delta = cycle
                .materialize(
                    "state",
                    over,
                    "golden-delta.parquet",
                    "bf_hub_golden_delta",
                    Some(schema.clone()),
                )
                .await?;
            let mut deltas = p.golden_deltas.clone();
            deltas.push(delta);
            let mut layers = vec![&p.golden];
            layers.extend(&deltas);
            let next = state::read_layered(
                &cycle.project.state,
                cycle.ctx,
                &layers,
                &schema,
                state::GOLDEN_ID,
            )
            .await
            .map_err(cycle.engine("state"))?;
            cycle.register("state", GOLDEN_NEXT, next)?;
            return Ok((p.golden.clone(), deltas));
        }
    }
    let next = cycle
        .sql("state", &super::context::golden_with_over())
        .await?;
    let golden = cycle
        .materialize("state", next, "golden.parquet", GOLDEN_NEXT, Some(schema))
        .await?;
    Ok((golden, Vec::new()))
}

/// Whether a source's ID map is the same after this cycle as before it, so that its file
/// can stay: none of its records changed (`changes`: per source, from the attach stage) or
/// left, none is linked to a golden record merged away, and it creates no records (links
/// for records to create come and go with the golden records).
async fn contributions_unchanged(
    cycle: &Cycle<'_>,
    source: &str,
    changes: &IndexMap<String, u64>,
    merged: bool,
) -> Result<bool, HubError> {
    if changes.get(source).copied().unwrap_or(0) > 0
        || super::create::sources(cycle).iter().any(|s| s == source)
    {
        return Ok(false);
    }
    let left = cycle
        .count(
            "state",
            &format!(
                "SELECT COUNT(*) FROM {REMOVED} WHERE __bf_source = {}",
                super::sql::lit(source)
            ),
        )
        .await?;
    if left > 0 {
        return Ok(false);
    }
    if merged {
        let remapped = cycle
            .count(
                "state",
                &format!(
                    "SELECT COUNT(*) FROM {} c JOIN {REMAP} m ON m.__bf_loser = c.{}",
                    super::context::contrib_now(source),
                    state::LINK
                ),
            )
            .await?;
        if remapped > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// After a commit: remove the files of this cycle's data folder that the manifest does not
/// name (what the stages read and computed on the way), so that a folder kept for its
/// golden-record layer keeps only that. Best effort.
async fn remove_scratch(cycle: &Cycle<'_>, manifest: &HubManifest) {
    let mut named = manifest.clone();
    let keep: BTreeSet<String> = named
        .files_mut()
        .into_iter()
        .map(|(f, _)| f.to_string())
        .collect();
    let Ok(files) = cycle.project.state.list_files(&cycle.data_dir).await else {
        return;
    };
    for f in files {
        let rel = format!("{}/{f}", cycle.data_dir);
        if !keep.contains(&rel)
            && let Err(e) = cycle.project.state.delete(&rel).await
        {
            tracing::debug!(entity = cycle.name, error = %e, file = rel, "could not remove a scratch file");
        }
    }
}
