//! The transaction log: every change a cycle made to golden records, one row per change.
//!
//! | op | meaning | field / old_value / new_value | source, source_id | detail |
//! |---|---|---|---|---|
//! | `create` | a golden record was created | — | — | — |
//! | `set` | a field changed | the field, its old and new value (as text) | the source the new value came from | — |
//! | `link` | a source record was linked to the golden record | — / the golden id it had / the new one | the source record | how: `id`, `new`, `match: …`, `merge` |
//! | `merge` | the golden record was merged into another and retired | — / — / the winner's id | — | — |
//! | `unlink` | a source record left the golden record: deleted in its source | — / the golden id it had / — | the source record | why: `no longer in the source`, `marked deleted in the source` |
//! | `retire` | the golden record's last source record was deleted: it is end-dated | — | — | the reason |
//!
//! One file per cycle under `hub/<entity>/log/`; the manifest lists them, oldest first, and
//! folds them into one file every [`COMPACT_AT`] cycles.

use super::HubError;
use super::context::{Cycle, OVER, REMOVED, contrib_next, contrib_old, golden_old};
use super::sql::{lit, q};
use super::state::{self, HubManifest, StateFile, log_schema};
use crate::project::Project;
use crate::state::Chain;

/// Log files kept apart before they are folded into one.
pub const COMPACT_AT: usize = 32;

/// What a cycle's log says it did.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub created: u64,
    pub updated: u64,
    pub merged: u64,
    pub retired: u64,
}

fn log_dir(cycle: &Cycle<'_>) -> String {
    if cycle.dry_run {
        return cycle.data_dir.clone();
    }
    format!("hub/{}/log", cycle.name)
}

/// Write this cycle's log file.
pub async fn write(cycle: &Cycle<'_>) -> Result<(StateFile, LogCounts), HubError> {
    let v = cycle.version;
    let head = format!(
        "{v} AS version, {run} AS run_id, {now} AS at",
        run = lit(cycle.run_id),
        now = cycle.now_sql()
    );
    let merged = state::MERGED_INTO;
    let mut parts = vec![format!(
        "SELECT {head}, n.golden_id, 'create' AS op, CAST(NULL AS VARCHAR) AS field,
                CAST(NULL AS VARCHAR) AS old_value, CAST(NULL AS VARCHAR) AS new_value,
                CAST(NULL AS VARCHAR) AS source, CAST(NULL AS VARCHAR) AS source_id,
                CAST(NULL AS VARCHAR) AS detail
         FROM {OVER} n LEFT JOIN {old} o ON o.golden_id = n.golden_id
         WHERE o.golden_id IS NULL",
        old = golden_old()
    )];
    for f in cycle.entity.fields.keys() {
        let fq = q(f);
        parts.push(format!(
            "SELECT {head}, n.golden_id, 'set', {name}, CAST(o.{fq} AS VARCHAR), CAST(n.{fq} AS VARCHAR),
                    n.{src}, CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR)
             FROM {OVER} n LEFT JOIN {old} o ON o.golden_id = n.golden_id
             WHERE n.{merged} IS NULL
               AND ((o.golden_id IS NULL AND n.{fq} IS NOT NULL)
                    OR (o.golden_id IS NOT NULL AND (n.{fq} IS DISTINCT FROM o.{fq})))",
            name = lit(f),
            src = q(&state::src_col(f)),
            old = golden_old()
        ));
    }
    parts.push(format!(
        "SELECT {head}, n.golden_id, 'merge', CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
                CAST(n.{merged} AS VARCHAR), CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
                CAST(NULL AS VARCHAR)
         FROM {OVER} n LEFT JOIN {old} o ON o.golden_id = n.golden_id
         WHERE n.{merged} IS NOT NULL AND o.{merged} IS NULL",
        old = golden_old()
    ));
    parts.push(format!(
        "SELECT {head}, r.__bf_golden_id, 'unlink', CAST(NULL AS VARCHAR),
                CAST(r.__bf_golden_id AS VARCHAR), CAST(NULL AS VARCHAR), r.__bf_source,
                r.__bf_sid_text, r.__bf_why
         FROM {REMOVED} r"
    ));
    parts.push(format!(
        "SELECT {head}, n.golden_id, 'retire', CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
                CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
                n.{reason}
         FROM {OVER} n LEFT JOIN {old} o ON o.golden_id = n.golden_id
         WHERE n.{retired} IS NOT NULL AND o.{retired} IS NULL",
        old = golden_old(),
        retired = state::RETIRED_AT,
        reason = state::RETIRED_REASON,
    ));
    for source in cycle.entity.sources.keys() {
        parts.push(format!(
            "SELECT {head}, n.{link}, 'link', CAST(NULL AS VARCHAR), CAST(o.{link} AS VARCHAR),
                    CAST(n.{link} AS VARCHAR), {src}, CAST(n.{sid} AS VARCHAR), n.{by}
             FROM (SELECT * FROM {next} WHERE {link_seq} = {v} AND {link} IS NOT NULL) n
             LEFT JOIN {old} o ON o.{sid} = n.{sid}
             WHERE (o.{sid} IS NULL) OR (o.{link} IS DISTINCT FROM n.{link})",
            link = state::LINK,
            sid = state::SID,
            by = state::LINKED_BY,
            link_seq = state::LINK_SEQ,
            src = lit(source),
            next = contrib_next(source),
            old = contrib_old(source),
        ));
    }
    // Records created under a stand-in id, linked now by the id their destination gave.
    for source in cycle.entity.sources.keys() {
        let folded = super::assigned::folded_table(source);
        if cycle.ctx.table_exist(folded.as_str()).unwrap_or(false) {
            parts.push(format!(
                "SELECT {head}, f.golden_id, 'link', CAST(NULL AS VARCHAR),
                        CAST(f.golden_id AS VARCHAR), CAST(f.golden_id AS VARCHAR), {src},
                        f.sid_text, f.how
                 FROM {folded} f
                 UNION ALL
                 SELECT {head}, d.golden_id, 'unlink', CAST(NULL AS VARCHAR),
                        CAST(d.golden_id AS VARCHAR), CAST(NULL AS VARCHAR), {src}, d.sid_text,
                        'the destination gave its id to a record it created: it is gone there'
                 FROM {displaced} d",
                src = lit(source),
                displaced = super::assigned::displaced_table(source),
            ));
        }
    }
    let df = cycle.sql("log", &parts.join("\nUNION ALL\n")).await?;
    let rel = format!(
        "{}/v{v:020}-{}.parquet",
        log_dir(cycle),
        uuid::Uuid::new_v4().simple()
    );
    let rows = cycle
        .project
        .state
        .write_plan(df, &rel, Some(log_schema()))
        .await?;
    cycle.register_file("log", &rel, "bf_hub_log").await?;
    let counts = LogCounts {
        created: cycle
            .count("log", "SELECT COUNT(*) FROM bf_hub_log WHERE op = 'create'")
            .await?,
        updated: cycle
            .count(
                "log",
                "SELECT COUNT(DISTINCT golden_id) FROM bf_hub_log WHERE op = 'set' \
                 AND golden_id NOT IN (SELECT golden_id FROM bf_hub_log WHERE op = 'create')",
            )
            .await?,
        merged: cycle
            .count("log", "SELECT COUNT(*) FROM bf_hub_log WHERE op = 'merge'")
            .await?,
        retired: cycle
            .count("log", "SELECT COUNT(*) FROM bf_hub_log WHERE op = 'retire'")
            .await?,
    };
    Ok((
        StateFile {
            path: rel,
            rows,
            bytes: None,
        },
        counts,
    ))
}

