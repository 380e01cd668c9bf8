//! A sync cycle, as a one-way flow of DataFusion plans and Arrow batches, one file per stage:
//!
//! ```text
//!  read ──► map ──► diff ──────────────► apply ──────────────► state ───────────► commit
//!  model    fields,  FULL/LEFT JOIN       batches to the        next snapshot =    manifest v+1
//!  rows     key,     with last state:     destination by op;    old ANTI JOIN      (create-if-
//!  (cursor  hash     new / changed /      accepted rows to      sent ∪ sent kept   absent), then
//!  ≥ wm)             gone / invalid       sent.parquet                             watermark moves
//! ```
//!
//! `read.rs` (and its hook, `upstream.rs`), `map.rs`, `diff.rs` (with `sql/diff.sql`),
//! `apply.rs`, `state.rs` (with `sql/next_state.sql`), `intents.rs`, `watermark.rs` and
//! `commit.rs`; `plan.rs` holds the commands that build the same plans without writing
//! (`plan`, `check`, `explain`). This file only puts the stages in order.
//!
//! Nothing is marked synced that the destination did not accept; the watermark and the
//! snapshot move together, only when the manifest commits. The keys of each batch are written
//! to `pending/` before the batch is sent (write-ahead intents): the next run treats them as
//! unknown, so whatever an interrupted run did to their records is redone or undone. A crash
//! anywhere before that leaves the previous state, and the next run sends again whatever was
//! not committed (at-least-once).

mod apply;
mod bind;
mod changes;
mod commit;
mod diff;
mod error;
mod existing;
mod guard;
mod intents;
mod lookup;
pub mod map;
mod plan;
mod read;
pub mod record_log;
mod report;
mod state;
mod upstream;
mod watermark;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{cast, try_cast};
use datafusion::prelude::{DataFrame, SessionContext, ident};

use crate::behavior::Behavior;
use crate::config::SyncConfig;
use crate::destinations::{Destination, WriteTarget};
use crate::history::{self, RunRecord, RunStatus};
use crate::project::Project;
use crate::state::{Manifest, SyncLock};
use map::{HASH, KEY};

pub use crate::progress::{Delivery, NoProgress, Progress};
pub use bind::{BindReport, adopt, rebind};
pub use error::SyncError;
pub(crate) use error::{engine, failpoint};
pub use plan::{check, explain, plan};
pub use report::{PlanReport, PlanSamples, SentRecord, SyncReport, Tally};
pub use state::state_schema;
pub use upstream::{Upstream, UpstreamError, UpstreamRead, Upstreams};

/// How a run treats its state.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Ignore the stored row hashes and watermark: send every row again. Deletions are still
    /// computed against the stored keys.
    pub full_resync: bool,
    /// Let a mirror delete more than its `max_deletes` in this run.
    pub allow_deletes: bool,
    /// A test run: only these rows (see [`Sample`]).
    pub sample: Option<Sample>,
    /// A run for these keys only (an app telling which records just changed): their rows are
    /// read, diffed against the state and sent like any run's; a key the model no longer has
    /// is deleted by a mirror when the state holds it. Nothing else is touched: the watermark
    /// stays, and the delete guard does not apply (only the keys named can be deleted).
    pub only_keys: Option<Vec<String>>,
    /// The run's id (default: a new one), for a caller that names the run before it starts.
    pub run_id: Option<String>,
    /// What started the run, kept in its history (see [`RunRecord::trigger`]).
    pub trigger: Option<String>,
}

impl RunOptions {
    /// Whether the run reads part of the model on purpose (a test run or a run for given
    /// keys): the watermark stays, and no key is gone for not being read.
    pub(crate) fn partial(&self) -> bool {
        self.sample.is_some() || self.only_keys.is_some()
    }
}

/// The rows a test run sends (`run SYNC --sample N` or `--keys a,b`): the first `N` by key, or
/// those with the given keys. Nothing else is touched: no deletes (records outside the sample
/// are not "gone"), the watermark stays, and the sent records join the state like any run's.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    First(usize),
    Keys(Vec<String>),
}

/// How many sent records a test run shows.
pub const SAMPLE_SHOWN: usize = 1000;

/// One sync, with everything its stages need: the project and session it runs in, its name and
/// configuration, how it was asked to run, and the run's id.
pub(crate) struct SyncRef<'a> {
    pub project: &'a Project,
    pub ctx: &'a SessionContext,
    pub name: &'a str,
    pub config: &'a SyncConfig,
    pub options: RunOptions,
    pub run_id: String,
}

