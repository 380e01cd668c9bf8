//! Deletes in sources: a record a source no longer has, or one it marks deleted, leaves its
//! golden record.
//!
//! - **Gone**: for a source read in full (`detect_deletes`, the default without a watermark),
//!   the first cycle of a run compares the ID map with the source's ids: an anti-join of the
//!   source's contributions with the ids the source has now, as a plan.
//! - **Marked**: a source's `deleted` condition marks records among those read (a soft
//!   delete); they are not read as records.
//!
//! The contributions that leave are `bf_hub_removed`; the authority stage decides the fields
//! of the golden records they leave again from the contributors that remain (a value that came
//! from a source that lost its record is not kept when no one else has one), and a golden
//! record no contributor is left in is retired: kept, end-dated with `__bf_retired_at` and the
//! reason, gone from the entity's table (so a mirror sync from the entity deletes it) and from
//! its write-backs. A cycle that would retire more than `max_retirements` of the live golden
//! records commits nothing ([`guard`]).

use arrow::datatypes::DataType;
use datafusion::common::JoinType;
use datafusion::logical_expr::{cast, lit, try_cast};
use datafusion::prelude::{DataFrame, col, ident};
use indexmap::IndexMap;

use super::HubError;
use super::context::{Cycle, OVER, REMOVED, contrib_old, golden_old, gone as gone_table};
use super::read::{self, IN_DELETED, IN_SID};
use super::sql::lit as sql_lit;
use super::state;
use crate::config::entity::EntitySourceConfig;

/// Why a record left, as the log and a retired record's reason say.
const WHY: &str = "__bf_why";
const MARKED: &str = "marked deleted in the source";
const MISSING: &str = "no longer in the source";
/// Why a record unmerged leaves its golden record.
pub const UNMERGED_WHY: &str = "taken out into a golden record of its own (hub unmerge)";

/// Which records gone from a source a cycle looks for.
#[derive(Debug, Clone, Copy)]
pub enum Look<'a> {
    /// None (the source does not detect deletes, or a later cycle of the run).
    No,
    /// Every record of the ID map the source no longer has.
    All,
    /// Among these ids only (a read of given ids).
    Ids(&'a [String]),
}

/// Register `bf_hub_gone_<source>`: the ids of the source's records deleted this cycle, with
/// why. `valid` is the cycle's valid read of the source (with its `deleted` flags). Returns
/// whether the source can have any (it marks deletes, or was looked at).
pub async fn gone(
    cycle: &Cycle<'_>,
    source: &str,
    config: &EntitySourceConfig,
    valid: DataFrame,
    look: Look<'_>,
    id_type: &DataType,
) -> Result<bool, HubError> {
    let engine = cycle.engine("read");
    let mut all = valid
        .filter(col(IN_DELETED))
        .and_then(|df| df.select(vec![col(IN_SID), lit(MARKED).alias(WHY)]))
        .map_err(&engine)?;
    if config.deleted.is_none() && matches!(look, Look::No) {
        // Nothing to look for: an empty relation, nothing written.
        cycle.register("read", &gone_table(source), all)?;
        return Ok(false);
    }
    if !matches!(look, Look::No) {
        let present = read::relation(cycle.ctx, cycle.name, source, config)
            .await?
            .select(vec![
                cast(ident(&config.id), id_type.clone()).alias("__bf_present"),
            ])
            .map_err(&engine)?;
        // Records in quarantine that the source no longer has leave it too.
        let held = cycle
            .ctx
            .table(super::quarantine::old_table(source).as_str())
            .await
            .and_then(|df| df.select(vec![col(read::IN_SID).alias(state::SID)]))
            .map_err(&engine)?;
        // (A record linked for the source to create is not there until it is sent.)
        let mut old = cycle
            .ctx
            .table(contrib_old(source).as_str())
            .await
            .and_then(|df| df.filter(!super::create::pending()))
            .and_then(|df| df.select(vec![col(state::SID)]))
            .and_then(|df| df.union(held))
            .map_err(&engine)?;
        if let Look::Ids(ids) = look {
            let values = ids
                .iter()
                .map(|i| try_cast(lit(i.as_str()), id_type.clone()))
                .collect();
            old = old
                .filter(col(state::SID).in_list(values, false))
                .map_err(&engine)?;
        }
        let missing = old
            .join(
                present,
                JoinType::LeftAnti,
                &[state::SID],
                &["__bf_present"],
                None,
            )
            .and_then(|df| df.select(vec![col(state::SID), lit(MISSING).alias(WHY)]))
            .map_err(&engine)?;
        all = all.union(missing).map_err(&engine)?;
    }
    cycle
        .materialize(
            "read",
            all,
            &format!("gone-{source}.parquet"),
            &gone_table(source),
            None,
        )
        .await?;
    Ok(true)
}

