//! Ids a destination gives the records the hub has it create (`writeback.create` to an HTTP
//! API whose create endpoint has `result_id`): the API, not the hub, decides the new record's
//! id, so the ID map learns it from the answer.
//!
//! ```text
//!  cycle N commits:  contrib-<source> gains (create_id, golden id), linked_by "created
//!                    (write-back)", never read: a stand-in id the record is sent under
//!  create sync:      POST …; each answer's id → hub/<entity>/assigned/<source>/<uuid>.parquet
//!                    (stand-in, id), durable before the sync's state records the create
//!  cycle N+1:        before anything is read, each stand-in is replaced by the API's id
//!                    (linked_by "created (write-back), id given by the destination", logged);
//!                    the source's read of that id attaches it to its golden record
//!  after its commit: the journal files it folded are removed
//! ```
//!
//! A crash never creates a record twice once its answer is in the journal: the create sync
//! leaves out every stand-in the journal names, folded or not, and a cycle that crashed before
//! its commit folds the same files again (a fold is idempotent: a stand-in replaced is gone).
//! The one window left is between the API's answer and the journal write: a create sent again
//! then carries the same `Idempotency-Key`, which an API that honours it answers with the
//! record it made.

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::try_cast;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, col};
use std::sync::Arc;

use super::HubError;
use super::context::Cycle;
use super::sql::{lit, q};
use super::state;
use crate::project::Project;

/// How a record created under a stand-in id is linked once its API id is known.
pub const ASSIGNED: &str = "created (write-back), id given by the destination";
/// How it stays linked when that id cannot be linked (see [`fold`]): by its stand-in, never
/// created again, until the source reports a record of its golden record.
pub const UNLINKED: &str = "created (write-back), the destination's id could not be linked";

const STAND_IN: &str = "stand_in";
const ID: &str = "id";

/// The journal folder of one source.
fn dir(entity: &str, source: &str) -> String {
    format!("hub/{entity}/assigned/{source}")
}

/// Table names of a cycle: the journal, and what this cycle folds.
fn journal_table(source: &str) -> String {
    format!("bf_hub_assigned_{source}")
}
pub fn folded_table(source: &str) -> String {
    format!("bf_hub_folded_{source}")
}
/// Records whose id the destination gave to a record it created: they left it.
pub fn displaced_table(source: &str) -> String {
    format!("bf_hub_displaced_{source}")
}

/// Write down the ids the destination gave records created for `entity` in `source` (stand-in
/// id → the API's id, both as text). The file is durable when this returns.
pub async fn record(
    state: &crate::state::StateStore,
    entity: &str,
    source: &str,
    ids: Vec<(String, String)>,
) -> Result<(), HubError> {
    if ids.is_empty() {
        return Ok(());
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new(STAND_IN, DataType::Utf8, false),
        Field::new(ID, DataType::Utf8, false),
    ]));
    let (stand_ins, api_ids): (Vec<String>, Vec<String>) = ids.into_iter().unzip();
    let problem = |message: String| HubError::Source {
        entity: entity.to_string(),
        source_name: source.to_string(),
        message,
    };
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(stand_ins)),
            Arc::new(StringArray::from(api_ids)),
        ],
    )
    .map_err(|e| problem(format!("cannot keep the ids the destination gave: {e}")))?;
    let bytes = crate::state::parquet_bytes(&batch)
        .map_err(|e| problem(format!("cannot keep the ids the destination gave: {e}")))?;
    let rel = format!(
        "{}/{}.parquet",
        dir(entity, source),
        uuid::Uuid::new_v4().simple()
    );
    if let Err(e) = state.put_new(&rel, bytes).await {
        // A file that did not arrive whole would stop every later cycle from reading the
        // journal: it goes, and the run fails (its records are created again).
        let _ = state.delete(&rel).await;
        return Err(e.into());
    }
    Ok(())
}

/// The journal files of `source` (relative to the state root), oldest first.
async fn files(project: &Project, entity: &str, source: &str) -> Result<Vec<String>, HubError> {
    let d = dir(entity, source);
    Ok(project
        .state
        .list_files(&d)
        .await?
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| format!("{d}/{f}"))
        .collect())
}

