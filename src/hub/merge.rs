//! The merge stage: golden records that a merge rule finds to be the same entity are merged.
//!
//! For each merge rule in turn, the live golden records sharing the rule's values (trimmed,
//! case-insensitive, none NULL) with a record this cycle changed form a group; a window ranks
//! each group by the winner rule, and one `GROUP BY` computes the merged record:
//!
//! ```text
//!  live ──► keyed by the rule ──► groups of the      ──► ROW_NUMBER() OVER       ──► winner: first_value(f ORDER BY rank)
//!           (NULLs never match)   changed records'       (PARTITION BY key             per merge policy;
//!                                 keys, two or more      ORDER BY winner rule)         losers: retired into the winner
//! ```
//!
//! The losers stay in the golden table with `__bf_merged_into` set (and in the log); their
//! source records are linked to the winner from then on.

use super::HubError;
use super::context::{
    APART_OLD, ATTACHED, Cycle, GOLDEN_NEXT, OVER, REMAP, contrib_next, contrib_now,
};
use super::sql::{lit, norm, q, rank_case};
use super::state::{self, StateFile, src_col};
use crate::config::entity::{MergePolicy, WinnerRule};

const LIVE: &str = "bf_hub_live";
const DUPS: &str = "bf_hub_dups";
const RANKS: &str = "bf_hub_ranks";
/// Pairs of golden records kept apart (see [`register_apart`]).
const APART: &str = "bf_hub_apart";

/// Run every merge rule over the golden records; `bf_hub_over` ends as every golden record
/// this cycle changed (losers included) and `bf_hub_remap` maps each loser to its winner.
/// Returns the number of records retired.
pub async fn run(cycle: &Cycle<'_>) -> Result<u64, HubError> {
    let entity = cycle.entity;
    let remap = cycle
        .sql(
            "merge",
            "SELECT CAST(NULL AS BIGINT) AS __bf_loser, CAST(NULL AS BIGINT) AS __bf_winner WHERE FALSE",
        )
        .await?;
    cycle
        .materialize("merge", remap, "remap-0.parquet", REMAP, None)
        .await?;
    let mut retired = 0u64;
    let apart = cycle
        .count("merge", &format!("SELECT COUNT(*) FROM {APART}"))
        .await?
        > 0;
    for (r, rule) in entity.merge_rules().iter().enumerate() {
        let live = cycle
            .sql("merge", &super::context::golden_with_over())
            .await?;
        cycle.register("merge", LIVE, live)?;
        if entity.merge.winner == WinnerRule::Priority {
            register_ranks(cycle).await?;
        }
        let dups = cycle.sql("merge", &dups_sql(cycle, rule, apart)).await?;
        let found = cycle
            .materialize(
                "merge",
                dups,
                &format!("dups-{}.parquet", r + 1),
                DUPS,
                None,
            )
            .await?;
        if found.rows == 0 {
            continue;
        }
        let over = cycle.sql("merge", &merged_sql(cycle, rule.len())).await?;
        cycle
            .materialize(
                "merge",
                over,
                &format!("over-{}.parquet", r + 1),
                OVER,
                Some(state::golden_schema(entity)),
            )
            .await?;
        let remap = cycle
            .sql(
                "merge",
                &format!(
                    "SELECT m.__bf_loser, COALESCE(p.__bf_winner, m.__bf_winner) AS __bf_winner
                     FROM {REMAP} m LEFT JOIN (SELECT golden_id AS __bf_loser, __bf_winner FROM {DUPS} WHERE __bf_rank > 1) p
                       ON p.__bf_loser = m.__bf_winner
                     UNION ALL
                     SELECT golden_id AS __bf_loser, __bf_winner FROM {DUPS} WHERE __bf_rank > 1"
                ),
            )
            .await?;
        cycle
            .materialize(
                "merge",
                remap,
                &format!("remap-{}.parquet", r + 1),
                REMAP,
                None,
            )
            .await?;
        retired += cycle
            .count(
                "merge",
                &format!("SELECT COUNT(*) FROM {DUPS} WHERE __bf_rank > 1"),
            )
            .await?;
    }
    Ok(retired)
}

/// `bf_hub_ranks`: each golden record's best source (its place in the default priority).
async fn register_ranks(cycle: &Cycle<'_>) -> Result<(), HubError> {
    let order = cycle.entity.authority("").order;
    let parts: Vec<String> = order
        .iter()
        .map(|s| {
            format!(
                "SELECT __bf_golden_id, {} AS __bf_rank FROM {}",
                rank_case(&lit(s), &order),
                contrib_now(s)
            )
        })
        .collect();
    let sql = format!(
        "SELECT COALESCE(m.__bf_winner, c.__bf_golden_id) AS golden_id, MIN(c.__bf_rank) AS __bf_best
         FROM ({}) c LEFT JOIN {REMAP} m ON m.__bf_loser = c.__bf_golden_id
         WHERE c.__bf_golden_id IS NOT NULL
         GROUP BY COALESCE(m.__bf_winner, c.__bf_golden_id)",
        parts.join(" UNION ALL ")
    );
    let df = cycle.sql("merge", &sql).await?;
    cycle.register("merge", RANKS, df)
}