/// Register `bf_hub_removed`, the contributions that leave this cycle (a deleted record the
/// ID map never had changes nothing), and count them per source. `any`: whether some source
/// can have deleted records (else the relation is empty, and nothing is written or counted).
/// A record `hub unmerge` takes out of its golden record leaves it too (its values are decided
/// again without it), though it is not deleted: it is not counted.
pub async fn removed(
    cycle: &Cycle<'_>,
    any: bool,
    resolution: Option<&super::quarantine::Resolution>,
) -> Result<IndexMap<String, u64>, HubError> {
    let mut parts: Vec<String> = cycle
        .entity
        .sources
        .keys()
        .map(|source| {
            format!(
                "SELECT {src} AS __bf_source, CAST(g.{sid} AS VARCHAR) AS __bf_sid_text, \
                 o.{link} AS __bf_golden_id, g.{WHY} AS {WHY} \
                 FROM {gone} g JOIN {old} o ON o.{sid} = g.{sid}",
                src = sql_lit(source),
                sid = state::SID,
                link = state::LINK,
                gone = gone_table(source),
                old = contrib_old(source),
            )
        })
        .collect();
    let mut any = any;
    if let Some(r) = resolution
        && let super::quarantine::Decision::Unmerge(g) = r.decision
    {
        any = true;
        parts.push(format!(
            "SELECT {} AS __bf_source, {} AS __bf_sid_text, CAST({g} AS BIGINT) AS __bf_golden_id, \
             {} AS {WHY}",
            sql_lit(&r.source),
            sql_lit(&r.id),
            sql_lit(UNMERGED_WHY)
        ));
    }
    let df = cycle.sql("read", &parts.join("\nUNION ALL\n")).await?;
    if !any {
        cycle.register("read", REMOVED, df)?;
        return Ok(IndexMap::new());
    }
    cycle
        .materialize("read", df, "removed.parquet", REMOVED, None)
        .await?;
    let batches = cycle
        .sql(
            "read",
            &format!(
                "SELECT __bf_source, COUNT(*) AS n FROM {REMOVED} WHERE {WHY} <> {} GROUP BY __bf_source",
                sql_lit(UNMERGED_WHY)
            ),
        )
        .await?
        .collect()
        .await
        .map_err(cycle.engine("read"))?;
    let mut counts = IndexMap::new();
    for batch in batches {
        let names = arrow::compute::cast(batch.column(0), &DataType::Utf8)
            .map_err(|e| cycle.engine("read")(e.into()))?;
        let names = arrow::array::AsArray::as_string::<i32>(&names);
        let n = arrow::compute::cast(batch.column(1), &DataType::Int64)
            .map_err(|e| cycle.engine("read")(e.into()))?;
        let n = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&n);
        for r in 0..batch.num_rows() {
            counts.insert(names.value(r).to_string(), n.value(r).max(0) as u64);
        }
    }
    Ok(counts)
}