/// Fold the log into one file once it has [`COMPACT_AT`] of them.
pub async fn compact(cycle: &Cycle<'_>, log: Vec<StateFile>) -> Result<Vec<StateFile>, HubError> {
    if log.len() < COMPACT_AT {
        return Ok(log);
    }
    let files: Vec<&StateFile> = log.iter().collect();
    let all = state::read_aligned(&cycle.project.state, cycle.ctx, &files, &log_schema())
        .await
        .map_err(cycle.engine("log"))?;
    let rel = format!(
        "{}/v{:020}-{}-compacted.parquet",
        log_dir(cycle),
        cycle.version,
        uuid::Uuid::new_v4().simple()
    );
    let rows = cycle
        .project
        .state
        .write_plan(all, &rel, Some(log_schema()))
        .await?;
    Ok(vec![StateFile {
        path: rel,
        rows,
        bytes: None,
    }])
}

/// Remove log files no kept version names (folded ones, and orphans of crashed cycles).
/// Best effort, like the state vacuum.
pub async fn vacuum(project: &Project, chain: &Chain) {
    let store = &project.state;
    let dir = format!("{}/log", chain.root());
    let Ok(Some(newest)) = store.latest_in::<HubManifest>(chain).await else {
        return;
    };
    let mut keep: Vec<String> = newest.log.iter().map(|f| f.path.clone()).collect();
    // The version before the newest is kept too (see the state vacuum): so are its files.
    let previous = format!(
        "{}/_manifests/{:020}.json",
        chain.root(),
        newest.version.saturating_sub(1)
    );
    if let Ok(bytes) = store.read(&previous).await
        && let Ok(m) = serde_json::from_slice::<HubManifest>(&bytes)
    {
        keep.extend(m.log.iter().map(|f| f.path.clone()));
    }
    let Ok(files) = store.list_files(&dir).await else {
        return;
    };
    for f in files {
        let rel = format!("{dir}/{f}");
        let version: Option<u64> = f
            .strip_prefix('v')
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse().ok());
        // Files of a version above the newest belong to a cycle in flight.
        if keep.contains(&rel) || version.is_none_or(|v| v > newest.version) {
            continue;
        }
        if let Err(e) = store.delete(&rel).await {
            tracing::warn!(owner = chain.owner(), error = %e, "could not remove a log file");
        }
    }
}