/// The journal of `source` as (stand_in, id), or None when it is empty.
async fn journal(
    project: &Project,
    ctx: &SessionContext,
    entity: &str,
    source: &str,
) -> Result<Option<(DataFrame, Vec<String>)>, HubError> {
    let files = files(project, entity, source).await?;
    if files.is_empty() {
        return Ok(None);
    }
    let urls: Vec<String> = files.iter().map(|f| project.state.table_url(f)).collect();
    let df = ctx
        .read_parquet(urls, ParquetReadOptions::default())
        .await
        .map_err(|source| HubError::Engine {
            entity: entity.to_string(),
            stage: "state",
            source,
        })?;
    Ok(Some((df, files)))
}

/// The committed contributions of `source` (`stored`), with each stand-in id the journal
/// names replaced by the id the destination gave (when it is of the source's id type: an id
/// of another type keeps its stand-in, with a warning). Registers what it folds (for the
/// log) and remembers the journal files, removed once the cycle commits. Returns the
/// contributions and how many it folded.
pub async fn fold(
    cycle: &Cycle<'_>,
    source: &str,
    stored: DataFrame,
    id_type: &DataType,
) -> Result<(DataFrame, u64), HubError> {
    let Some((journal, files)) = journal(cycle.project, cycle.ctx, cycle.name, source).await?
    else {
        return Ok((stored, 0));
    };
    let engine = cycle.engine("state");
    let ids = journal
        .aggregate(vec![col(STAND_IN)], vec![max(col(ID)).alias(ID)])
        .and_then(|j| {
            j.select(vec![
                col(STAND_IN),
                col(ID).alias("api_id"),
                try_cast(col(ID), id_type.clone()).alias("typed_id"),
            ])
        })
        .map_err(&engine)?;
    let (jt, st) = (journal_table(source), format!("bf_hub_stored_{source}"));
    cycle.register("state", &jt, ids)?;
    cycle.register("state", &st, stored.clone())?;
    let (sid, read, by, link) = (state::SID, state::READ_SEQ, state::LINKED_BY, state::LINK);
    // An id can be linked when it is of the source's id type and the journal gives it to one
    // record only. A record of the source that has it already is gone from the destination,
    // which gave its id to the record it just created (an API that reuses the ids of deleted
    // records, read through an export that still has the old one): its link leaves.
    let usable = format!("bf_hub_assigned_usable_{source}");
    let checked = cycle
        .sql(
            "state",
            &format!(
                "SELECT j.{STAND_IN}, j.api_id, \
                        CASE WHEN j.typed_id IS NOT NULL AND d.typed_id IS NULL \
                        THEN j.typed_id END AS usable_id \
                 FROM {jt} j \
                 LEFT JOIN (SELECT typed_id FROM {jt} WHERE typed_id IS NOT NULL \
                            GROUP BY typed_id HAVING COUNT(*) > 1) d ON d.typed_id = j.typed_id"
            ),
        )
        .await?;
    cycle.register("state", &usable, checked)?;
    let joined = format!(
        "FROM {st} c LEFT JOIN {usable} a ON CAST(c.{sid} AS VARCHAR) = a.{STAND_IN} \
           AND c.{read} IS NULL AND c.{by} = {created}",
        created = lit(super::create::CREATED)
    );
    let unusable = cycle
        .count(
            "state",
            &format!(
                "SELECT COUNT(*) {joined} WHERE a.{STAND_IN} IS NOT NULL AND a.usable_id IS NULL"
            ),
        )
        .await?;
    if unusable > 0 {
        tracing::warn!(
            entity = cycle.name,
            source,
            records = unusable,
            id_type = %id_type,
            "the destination gave created records ids that cannot be linked (not of the source's id type, or one id to two records): they stay linked by the id they were created under, are not created again, and are matched by the match rules once the source reports them"
        );
    }
    let hit = "a.usable_id IS NOT NULL";
    let folded_now = format!("a.{STAND_IN} IS NOT NULL");
    let columns: Vec<String> = stored
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let n = f.name();
            if n == sid {
                format!("CASE WHEN {hit} THEN a.usable_id ELSE c.{sid} END AS {sid}")
            } else if n == by {
                format!(
                    "CASE WHEN {hit} THEN {} WHEN {folded_now} THEN {} ELSE c.{by} END AS {by}",
                    lit(ASSIGNED),
                    lit(UNLINKED)
                )
            } else {
                format!("c.{}", q(n))
            }
        })
        .collect();
    // The ids linked now, and the records that had them before.
    let taking = format!(
        "SELECT a.usable_id {joined} WHERE {hit}",
        joined = joined.replacen("LEFT JOIN", "JOIN", 1)
    );
    let folded = cycle
        .sql(
            "state",
            &format!(
                "SELECT {} {joined} LEFT JOIN ({taking}) x ON x.usable_id = c.{sid} \
                 WHERE x.usable_id IS NULL OR a.{STAND_IN} IS NOT NULL",
                columns.join(", ")
            ),
        )
        .await?;
    let displaced = cycle
        .sql(
            "state",
            &format!(
                "SELECT CAST(c.{sid} AS VARCHAR) AS sid_text, c.{link} AS golden_id \
                 FROM {st} c JOIN ({taking}) x ON x.usable_id = c.{sid}"
            ),
        )
        .await?;
    cycle.register("state", &displaced_table(source), displaced)?;
    let now = cycle
        .sql(
            "state",
            &format!(
                "SELECT CAST(COALESCE(a.usable_id, c.{sid}) AS VARCHAR) AS sid_text, \
                        c.{link} AS golden_id, \
                        CASE WHEN {hit} THEN {assigned} || ' (created as ' || a.{STAND_IN} || ')' \
                             ELSE {unlinked} || ' (the destination gave ' || a.api_id || ')' END AS how \
                 {joined} WHERE {folded_now}",
                assigned = lit(ASSIGNED),
                unlinked = lit(UNLINKED),
            ),
        )
        .await?;
    cycle.register("state", &folded_table(source), now)?;
    let n = cycle
        .count(
            "state",
            &format!("SELECT COUNT(*) FROM {}", folded_table(source)),
        )
        .await?;
    if n == 0 && !cycle.dry_run {
        // Every stand-in the journal names was replaced by a committed cycle (one that
        // stopped before removing its files): they are done with. (A journal file names only
        // stand-ins of committed cycles, and files written after the listing are not here.)
        for f in files {
            if let Err(e) = cycle.project.state.delete(&f).await {
                tracing::warn!(entity = cycle.name, error = %e, file = f, "could not remove a folded journal file of created ids");
            }
        }
    } else if let Ok(mut f) = cycle.assigned_files.lock() {
        f.extend(files);
    }
    Ok((folded, n))
}