impl<'a> SyncRef<'a> {
    /// `name` must be a sync of `project` (the CLI and `Project::select_syncs` check it).
    pub fn new(
        project: &'a Project,
        ctx: &'a SessionContext,
        name: &'a str,
        options: RunOptions,
    ) -> Self {
        let run_id = options
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        SyncRef {
            project,
            ctx,
            name,
            config: &project.config.syncs[name],
            options,
            run_id,
        }
    }
}

impl SyncRef<'_> {
    /// What this sync writes into: its object and key, with `schema` (the fields sent) and
    /// the state `version` a run would commit.
    fn write_target(&self, schema: SchemaRef, version: u64) -> WriteTarget {
        let config = self.config;
        WriteTarget {
            sync: self.name.to_string(),
            run_id: self.run_id.clone(),
            object: config.object.clone(),
            key: config.key.destinations(),
            schema,
            behavior: config.behavior,
            engine: self.ctx.copied_config(),
            runtime: self.ctx.runtime_env(),
            progress: Arc::new(NoProgress),
            version,
            partial_updates: config.send == crate::config::SendMode::Changed,
            creates_and_updates: false,
            forget_gone: config
                .hub
                .as_ref()
                .is_some_and(|l| l.kind == crate::config::entity::LinkKind::Create),
            assigned: Upstreams::of(self.ctx, self.name).and_then(|u| u.assigned_ids(self.project)),
        }
    }
}

/// Everything a cycle needs once the plans are built.
pub(crate) struct Prepared {
    diff: DataFrame,
    target: WriteTarget,
    key_type: DataType,
    cursor_type: Option<DataType>,
    /// Whether the whole model is read despite a stored watermark.
    rescan: bool,
    /// Whether the field mapping differs from the one the state was made under.
    mapping_changed: bool,
    /// The row-hash header of this run's mapping.
    fields: String,
    destination: Arc<dyn Destination>,
    fingerprint: String,
    /// The state the diff compares with (None on a first run, or when a full resync discarded
    /// a state that no longer fits).
    previous: Option<Manifest>,
    /// Intent files of earlier, interrupted runs that this run's state includes (damaged ones
    /// too: they go once a commit covers them).
    pending: Vec<String>,
    /// Intent files the newest commit already covers.
    covered: Vec<String>,
    /// For a sync with an upstream hook: the upstream version it reads.
    upstream: Option<u64>,
    /// How much of the model the run reads (see [`read::Scope`]).
    scope: read::Scope,
    /// What the run tells the user besides its counts (see [`Tally::notes`]).
    notes: Vec<String>,
    /// For a sync reading a source with a change feed: the source's version the run reads.
    source_version: Option<crate::state::SourceVersion>,
    /// For a sync with an upstream hook: how many records the destination reported since it
    /// last ran (they change the state even when nothing is sent).
    reported: u64,
    /// Finds lookup fields by request when rows are sent (see `lookup`).
    resolver: Option<lookup::Resolver>,
}

/// Table names a cycle registers; removed before and after each cycle.
const CYCLE_TABLES: [&str; 8] = [
    "bf_mapped",
    "bf_state_file",
    "bf_base",
    "bf_deltas",
    "bf_state",
    "bf_prev",
    "bf_sent_file",
    "bf_sent",
];

fn clear_cycle_tables(ctx: &SessionContext) {
    for t in CYCLE_TABLES.iter().chain(&changes::TABLES) {
        let _ = ctx.deregister_table(*t);
    }
}