/// The members of every group of duplicates under `rule`, ranked by the winner rule.
fn dups_sql(cycle: &Cycle<'_>, rule: &[String], apart: bool) -> String {
    let entity = cycle.entity;
    let keys: Vec<String> = (0..rule.len()).map(|i| format!("__bf_k{i}")).collect();
    let key_exprs: Vec<String> = rule
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{} AS __bf_k{i}", norm(&format!("l.{}", q(f)))))
        .collect();
    let not_null: Vec<String> = rule
        .iter()
        .map(|f| format!("{} IS NOT NULL", norm(&format!("l.{}", q(f)))))
        .collect();
    let on: Vec<String> = keys.iter().map(|k| format!("k.{k} = s.{k}")).collect();
    let partition = keys
        .iter()
        .map(|k| format!("m.{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (join, order) = match entity.merge.winner {
        WinnerRule::Oldest => (
            String::new(),
            format!("m.{} ASC, m.golden_id ASC", state::CREATED_SEQ),
        ),
        WinnerRule::Recent => (
            String::new(),
            format!(
                "m.{} DESC, m.{} DESC, m.golden_id ASC",
                state::SEQ,
                state::UPDATED_AT
            ),
        ),
        WinnerRule::Complete => {
            let filled = entity
                .fields
                .keys()
                .map(|f| format!("CASE WHEN m.{} IS NULL THEN 0 ELSE 1 END", q(f)))
                .collect::<Vec<_>>()
                .join(" + ");
            (
                String::new(),
                format!(
                    "({filled}) DESC, m.{} ASC, m.golden_id ASC",
                    state::CREATED_SEQ
                ),
            )
        }
        WinnerRule::Priority => (
            format!("LEFT JOIN {RANKS} p ON p.golden_id = m.golden_id"),
            format!(
                "p.__bf_best ASC NULLS LAST, m.{} ASC, m.golden_id ASC",
                state::CREATED_SEQ
            ),
        ),
    };
    let plain_keys = keys.join(", ");
    // Only the keys of this cycle's records that two or more live records share make a group
    // (`multi`, a hash aggregate): the windows, which cost per partition, see only those. A
    // record this cycle changed is live as its row in OVER (LIVE is the old golden records
    // with OVER over them): its keys are read from there, not from every live record.
    let raw = format!(
        "(WITH keyed AS (
            SELECT l.*, {key_exprs} FROM {LIVE} l
            WHERE l.{merged} IS NULL AND l.{retired_at} IS NULL AND {not_null}
         ),
         keys AS (
            SELECT DISTINCT {key_exprs} FROM {OVER} l
            WHERE l.{merged} IS NULL AND l.{retired_at} IS NULL AND {not_null}
         ),
         multi AS (
            SELECT {multi_keys} FROM keys s JOIN keyed k ON {on}
            GROUP BY {k_keys} HAVING COUNT(*) > 1
         ),
         members AS (SELECT k.* FROM multi s JOIN keyed k ON {on})
         SELECT * FROM (
            SELECT m.*,
                   COUNT(*) OVER (PARTITION BY {partition}) AS __bf_n,
                   ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {order}) AS __bf_rank,
                   FIRST_VALUE(m.golden_id) OVER (PARTITION BY {partition} ORDER BY {order}) AS __bf_winner
            FROM members m {join}
         ) WHERE __bf_n > 1)",
        key_exprs = key_exprs.join(", "),
        merged = state::MERGED_INTO,
        retired_at = state::RETIRED_AT,
        not_null = not_null.join(" AND "),
        k_keys = keys
            .iter()
            .map(|k| format!("k.{k}"))
            .collect::<Vec<_>>()
            .join(", "),
        on = on.join(" AND "),
        multi_keys = keys
            .iter()
            .map(|k| format!("k.{k} AS {k}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if !apart {
        return format!("SELECT * FROM {raw}");
    }
    // A member kept apart from a better-ranked member of its group (`hub unmerge`, `hub
    // resolve --new`) stays out of the group, so no two records kept apart are ever merged,
    // not even through a third.
    let same_group = keys
        .iter()
        .map(|k| format!("e.{k} = d.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT * EXCEPT (__bf_left) FROM (
           SELECT *, COUNT(*) OVER (PARTITION BY {plain_keys}) AS __bf_left FROM (
             SELECT d.* FROM {raw} d LEFT ANTI JOIN (
               SELECT d.golden_id AS __bf_blocked FROM {raw} d
               JOIN ({pairs}) p ON p.__bf_x = d.golden_id
               JOIN {raw} e ON e.golden_id = p.__bf_y AND {same_group}
               WHERE e.__bf_rank < d.__bf_rank
             ) b ON b.__bf_blocked = d.golden_id
           )
         ) WHERE __bf_left > 1",
        pairs = apart_pairs_sql(),
    )
}