/// Stop a cycle that would take the run's retirements (`retired_before`: those of its earlier
/// cycles) past what `max_retirements` allows of the golden records live at the start of the
/// run (unless `allow`), before anything is committed: records marked deleted and read over
/// several cycles are counted together.
pub async fn guard(cycle: &Cycle<'_>, allow: bool, retired_before: u64) -> Result<(), HubError> {
    let retiring = cycle
        .count(
            "authority",
            &format!(
                "SELECT COUNT(*) FROM {OVER} n JOIN {old} o ON o.golden_id = n.golden_id \
                 WHERE n.{at} IS NOT NULL AND o.{at} IS NULL",
                old = golden_old(),
                at = state::RETIRED_AT,
            ),
        )
        .await?;
    if retiring == 0 || allow {
        return Ok(());
    }
    // Live now, and those the run retired so far: live when it started (and any it created).
    let live = cycle
        .count(
            "authority",
            &format!(
                "SELECT COUNT(*) FROM {} WHERE {} IS NULL AND {} IS NULL",
                golden_old(),
                state::MERGED_INTO,
                state::RETIRED_AT
            ),
        )
        .await?
        + retired_before;
    let retiring = retiring + retired_before;
    let limit = cycle.entity.retirement_limit();
    if retiring > limit.allows(live) {
        return Err(HubError::Guarded {
            entity: cycle.name.to_string(),
            retiring,
            live,
            limit,
        });
    }
    Ok(())
}

/// Register `bf_hub_lost`: per golden record that lost a contributing record this cycle,
/// whether each field's value came from a source that lost one (`__bf_lost_<field>`: such a
/// value is decided again without falling back on itself), and why (`__bf_reason`).
pub async fn lost(cycle: &Cycle<'_>, contributors: &[String]) -> Result<(), HubError> {
    let fields: Vec<String> = cycle
        .entity
        .fields
        .keys()
        .map(|f| {
            format!(
                "bool_or(r.__bf_source = g.{src}) AS {lost}",
                src = super::sql::q(&state::src_col(f)),
                lost = super::sql::q(&lost_col(f)),
            )
        })
        .collect();
    let sql = format!(
        "SELECT r.__bf_golden_id, {fields}{sep}\
                max(r.__bf_source || ' record ' || r.__bf_sid_text || ': ' || r.{WHY}) AS __bf_reason \
         FROM {REMOVED} r JOIN {old} g ON g.golden_id = r.__bf_golden_id \
         WHERE r.__bf_source IN ({sources}) \
         GROUP BY r.__bf_golden_id",
        fields = fields.join(", "),
        sep = if fields.is_empty() { "" } else { ", " },
        old = golden_old(),
        sources = super::sql::lit_list(contributors),
    );
    let df = cycle.sql("authority", &sql).await?;
    cycle.register("authority", super::context::LOST, df)
}

/// `__bf_lost_<field>` of `bf_hub_lost`.
pub fn lost_col(field: &str) -> String {
    format!("__bf_lost_{field}")
}

/// The golden records retired this cycle, in the golden table's columns: those that lost a
/// contributing record and have no contributor left (`candidates` holds every contribution
/// of a touched golden record), live until now.
///
/// (Planned as written, as part of the authority's query: the few golden records that lost a
/// record are the build side of the join with every committed one.)
pub fn retired_sql(cycle: &Cycle<'_>, candidates: &str) -> String {
    let q = super::sql::q;
    let fields: Vec<String> = cycle
        .entity
        .fields
        .keys()
        .map(|f| format!("o.{}", q(f)))
        .chain(
            cycle
                .entity
                .fields
                .keys()
                .map(|f| format!("o.{}", q(&state::src_col(f)))),
        )
        .collect();
    let now = cycle.now_sql();
    format!(
        "SELECT o.golden_id, {fields}, o.{created_seq}, {v} AS {seq}, o.{created_at}, \
                {now} AS {updated_at}, o.{merged}, {now} AS {retired_at}, \
                'its last source record was deleted (' || l.__bf_reason || ')' AS {reason}
         FROM {lost} l JOIN {old} o ON l.__bf_golden_id = o.golden_id
         WHERE o.{merged} IS NULL AND o.{retired_at} IS NULL
           AND NOT EXISTS (SELECT 1 FROM {candidates} c WHERE c.__bf_golden_id = o.golden_id)",
        fields = fields.join(", "),
        v = cycle.version,
        created_seq = state::CREATED_SEQ,
        seq = state::SEQ,
        created_at = state::CREATED_AT,
        updated_at = state::UPDATED_AT,
        merged = state::MERGED_INTO,
        retired_at = state::RETIRED_AT,
        reason = state::RETIRED_REASON,
        old = golden_old(),
        lost = super::context::LOST,
    )
}