/// Build the read → map → diff plans for one sync (nothing is read yet).
async fn prepare(sync: &SyncRef<'_>) -> Result<Prepared, SyncError> {
    let (project, ctx, name, config) = (sync.project, sync.ctx, sync.name, sync.config);
    clear_cycle_tables(ctx);
    let df_err = engine(name, "read");
    let previous = project.state.latest(name).await?;
    let latest_version = project.state.newest_version(name).await?;

    let read = read::relation(sync).await?;
    let upstream = read.upstream.as_ref().map(|u| u.version());
    // The upstream's versions went backwards (a hub's state was removed or rebuilt): the
    // stored watermark and what the destination reported are about another history.
    let upstream_restarted = matches!(
        (previous.as_ref().and_then(|p| p.upstream), upstream),
        (Some(before), Some(now)) if before > now
    );
    if upstream_restarted {
        tracing::warn!(
            sync = name,
            "the upstream's state is older than the last run: reading all of it again"
        );
    }
    let mapped = map::map(config, read.relation.clone()).map_err(|p| SyncError::Mapping {
        sync: name.to_string(),
        problems: p.0,
    })?;
    let intents = intents::pending(project, name, previous.as_ref()).await?;
    let key_type = key_type(sync, &mapped, previous.as_ref(), &intents.pending).await;
    let dest_schema = destination_schema(&mapped, &key_type);

    let destination = project
        .destination(&config.to)
        .ok_or_else(|| SyncError::Mapping {
            sync: name.to_string(),
            problems: vec![format!("unknown destination \"{}\"", config.to)],
        })?;
    let fingerprint = state::portable(&destination.fingerprint(&config.object), &project.dir);
    let previous = state::fits(sync, previous, &fingerprint)?;

    // A changed mapping re-sends every row once, so a cursor sync reads the whole model once.
    let field_hashes = mapped.field_hashes.clone();
    let mapping_changed = previous
        .as_ref()
        .and_then(|p| p.fields.as_ref())
        .is_some_and(|f| *f != mapped.fingerprint);
    let rescan =
        sync.options.full_resync || mapping_changed || upstream_restarted || sync.options.partial();
    if mapping_changed && config.cursor.is_some() {
        tracing::info!(
            sync = name,
            "the field mapping changed: reading the whole model once"
        );
    }
    // A source that records its changes: after a first whole read, only what changed since
    // the version the state is up to date with (see `changes`).
    let changes::Opened {
        feed,
        source_version,
        mut notes,
    } = changes::open(
        sync,
        read.feed.as_deref(),
        &read.relation,
        previous.as_ref(),
        rescan
            || config.cursor.is_some()
            || !intents.pending.is_empty()
            || !intents.damaged.is_empty(),
    )
    .await?;
    let mut scope = if feed.is_some() {
        read::Scope::Changes
    } else if (config.cursor.is_some() && sync.options.only_keys.is_none())
        || sync.options.sample.is_some()
    {
        // A test run (a sample of the model) cannot tell which keys are gone either. A run
        // for given keys reads the whole model for them, and the state of those keys only:
        // it can.
        read::Scope::Part
    } else {
        read::Scope::Whole
    };
    let map_err = |p: map::MappingProblems| SyncError::Mapping {
        sync: name.to_string(),
        problems: p.0,
    };
    let whole = mapped.df;
    let model = match feed {
        Some(feed) => {
            let removed = map::map(config, feed.removed).map_err(map_err)?.df;
            let removed = with_key_type(removed, config, &key_type).map_err(&df_err)?;
            changes::register_removed(sync, removed)?;
            map::map(config, feed.added).map_err(map_err)?.df
        }
        None => whole.clone(),
    };
    let rows = read::incremental(
        sync,
        model,
        read.cursor_type.as_ref(),
        previous.as_ref(),
        rescan,
    )?;
    let rows = with_key_type(rows, config, &key_type).map_err(&df_err)?;
    let rows = match &sync.options.sample {
        None => rows,
        Some(Sample::First(n)) => {
            // By key: the key fields in order (a composite key's struct is not sortable).
            let order = config
                .key
                .destinations()
                .iter()
                .map(|k| ident(k).sort(true, false))
                .collect();
            rows.filter(ident(KEY).is_not_null())
                .and_then(|r| r.sort(order))
                // (DataFusion's limits are signed.)
                .and_then(|r| r.limit(0, Some((*n).min(i64::MAX as usize))))
                .map_err(&df_err)?
        }
        Some(Sample::Keys(keys)) => {
            let wanted = keys_filter(sync, &key_type, keys, "--keys", |_, f| ident(f))?;
            rows.filter(wanted).map_err(&df_err)?
        }
    };
    let rows = match &sync.options.only_keys {
        Some(keys) => {
            let wanted = keys_filter(sync, &key_type, keys, "keys", |_, f| ident(f))?;
            rows.filter(wanted).map_err(&df_err)?
        }
        None => rows,
    };
    ctx.register_table("bf_mapped", rows.into_view())
        .map_err(&df_err)?;

    // What the destination reported itself since the sync last ran (a hub write-back's
    // source): the state the diff compares with takes it as what the destination has.
    let (reported, reported_rows) = match &read.upstream {
        Some(u) => {
            let since = previous
                .as_ref()
                .and_then(|p| p.upstream)
                .filter(|_| !upstream_restarted);
            let rows =
                u.reported(project, ctx, since)
                    .await
                    .map_err(|source| SyncError::Upstream {
                        sync: name.to_string(),
                        source,
                    })?;
            match rows {
                Some(rows) => {
                    let count = rows.clone().count().await.map_err(&df_err)? as u64;
                    let mapped = map::map(config, rows).map_err(|p| SyncError::Mapping {
                        sync: name.to_string(),
                        problems: p.0,
                    })?;
                    let mut columns =
                        vec![cast(ident(KEY), key_type.clone()).alias(KEY), ident(HASH)];
                    columns.extend(state::fields_of(&mapped.df, state::keeps_fields(sync)));
                    let keyed = mapped.df.select(columns).map_err(&df_err)?;
                    (Some(keyed), count)
                }
                None => (None, 0),
            }
        }
        None => (None, 0),
    };
    let target = sync.write_target(dest_schema, latest_version + 1);
    // A sync without state compares with what the destination holds (see `existing`): only
    // upserts and mirrors, whose counts and deletes depend on it.
    // (An empty model whose key has no type yet has nothing to compare.)
    let unknown_state = previous.is_none()
        && !untyped(&key_type)
        && intents.pending.is_empty()
        && intents.damaged.is_empty()
        && read.upstream.is_none();
    let foreign = match existing::table(destination.clone(), &target) {
        Some(table)
            if unknown_state && matches!(config.behavior, Behavior::Upsert | Behavior::Mirror) =>
        {
            let keys = ctx
                .read_table(table)
                .and_then(|df| existing::typed(df, &key_type))
                .map_err(&df_err)?;
            Some(keys)
        }
        _ => None,
    };
    let compares_with_destination = foreign.is_some();
    state::register(
        sync,
        previous.as_ref(),
        &key_type,
        &intents,
        reported,
        foreign,
    )
    .await?;
    if scope == read::Scope::Changes
        && let Err(why) = changes::settle(sync, previous.as_ref().map_or(0, |p| p.rows)).await?
    {
        // The feed cannot settle every key: the whole table is read instead.
        notes.push(format!("{why}: the whole table was read"));
        let _ = ctx.deregister_table("bf_mapped");
        let rows = with_key_type(whole, config, &key_type).map_err(&df_err)?;
        ctx.register_table("bf_mapped", rows.into_view())
            .map_err(&df_err)?;
        scope = read::Scope::Whole;
    }
    let diff = diff::plan(sync, scope, compares_with_destination).await?;
    // Per-field hashes of the rows sent, before lookups replace values.
    let diff = match field_hashes {
        Some(hashes) => diff::with_field_hashes(diff, hashes).map_err(&df_err)?,
        None => diff,
    };
    let lookups = lookup::plan(sync, &destination, diff).await?;
    let mut target = target;
    target.schema = lookup::with_types(&target.schema, &lookups.types);
    target.creates_and_updates = destination.creates_and_updates();
    Ok(Prepared {
        diff: diff::with_join_sides(lookups.diff, scope, compares_with_destination),
        resolver: lookups.resolver,
        target,
        key_type,
        cursor_type: read.cursor_type,
        rescan,
        mapping_changed,
        fields: mapped.fingerprint,
        destination,
        fingerprint,
        previous,
        pending: intents.pending.into_iter().chain(intents.damaged).collect(),
        covered: intents.covered,
        upstream,
        scope,
        notes,
        source_version,
        reported: reported_rows,
    })
}