/// The pairs kept apart as they stand in this cycle (each side through the merges made so
/// far), both ways round: `__bf_x`, `__bf_y`.
fn apart_pairs_sql() -> String {
    let mapped = format!(
        "SELECT COALESCE(ra.__bf_winner, a.__bf_a) AS __bf_a, COALESCE(rb.__bf_winner, a.__bf_b) AS __bf_b \
         FROM {APART} a LEFT JOIN {REMAP} ra ON ra.__bf_loser = a.__bf_a \
         LEFT JOIN {REMAP} rb ON rb.__bf_loser = a.__bf_b"
    );
    format!(
        "SELECT __bf_a AS __bf_x, __bf_b AS __bf_y FROM ({mapped}) \
         UNION ALL SELECT __bf_b, __bf_a FROM ({mapped})"
    )
}

/// The golden records this cycle changed, after merging the groups in `bf_hub_dups`: the
/// winners with their merged values, the losers retired into them, and the rest as they were.
fn merged_sql(cycle: &Cycle<'_>, key_count: usize) -> String {
    let entity = cycle.entity;
    let v = cycle.version;
    let now = cycle.now_sql();
    let mut values = Vec::new();
    let mut sources = Vec::new();
    for f in entity.fields.keys() {
        let (order, filter) = match entity.merge_policy(f) {
            MergePolicy::Fill => (
                "__bf_rank".to_string(),
                format!(" FILTER (WHERE {} IS NOT NULL)", q(f)),
            ),
            MergePolicy::Keep => ("__bf_rank".to_string(), String::new()),
            MergePolicy::Override => (
                "CASE WHEN __bf_rank = 1 THEN 1 ELSE 0 END, __bf_rank".to_string(),
                format!(" FILTER (WHERE {} IS NOT NULL)", q(f)),
            ),
        };
        values.push(format!(
            "first_value({f} ORDER BY {order}){filter} AS {f}",
            f = q(f)
        ));
        sources.push(format!(
            "first_value({s} ORDER BY {order}){filter} AS {s}",
            s = q(&src_col(f))
        ));
    }
    let plain: Vec<String> = entity
        .fields
        .keys()
        .map(|f| q(f))
        .chain(entity.fields.keys().map(|f| q(&src_col(f))))
        .collect();
    let group_by = (0..key_count)
        .map(|i| format!("__bf_k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH winners AS (
            SELECT first_value(golden_id ORDER BY __bf_rank) AS golden_id, {values}, {sources},
                   first_value({created_seq} ORDER BY __bf_rank) AS {created_seq},
                   {v} AS {seq},
                   first_value({created_at} ORDER BY __bf_rank) AS {created_at},
                   {now} AS {updated_at},
                   CAST(NULL AS BIGINT) AS {merged},
                   {null_at} AS {retired_at}, CAST(NULL AS VARCHAR) AS {retired_reason}
            FROM {DUPS} GROUP BY {group_by}
         ),
         losers AS (
            SELECT golden_id, {plain}, {created_seq}, {v} AS {seq}, {created_at},
                   {now} AS {updated_at}, __bf_winner AS {merged},
                   {null_at} AS {retired_at}, CAST(NULL AS VARCHAR) AS {retired_reason}
            FROM {DUPS} WHERE __bf_rank > 1
         )
         SELECT o.* FROM {DUPS} d RIGHT ANTI JOIN {OVER} o ON o.golden_id = d.golden_id
         UNION ALL SELECT * FROM winners
         UNION ALL SELECT * FROM losers",
        values = values.join(", "),
        sources = sources.join(", "),
        plain = plain.join(", "),
        created_seq = state::CREATED_SEQ,
        seq = state::SEQ,
        created_at = state::CREATED_AT,
        updated_at = state::UPDATED_AT,
        merged = state::MERGED_INTO,
        retired_at = state::RETIRED_AT,
        retired_reason = state::RETIRED_REASON,
        null_at = super::sql::null_of(&state::timestamp_type()),
    )
}