/// Remove the journal files a committed cycle folded. Best effort: a file left is folded
/// again by the next cycle, which finds nothing of it to replace.
pub async fn consumed(cycle: &Cycle<'_>) {
    let files = cycle
        .assigned_files
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    for f in files {
        if let Err(e) = cycle.project.state.delete(&f).await {
            tracing::warn!(entity = cycle.name, error = %e, file = f, "could not remove a folded journal file of created ids");
        }
    }
}

/// `pending` (a creating source's records waiting to be created) without those the journal
/// has an id for: they were created, and the next cycle links them by that id.
pub async fn not_created(
    project: &Project,
    ctx: &SessionContext,
    entity: &str,
    source: &str,
    pending: DataFrame,
) -> Result<DataFrame, HubError> {
    let Some((journal, _)) = journal(project, ctx, entity, source).await? else {
        return Ok(pending);
    };
    let engine = |source| HubError::Engine {
        entity: entity.to_string(),
        stage: "writeback",
        source,
    };
    let stand_ins = journal
        .select(vec![col(STAND_IN)])
        .and_then(|j| j.distinct())
        .map_err(engine)?;
    pending
        .join_on(
            stand_ins,
            datafusion::common::JoinType::LeftAnti,
            [datafusion::logical_expr::cast(
                datafusion::prelude::ident(state::SID),
                DataType::Utf8,
            )
            .eq(col(STAND_IN))],
        )
        .map_err(engine)
}