/// The key's type: the mapped key column's, or, when the model is too empty to have one (an
/// empty CSV's key column is NULL-typed), the one the state or the intent files have.
async fn key_type(
    sync: &SyncRef<'_>,
    mapped: &map::Mapped,
    previous: Option<&Manifest>,
    pending: &[String],
) -> DataType {
    let current = mapped
        .df
        .schema()
        .field_with_unqualified_name(KEY)
        .map(|f| f.data_type().clone())
        .unwrap_or(DataType::Null);
    if !untyped(&current) {
        return current;
    }
    let stored = previous
        .and_then(|p| p.key_type.parse::<DataType>().ok())
        .filter(|t| !untyped(t));
    match stored {
        Some(t) => t,
        None => intents::key_type(sync.project, sync.ctx, pending)
            .await
            .unwrap_or(current),
    }
}

/// Whether a key type says nothing yet (an empty CSV's column is NULL-typed; so is a
/// composite key's part then).
fn untyped(t: &DataType) -> bool {
    match t {
        DataType::Null => true,
        DataType::Struct(fields) => fields.iter().any(|f| *f.data_type() == DataType::Null),
        _ => false,
    }
}

/// A filter that keeps the rows with one of `keys` (as people write keys: see
/// [`crate::keys::key_parts`]), over the columns `column(i, field)` gives for each key part.
/// A key whose value cannot be of the key's type matches nothing. The alternatives are joined
/// as a balanced tree, so that thousands of keys do not make a plan too deep to walk.
pub(super) fn keys_filter(
    sync: &SyncRef<'_>,
    key_type: &DataType,
    keys: &[String],
    setting: &str,
    column: impl Fn(usize, &str) -> datafusion::prelude::Expr,
) -> Result<datafusion::prelude::Expr, SyncError> {
    use datafusion::prelude::{Expr, lit};
    let fields = sync.config.key.destinations();
    let part_types = key_part_types(key_type, fields.len());
    if let ([field], [t]) = (fields.as_slice(), part_types.as_slice()) {
        let values = keys
            .iter()
            .map(|k| try_cast(lit(k.as_str()), t.clone()))
            .collect();
        return Ok(column(0, field).in_list(values, false));
    }
    let mut wanted = Vec::with_capacity(keys.len());
    for k in keys {
        let parts = crate::keys::key_parts(k, fields.len()).map_err(|why| SyncError::Mapping {
            sync: sync.name.to_string(),
            problems: vec![format!("{setting}: {why}")],
        })?;
        let one = fields
            .iter()
            .zip(&part_types)
            .zip(parts)
            .enumerate()
            .map(|(i, ((f, t), v))| column(i, f).eq(try_cast(lit(v), t.clone())))
            .reduce(Expr::and)
            .unwrap_or(lit(false));
        wanted.push(one);
    }
    Ok(balanced_or(wanted))
}