/// Write a source's next contributions (`contrib-<source>.parquet`): this cycle's, with the
/// records of merged golden records linked to the winners. Registered as
/// `bf_hub_contrib_next_<source>`.
pub async fn write_contributions(
    cycle: &Cycle<'_>,
    source: &str,
    id_type: &arrow::datatypes::DataType,
    merged: bool,
) -> Result<StateFile, HubError> {
    let v = cycle.version;
    let schema = state::contributions_schema(cycle.entity, source, id_type);
    let sql = if merged {
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let n = f.name().as_str();
                match n {
                    state::LINK => format!("COALESCE(m.__bf_winner, c.{0}) AS {0}", state::LINK),
                    state::LINK_SEQ => format!(
                        "CASE WHEN m.__bf_winner IS NOT NULL THEN {v} ELSE c.{0} END AS {0}",
                        state::LINK_SEQ
                    ),
                    state::LINKED_BY => format!(
                        "CASE WHEN m.__bf_winner IS NOT NULL THEN 'merge' ELSE c.{0} END AS {0}",
                        state::LINKED_BY
                    ),
                    _ => format!("c.{}", q(n)),
                }
            })
            .collect();
        // A record linked for its source to create that the source has not reported yet is
        // not carried over to the winner: the winner gets one of its own, if it has none
        // (a record already sent is matched when the source reports it).
        format!(
            "SELECT {} FROM {REMAP} m RIGHT JOIN {} c ON m.__bf_loser = c.{} \
             WHERE m.__bf_winner IS NULL OR c.{} IS NOT NULL",
            cols.join(", "),
            contrib_now(source),
            state::LINK,
            state::READ_SEQ,
        )
    } else {
        format!("SELECT * FROM {}", contrib_now(source))
    };
    // A source that creates records gets its new golden records linked (see create.rs).
    let sql = if super::create::sources(cycle).iter().any(|s| s == source) {
        super::create::with_links(cycle, source, GOLDEN_NEXT, &sql, id_type).await?
    } else {
        sql
    };
    let df = cycle.sql("state", &sql).await?;
    cycle
        .materialize(
            "state",
            df,
            &format!("contrib-{source}.parquet"),
            &contrib_next(source),
            Some(schema),
        )
        .await
}

/// Register `bf_hub_apart`: the pairs of golden records kept apart, those committed and those
/// this cycle's decision adds (the record's new golden record with each of `apart_from`,
/// known once attached).
pub async fn register_apart(
    cycle: &Cycle<'_>,
    resolution: Option<&super::quarantine::Resolution>,
) -> Result<(), HubError> {
    let mut sql = format!("SELECT * FROM {APART_OLD}");
    if let Some(r) = resolution {
        for g in &r.apart_from {
            sql.push_str(&format!(
                " UNION ALL
                 SELECT CAST({g} AS BIGINT), __bf_golden_id, __bf_source, __bf_sid_text, CAST({v} AS BIGINT)
                 FROM {ATTACHED} WHERE __bf_source = {src} AND __bf_sid_text = {id} AND __bf_golden_id IS NOT NULL",
                v = cycle.version,
                src = lit(&r.source),
                id = lit(&r.id),
            ));
        }
    }
    let df = cycle.sql("merge", &sql).await?;
    cycle.register("merge", APART, df)
}

/// The pairs of golden records kept apart after this cycle: those before and this cycle's,
/// each side through this cycle's merges (so a pair follows a record merged into another).
/// None: there are none.
pub async fn write_apart(
    cycle: &Cycle<'_>,
    resolution: Option<&super::quarantine::Resolution>,
    merged: bool,
) -> Result<Option<StateFile>, HubError> {
    let previous = cycle.previous.as_ref().and_then(|m| m.apart.clone());
    let added = resolution.is_some_and(|r| !r.apart_from.is_empty());
    let remapped = merged && previous.is_some();
    if !(added || remapped) {
        return Ok(previous);
    }
    let df = cycle
        .sql(
            "state",
            &format!(
                "SELECT DISTINCT COALESCE(ra.__bf_winner, a.__bf_a) AS __bf_a, \
                   COALESCE(rb.__bf_winner, a.__bf_b) AS __bf_b, a.__bf_source, a.__bf_sid_text, a.__bf_version \
                 FROM {APART} a LEFT JOIN {REMAP} ra ON ra.__bf_loser = a.__bf_a \
                 LEFT JOIN {REMAP} rb ON rb.__bf_loser = a.__bf_b"
            ),
        )
        .await?;
    let file = cycle
        .materialize(
            "state",
            df,
            "apart.parquet",
            "bf_hub_apart_next",
            Some(state::apart_schema()),
        )
        .await?;
    Ok(Some(file))
}