/// `a OR b OR …` as a tree of depth log2(n).
fn balanced_or(mut exprs: Vec<datafusion::prelude::Expr>) -> datafusion::prelude::Expr {
    while exprs.len() > 1 {
        let mut next = Vec::with_capacity(exprs.len().div_ceil(2));
        let mut it = exprs.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => a.or(b),
                None => a,
            });
        }
        exprs = next;
    }
    exprs.pop().unwrap_or(datafusion::prelude::lit(false))
}

/// The type of each key field, from the key's type (a composite key's is a struct of them).
fn key_part_types(key_type: &DataType, key_len: usize) -> Vec<DataType> {
    match key_type {
        DataType::Struct(fields) if key_len > 1 => {
            fields.iter().map(|f| f.data_type().clone()).collect()
        }
        t => vec![t.clone(); key_len],
    }
}

/// The fields the destination receives (the key's first, with `key_type`), all nullable.
fn destination_schema(mapped: &map::Mapped, key_type: &DataType) -> SchemaRef {
    let schema = mapped.df.schema();
    let part_types = key_part_types(key_type, mapped.key_len);
    let fields: Vec<Field> = mapped
        .fields
        .iter()
        .filter_map(|f| schema.field_with_unqualified_name(f).ok())
        .enumerate()
        .map(|(i, f)| {
            let f = f.as_ref().clone().with_nullable(true);
            match part_types.get(i) {
                Some(t) => f.with_data_type(t.clone()),
                None => f,
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `rows` with the key fields (and `__bf_key`) cast to `key_type`.
fn with_key_type(
    rows: DataFrame,
    config: &SyncConfig,
    key_type: &DataType,
) -> Result<DataFrame, datafusion::error::DataFusionError> {
    let key_fields = config.key.destinations();
    let part_types = key_part_types(key_type, key_fields.len());
    let columns = rows
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let n = f.name();
            let want = if n == KEY {
                Some(key_type)
            } else {
                key_fields
                    .iter()
                    .position(|k| k == n)
                    .and_then(|i| part_types.get(i))
            };
            match want {
                Some(t) if f.data_type() != t => cast(ident(n), t.clone()).alias(n),
                _ => ident(n),
            }
        })
        .collect::<Vec<_>>();
    rows.select(columns)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Run one sync: diff, write the changes, commit the state, record history.
pub async fn run(
    project: &Project,
    ctx: &SessionContext,
    name: &str,
    options: RunOptions,
    progress: Arc<dyn Progress>,
) -> SyncReport {
    let started = now_ms();
    let sync = SyncRef::new(project, ctx, name, options);
    // Opening the sources (a CSV source's inference and scan) came before the run started.
    let sources_ms = project.source_time_ms([sync.config.from.as_str()]) as i64;
    let mut tally = Tally::default();
    // Rows a CSV source left out never reached the model: invalid records of this sync.
    let (quarantined, rows) = project.quarantined(&sync.config.from);
    tally.counts.invalid += quarantined;
    let result = run_cycle(&sync, &mut tally, progress).await;
    clear_cycle_tables(ctx);
    for r in rows {
        // The key, when the row has a column named like the sync's key (a source read as it
        // is, or a model that keeps the name).
        let parts: Vec<Option<String>> = sync
            .config
            .key
            .sources()
            .map(|k| {
                r.fields
                    .iter()
                    .find(|(column, _)| column == k)
                    .map(|(_, value)| value.clone())
            })
            .collect();
        let key = if parts.iter().all(Option::is_some) {
            Some(crate::keys::key_text_of(
                &parts.into_iter().flatten().collect::<Vec<_>>(),
            ))
        } else {
            None
        };
        tally.sample(
            history::RecordKind::Invalid,
            key,
            format!(
                "source {} {} line {}: {}",
                r.source, r.file, r.line, r.reason
            ),
            serde_json::json!({ "line": r.line, "row": r.record }).to_string(),
        );
    }
    let (status, version, watermark, error) = match result {
        Ok(m) => (
            RunStatus::Succeeded,
            Some(m.version),
            m.watermark.map(|w| w.value),
            None,
        ),
        Err(e @ SyncError::Guarded { .. }) => (RunStatus::Guarded, None, None, Some(e.to_string())),
        // Whatever stopped a run after a stop was asked for, the stop did.
        Err(_) if crate::interrupt::requested() => (
            RunStatus::Interrupted,
            None,
            None,
            Some(format!("sync \"{name}\": {}", crate::interrupt::MESSAGE)),
        ),
        Err(e) => (RunStatus::Failed, None, None, Some(e.to_string())),
    };
    let finished = now_ms();
    let warnings: Vec<String> = {
        let mut w = report::warnings(name, sync.config.behavior, &tally.counts);
        w.extend(tally.notes.iter().cloned());
        if let Some(Sample::Keys(keys)) = &sync.options.sample {
            let n = sync.config.key.parts().len();
            let missing: Vec<&str> = keys
                .iter()
                .filter(|k| {
                    // As the run writes the key (a composite key's spacing may differ).
                    let canonical = crate::keys::key_parts(k, n)
                        .map(|p| crate::keys::key_text_of(&p))
                        .unwrap_or_else(|_| k.to_string());
                    !tally
                        .sent
                        .iter()
                        .any(|s| s.key.as_deref() == Some(canonical.as_str()))
                })
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                w.push(format!(
                    "nothing was sent for key(s) {}: no row of the model has them (or \
                     their rows are invalid, or the behavior sends nothing for them)",
                    missing.join(", ")
                ));
            }
        }
        w
    };
    let record = RunRecord {
        run_id: sync.run_id.clone(),
        sync: name.to_string(),
        status: status.clone(),
        started_at_ms: started,
        finished_at_ms: finished,
        full_resync: sync.options.full_resync,
        counts: tally.counts.clone(),
        state_version: version,
        error: error.clone(),
        behavior: Some(sync.config.behavior.to_string()),
        destination: Some(sync.config.to.clone()),
        object: Some(sync.config.object.clone()),
        warnings: warnings.clone(),
        trigger: sync.options.trigger.clone(),
        keys: sync.options.only_keys.as_ref().map(|k| k.len() as u64),
    };
    let mut error = error;
    if let Err(e) = history::record(&project.state, &record, &tally.samples).await {
        tracing::warn!(sync = name, error = %e, "could not record run history");
        let note = format!("run history was not recorded: {e}");
        error = Some(match error {
            Some(prev) => format!("{prev}; {note}"),
            None => note,
        });
    }
    SyncReport {
        sync: name.to_string(),
        status,
        warnings: warnings.clone(),
        sent: std::mem::take(&mut tally.sent),
        counts: tally.counts,
        behavior: sync.config.behavior,
        destination: sync.config.to.clone(),
        object: sync.config.object.clone(),
        run_id: sync.run_id,
        duration_ms: finished - started + sources_ms,
        sources_ms,
        state_version: version,
        watermark,
        error,
        samples: tally.samples,
    }
}

/// One cycle under the sync's lock (given up when it ends, however it ends: a lease left
/// behind would turn the next run away until it expires).
async fn run_cycle(
    sync: &SyncRef<'_>,
    tally: &mut Tally,
    progress: Arc<dyn Progress>,
) -> Result<Manifest, SyncError> {
    let lock = sync
        .project
        .state
        .acquire(&crate::state::Chain::sync(sync.name), &sync.run_id)
        .await?;
    let result = locked_cycle(sync, tally, progress, &lock).await;
    lock.release().await;
    result
}

/// prepare → apply → finish → next state → commit.
async fn locked_cycle(
    sync: &SyncRef<'_>,
    tally: &mut Tally,
    progress: Arc<dyn Progress>,
    lock: &SyncLock,
) -> Result<Manifest, SyncError> {
    let (project, name, config) = (sync.project, sync.name, sync.config);
    let mut prepared = prepare(sync).await?;
    prepared.target.progress = progress.clone();
    for note in &prepared.notes {
        tracing::info!(sync = name, "{note}");
    }
    tally.notes.extend(prepared.notes.iter().cloned());
    let hold_deletes = project.quarantined(&config.from).0 > 0;
    let sampled = sync.options.sample.is_some();
    let partial = sync.options.partial();
    // Deletes a source's unreadable rows hold back are not made, nor a test run's; a run for
    // given keys deletes only those: nothing to guard then.
    let scope = prepared.scope;
    let pending_guard = match prepared.previous.as_ref() {
        Some(previous) if !hold_deletes && !partial && guard::applies(sync, previous) => {
            // A run that reads a change feed sees only the keys it touched: the records in
            // sync are the state's.
            let state_rows = (scope == read::Scope::Changes).then_some(previous.rows);
            Some(apply::PendingGuard {
                verdict: Box::new(move |deletes, in_sync| {
                    guard::tripped(sync, deletes, state_rows.unwrap_or(in_sync))
                }),
                count: Box::pin(guard::count(sync, scope)),
            })
        }
        _ => None,
    };
    failpoint!("after_diff", name);

    let data_dir = project.state.new_data_dir(name, prepared.target.version);
    let dest_err = |source| SyncError::Destination {
        sync: name.to_string(),
        source,
    };
    let destination = prepared.destination.clone();
    let mut writer = destination.open(&prepared.target).await.map_err(dest_err)?;
    let sent_rel = format!("{data_dir}/sent.parquet");
    let mut sent = state::SentWriter::new(
        &project.state,
        &sent_rel,
        &prepared.key_type,
        state::keeps_fields(sync),
    )?;
    // Keys about to be written are written down first (write-ahead), so that a crash between
    // the destination write and the commit cannot leave a record that differs from what the
    // state says. Append-only, create-only and delete syncs need none: they never act on a
    // record that is in their state.
    let mut intents = config.behavior.acts_on_synced_records().then(|| {
        intents::IntentLog::new(&project.state, &intents::dir(name), &sync.run_id)
            .with_fence(lock.fence())
    });
    let guards = apply::Guards {
        fence: lock.fence(),
        hold_deletes,
    };

    let stream = prepared
        .diff
        .clone()
        .execute_stream()
        .await
        .map_err(engine(name, "diff"))?;
    let started = std::time::Instant::now();
    let outbox = apply::Outbox::new(
        name,
        &prepared.target,
        sync.options.full_resync,
        writer.as_mut(),
        &mut sent,
        intents.as_mut(),
        &guards,
    );
    let outbox = if sampled {
        outbox.showing_sent()
    } else {
        outbox
    };
    // Only changed fields: comparable with the state's per-field hashes when those were made
    // under this mapping (else every field of a changed row is sent).
    let outbox = if state::keeps_fields(sync) {
        outbox.sending_changed_fields(!prepared.mapping_changed)
    } else {
        outbox
    };
    let mut log = record_log::RecordLog::open(sync, now_ms())?;
    let outbox = outbox
        .logging_to(log.as_mut())
        .resolving(prepared.resolver.as_mut());
    let applied = apply::apply(
        stream,
        outbox,
        prepared.cursor_type.as_ref(),
        tally,
        progress.as_ref(),
        pending_guard,
    )
    .await;
    // What was sent before a failure was sent: its log is kept.
    let cursors = match applied {
        Ok(c) => c,
        Err(e) => {
            if let Some(log) = log
                && let Err(le) = log.close().await
            {
                tracing::warn!(sync = name, error = %le, "could not write the record log");
            }
            return Err(e);
        }
    };
    tracing::info!(
        sync = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "diff and apply done"
    );
    failpoint!("before_finish", name);
    // The destination's writes land here for some (files): only under a lease still held.
    lock.confirm().await?;
    let started = std::time::Instant::now();
    let finished = writer.finish().await.map_err(dest_err)?;
    tracing::info!(
        sync = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "destination finished"
    );
    let started = std::time::Instant::now();
    failpoint!("after_destination_write", name);
    tally.finished(&prepared.target.key, &finished);
    if let Some(mut log) = log {
        if !finished.rejected.is_empty() {
            let keys = datafusion::common::ScalarValue::iter_to_array(
                finished.rejected.iter().map(|r| r.key.clone()),
            )
            .map_err(engine(name, "record log"))?;
            let reasons: Vec<Option<String>> = finished
                .rejected
                .iter()
                .map(|r| Some(r.reason.clone()))
                .collect();
            log.write("finish", &keys, &reasons).await?;
        }
        log.close().await?;
    }
    let (new_keys, left_keys) = (sent.new_keys, sent.left_keys);
    let sent_rows = sent.close().await?;
    let previous_watermark = prepared
        .previous
        .as_ref()
        .and_then(|p| p.watermark.clone())
        .filter(|_| !prepared.rescan);
    let watermark = if partial {
        // A test run (or a run for given keys) read a few rows, not the model up to some
        // cursor value; and the hashes
        // the state keeps for the other rows were made under the mapping it had.
        if let Some(fields) = prepared.previous.as_ref().and_then(|p| p.fields.clone()) {
            prepared.fields = fields;
        }
        prepared.previous.as_ref().and_then(|p| p.watermark.clone())
    } else {
        watermark::next(
            config.cursor.as_ref(),
            cursors,
            previous_watermark,
            !finished.rejected.is_empty(),
        )
    };
    // The source's version the state is now up to date with: none when the run left rows to
    // read again (invalid or rejected ones are read again until they are fixed, as with a
    // cursor), or read part of the model on purpose (the rows it sent are past the version
    // the state had).
    let source_version = if partial || tally.counts.invalid > 0 || tally.counts.rejected > 0 {
        if prepared.source_version.is_some() {
            tracing::info!(
                sync = name,
                "a partial run, or invalid or rejected rows: the next run reads the whole source"
            );
        }
        None
    } else {
        prepared.source_version.clone()
    };
    let up_to = commit::UpTo {
        watermark,
        source_version,
    };
    // A run that changed nothing commits nothing: the state stays the version it was (the run
    // is in history all the same).
    let wrote_intents = intents.as_ref().is_some_and(|i| !i.files.is_empty());
    if let Some(previous) = prepared.previous.as_ref()
        && !sampled
        && sent_rows == 0
        && finished.rejected.is_empty()
        && !wrote_intents
        && commit::changes_nothing(&prepared, previous, &up_to)
    {
        if let Err(e) = project.state.delete(&sent_rel).await {
            tracing::debug!(sync = name, error = %e, "could not remove an empty sent file");
        }
        record_log::expire(sync).await;
        return Ok(previous.clone());
    }

    let next = state::next(
        sync,
        prepared.previous.as_ref(),
        prepared.rescan,
        &prepared.key_type,
        &data_dir,
        state::Accepted {
            sent: &sent_rel,
            rows: sent_rows,
            new_keys,
            left_keys,
            late: &finished.rejected,
            overlaid: !prepared.pending.is_empty() || prepared.reported > 0,
        },
    )
    .await?;
    tracing::info!(
        sync = name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    let committed =
        commit::commit(sync, &prepared, next, up_to, &tally.counts, lock, intents).await?;
    record_log::expire(sync).await;
    Ok(committed)
}
