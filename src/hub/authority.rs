//! The authority stage: the values of every golden record a cycle touched, recomputed from the
//! contributions of all records linked to it.
//!
//! Per field, among the contributing sources that map it:
//! - `priority`: the value of the first source in the field's priority order that has a
//!   record (the most recently changed one when a source has several);
//! - `recent`: the value that changed most recently (ties: priority order);
//! - `first_non_null`: the first non-NULL value in priority order.
//!
//! Unless `null_overwrites`, NULLs are passed over, and a field no source has a value for
//! keeps the value the golden record had. One `GROUP BY` over the candidates, with
//! `first_value(… ORDER BY …) FILTER (WHERE …)` per field.
//!
//! Only the fields a source changed in this cycle are decided again (all of them for a record
//! newly linked, and on a full resync): a value stays as it is — as a merge left it, say —
//! until a source changes that field.

use super::HubError;
use super::context::{
    ATTACHED, Cycle, LOST, OVER, REMOVED, contrib_now, contrib_old, delta, golden_old,
};
use super::deletes::lost_col;
use super::sql::{lit, lit_list, null_of, q};
use super::state::{self, at_col, mapped_fields, src_col};
use crate::config::entity::{AuthorityRule, EntityConfig};

/// Every source's candidates: the contributions linked to a touched golden record.
const CANDIDATES: &str = "bf_hub_candidates";
/// The golden records this cycle touched: `__bf_golden_id`.
const TOUCHED: &str = "bf_hub_touched";
/// One source's candidates (in the shape of `CANDIDATES`).
fn candidates(source: &str) -> String {
    format!("bf_hub_candidates_{source}")
}

/// Compute `bf_hub_over` (written as `over-0.parquet`): the touched golden records with their
/// new values. Returns how many of them did not change.
pub async fn run(cycle: &Cycle<'_>, full_resync: bool) -> Result<u64, HubError> {
    let entity = cycle.entity;
    let v = cycle.version;
    let contributors: Vec<String> = entity.contributors().map(|(n, _)| n.clone()).collect();

    // Candidates: every contribution linked to a touched golden record (one a source record
    // was attached to or left), in one shape.
    // A record read again exactly as it was (its delta row keeps its old read and link
    // versions) touches nothing; on a full resync every record read does.
    let read_now = if full_resync {
        format!(
            "SELECT __bf_golden_id FROM {ATTACHED} \
             WHERE __bf_golden_id IS NOT NULL AND __bf_source IN ({list})",
            list = lit_list(&contributors)
        )
    } else {
        contributors
            .iter()
            .map(|s| {
                format!(
                    "SELECT __bf_golden_id FROM {} WHERE __bf_golden_id IS NOT NULL \
                     AND (__bf_read_seq = {v} OR __bf_link_seq = {v})",
                    delta(s)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    let touched = format!(
        "SELECT __bf_golden_id FROM ({read_now}) \
         UNION SELECT __bf_golden_id FROM {REMOVED} \
         WHERE __bf_golden_id IS NOT NULL AND __bf_source IN ({list})",
        list = lit_list(&contributors)
    );
    // (Written once: every source's candidates are read from it more than once.)
    let touched = cycle.sql("authority", &touched).await?;
    cycle
        .materialize("authority", touched, "touched.parquet", TOUCHED, None)
        .await?;
    super::deletes::lost(cycle, &contributors).await?;
    let types: Vec<(String, arrow::datatypes::DataType)> = entity
        .field_types()
        .into_iter()
        .map(|(n, t)| (n, t.unwrap_or(arrow::datatypes::DataType::Utf8)))
        .collect();
    let mut parts = Vec::new();
    for source in &contributors {
        let mapped = mapped_fields(entity, source);
        let mut cols = vec![
            format!("{} AS __bf_source", lit(source)),
            "CAST(c.__bf_sid AS VARCHAR) AS __bf_sid_text".to_string(),
            "c.__bf_golden_id".to_string(),
        ];
        for (f, t) in &types {
            cols.push(if mapped.contains(f) {
                format!("c.{0} AS {0}", q(f))
            } else {
                format!("{} AS {}", null_of(t), q(f))
            });
        }
        for (f, _) in &types {
            cols.push(if mapped.contains(f) {
                format!("c.{0} AS {0}", q(&at_col(f)))
            } else {
                format!(
                    "{} AS {}",
                    null_of(&arrow::datatypes::DataType::Int64),
                    q(&at_col(f))
                )
            });
        }
        let df = cycle
            .sql(
                "authority",
                &format!(
                    // (A record linked for its source to create has reported no value yet.)
                    "SELECT {} FROM {TOUCHED} t JOIN {} c ON c.__bf_golden_id = t.__bf_golden_id \
                     WHERE c.__bf_read_seq IS NOT NULL",
                    cols.join(", "),
                    contrib_now(source)
                ),
            )
            .await?;
        parts.push(df);
    }
    // The decision reads each source's candidates four times over, and each read would scan
    // all of the source's committed contributions again: once there are any, the candidates
    // are written once.
    let mut parts = parts.into_iter();
    let mut all = parts.next().ok_or_else(|| HubError::Settings {
        entity: cycle.name.to_string(),
        message: "an entity needs at least one contributing source".into(),
    })?;
    for part in parts {
        all = all.union(part).map_err(cycle.engine("authority"))?;
    }
    cycle
        .materialize_with_id_map("authority", all, "candidates.parquet", CANDIDATES)
        .await?;
    for source in &contributors {
        let df = cycle
            .sql(
                "authority",
                &format!(
                    "SELECT * FROM {CANDIDATES} WHERE __bf_source = {}",
                    lit(source)
                ),
            )
            .await?;
        cycle.register("authority", &candidates(source), df)?;
    }

    let authority = decide_sql(entity, &types, &contributors);

    // Which fields of each golden record a source changed in this cycle (a record newly
    // linked brings all of its fields): only those are decided again, so a value stays as it
    // is (after a merge, say) until a source changes it.
    let mut flags = Vec::new();
    for source in &contributors {
        let mapped = mapped_fields(entity, source);
        let cols: Vec<String> = types
            .iter()
            .map(|(f, _)| {
                if mapped.contains(f) {
                    format!(
                        "((o.__bf_sid IS NULL) OR (d.__bf_golden_id IS DISTINCT FROM o.__bf_golden_id) \
                         OR (d.{0} IS DISTINCT FROM o.{0})) AS {1}",
                        q(f),
                        q(&format!("__bf_t_{f}"))
                    )
                } else {
                    format!("FALSE AS {}", q(&format!("__bf_t_{f}")))
                }
            })
            .collect();
        flags.push(format!(
            "SELECT d.__bf_golden_id, {} FROM {} d LEFT JOIN {} o ON o.__bf_sid = d.__bf_sid",
            cols.join(", "),
            delta(source),
            contrib_old(source)
        ));
    }
    let touched_fields = format!(
        "SELECT __bf_golden_id, {} FROM ({}) GROUP BY __bf_golden_id",
        types
            .iter()
            .map(|(f, _)| format!("bool_or({0}) AS {0}", q(&format!("__bf_t_{f}"))))
            .collect::<Vec<_>>()
            .join(", "),
        flags.join(" UNION ALL ")
    );

    // The golden records as they now are: a NULL keeps the old value unless it may overwrite.
    let mut values = Vec::new();
    let mut changed = Vec::new();
    for (f, _) in &types {
        let (fq, sq) = (q(f), q(&src_col(f)));
        // A golden record that lost a contributing record has every field decided again.
        let decide = if full_resync {
            "TRUE".to_string()
        } else {
            format!(
                "(o.golden_id IS NULL) OR COALESCE(t.{}, FALSE) OR (l.__bf_golden_id IS NOT NULL)",
                q(&format!("__bf_t_{f}"))
            )
        };
        // A value whose source lost its record is not kept for want of another.
        let lost = format!("COALESCE(l.{}, FALSE)", q(&lost_col(f)));
        let (value, source) = if entity.authority(f).null_overwrites {
            (format!("n.{fq}"), format!("n.{sq}"))
        } else {
            (
                format!("CASE WHEN {lost} THEN n.{fq} ELSE COALESCE(n.{fq}, o.{fq}) END"),
                format!("CASE WHEN {lost} OR n.{fq} IS NOT NULL THEN n.{sq} ELSE o.{sq} END"),
            )
        };
        values.push(format!(
            "CASE WHEN {decide} THEN {value} ELSE o.{fq} END AS {fq}, \
             CASE WHEN {decide} THEN {source} ELSE o.{sq} END AS {sq}"
        ));
        changed.push(format!("(x.{fq} IS DISTINCT FROM x.__bf_old_{f})"));
    }
    let olds: Vec<String> = types
        .iter()
        .map(|(f, _)| format!("o.{} AS __bf_old_{f}", q(f)))
        .collect();
    // In the golden table's column order: the fields, then where each came from.
    let fields: Vec<String> = types
        .iter()
        .map(|(f, _)| format!("x.{}", q(f)))
        .chain(types.iter().map(|(f, _)| format!("x.{}", q(&src_col(f)))))
        .collect();
    let now = cycle.now_sql();
    // (The narrow sides, `LOST` and the touched fields, are the build sides of their joins:
    // see `decide_sql`.)
    let sql = format!(
        "SELECT x.golden_id, {fields},
                COALESCE(x.__bf_old_created_seq, {v}) AS {created_seq},
                CASE WHEN (x.__bf_old_id IS NULL) OR {changed} THEN {v} ELSE x.__bf_old_seq END AS {seq},
                COALESCE(x.__bf_old_created_at, {now}) AS {created_at},
                CASE WHEN (x.__bf_old_id IS NULL) OR {changed} THEN {now} ELSE x.__bf_old_updated_at END AS {updated_at},
                CAST(NULL AS BIGINT) AS {merged_into},
                {null_at} AS {retired_at}, CAST(NULL AS VARCHAR) AS {retired_reason}
         FROM (
            SELECT n.golden_id, {values}, {olds},
                   o.golden_id AS __bf_old_id, o.{created_seq} AS __bf_old_created_seq,
                   o.{seq} AS __bf_old_seq, o.{created_at} AS __bf_old_created_at,
                   o.{updated_at} AS __bf_old_updated_at
            FROM {LOST} l RIGHT JOIN (
                ({touched_fields}) t RIGHT JOIN (
                    ({authority}) n LEFT JOIN {golden} o ON o.golden_id = n.golden_id
                ) ON t.__bf_golden_id = n.golden_id
            ) ON l.__bf_golden_id = n.golden_id
         ) x
         UNION ALL
         {retired}",
        retired = super::deletes::retired_sql(cycle, CANDIDATES),
        null_at = null_of(&state::timestamp_type()),
        retired_at = state::RETIRED_AT,
        retired_reason = state::RETIRED_REASON,
        fields = fields.join(", "),
        values = values.join(", "),
        olds = olds.join(", "),
        changed = changed.join(" OR "),
        created_seq = state::CREATED_SEQ,
        seq = state::SEQ,
        created_at = state::CREATED_AT,
        updated_at = state::UPDATED_AT,
        merged_into = state::MERGED_INTO,
        golden = golden_old(),
    );
    let df = cycle.sql_as_written("authority", &sql).await?;
    let over = cycle
        .materialize(
            "authority",
            df,
            "over-0.parquet",
            OVER,
            Some(state::golden_schema(entity)),
        )
        .await?;
    let changed = cycle
        .count(
            "authority",
            &format!("SELECT COUNT(*) FROM {OVER} WHERE {} = {v}", state::SEQ),
        )
        .await?;
    Ok(over.rows.saturating_sub(changed))
}

/// The values authority decides for every golden record a source's candidates link to:
/// `golden_id`, then per field its value and the source it came from (`__bf_src__<field>`).
///
/// 1. Per source, one row per golden record: the source's only record linked to it as it is,
///    or, when several are, per field the value of the most recently changed one (ties: by id)
///    among those with a value (any, when NULL overwrites). An ordered `first_value`, only for
///    those golden records (it keeps each group's ordering values as scalars: slow for many).
/// 2. Those rows side by side (a left join per source on the touched golden records), and per
///    field the first source in the field's order that has a value — or, under `recent`, the
///    one whose value changed last (ties: that order).
fn decide_sql(
    entity: &EntityConfig,
    types: &[(String, arrow::datatypes::DataType)],
    contributors: &[String],
) -> String {
    // Whether a source's record counts for a field: it has a value, or NULL overwrites.
    let counts = |f: &str| -> Option<String> {
        (!entity.authority(f).null_overwrites).then(|| format!("{} IS NOT NULL", q(f)))
    };
    // The touched golden records with each source's row beside them: `TOUCHED t`, then per
    // source `s{j} RIGHT JOIN (…)`, so that every hash join builds on one source's rows and
    // streams the growing row of the sides already joined (a left join would build on that
    // wide side, copying it whole).
    let mut joined = format!("{TOUCHED} t");
    for (j, source) in contributors.iter().enumerate() {
        let mapped = mapped_fields(entity, source);
        let mut plain = Vec::new();
        let mut firsts = Vec::new();
        for (f, _) in types.iter().filter(|(f, _)| mapped.contains(f)) {
            let at = q(&at_col(f));
            let order = format!("{at} DESC NULLS LAST, __bf_sid_text");
            let filter = counts(f)
                .map(|c| format!(" FILTER (WHERE {c})"))
                .unwrap_or_default();
            plain.push(format!("c.{0}, c.{at}", q(f)));
            firsts.push(format!(
                "first_value({0} ORDER BY {order}){filter} AS {0}, \
                 first_value({at} ORDER BY {order}){filter} AS {at}",
                q(f)
            ));
        }
        let sep = if plain.is_empty() { "" } else { ", " };
        joined = format!(
            "(
               WITH several AS (
                 SELECT __bf_golden_id AS __bf_sg FROM {cand}
                 GROUP BY __bf_golden_id HAVING COUNT(*) > 1
               )
               SELECT c.__bf_golden_id{sep}{plain}
               FROM several s RIGHT ANTI JOIN {cand} c ON s.__bf_sg = c.__bf_golden_id
               UNION ALL
               SELECT c.__bf_golden_id{sep}{firsts}
               FROM several s RIGHT SEMI JOIN {cand} c ON s.__bf_sg = c.__bf_golden_id
               GROUP BY c.__bf_golden_id
             ) s{j} RIGHT JOIN {inner} ON s{j}.__bf_golden_id = t.__bf_golden_id",
            cand = candidates(source),
            plain = plain.join(", "),
            firsts = firsts.join(", "),
            inner = if j == 0 {
                joined
            } else {
                format!("({joined})")
            },
        );
    }
    let mut picks = Vec::new();
    for (f, t) in types {
        let a = entity.authority(f);
        let sources: Vec<(usize, &String)> = a
            .order
            .iter()
            .filter(|s| mapped_fields(entity, s).contains(f))
            .filter_map(|s| contributors.iter().position(|c| c == s).map(|j| (j, s)))
            .collect();
        if sources.is_empty() {
            picks.push(format!("{} AS {}", null_of(t), q(f)));
            picks.push(format!("CAST(NULL AS VARCHAR) AS {}", q(&src_col(f))));
            continue;
        }
        let value = |j: usize| format!("s{j}.{}", q(f));
        let at = |j: usize| format!("s{j}.{}", q(&at_col(f)));
        // Whether source j's row counts for the field.
        let chosen_if = |j: usize| -> String {
            if a.null_overwrites {
                format!("(s{j}.__bf_golden_id IS NOT NULL)")
            } else {
                format!("({} IS NOT NULL)", value(j))
            }
        };
        // The sources in the order they are chosen in: the first that counts (and, under
        // `recent`, changed last) wins.
        let conditions: Vec<(String, &String, usize)> = match a.rule {
            AuthorityRule::Priority | AuthorityRule::FirstNonNull => sources
                .iter()
                .map(|(j, s)| (chosen_if(*j), *s, *j))
                .collect(),
            AuthorityRule::Recent => {
                let latest = format!(
                    "greatest({})",
                    sources
                        .iter()
                        .map(|(j, _)| format!("CASE WHEN {} THEN {} END", chosen_if(*j), at(*j)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                // A value whose change time is unknown comes after every known one.
                sources
                    .iter()
                    .map(|(j, s)| {
                        (
                            format!("{} AND {} = {latest}", chosen_if(*j), at(*j)),
                            *s,
                            *j,
                        )
                    })
                    .chain(
                        sources.iter().map(|(j, s)| {
                            (format!("{} AND {latest} IS NULL", chosen_if(*j)), *s, *j)
                        }),
                    )
                    .collect()
            }
        };
        let chosen = conditions
            .iter()
            .map(|(c, _, j)| format!("WHEN {c} THEN {}", value(*j)))
            .collect::<Vec<_>>()
            .join(" ");
        let source = conditions
            .iter()
            .map(|(c, s, _)| format!("WHEN {c} THEN {}", lit(s)))
            .collect::<Vec<_>>()
            .join(" ");
        picks.push(format!("CASE {chosen} END AS {}", q(f)));
        picks.push(format!("CASE {source} END AS {}", q(&src_col(f))));
    }
    let any = (0..contributors.len())
        .map(|j| format!("s{j}.__bf_golden_id IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        "SELECT t.__bf_golden_id AS golden_id, {picks}
         FROM {joined}
         WHERE {any}",
        picks = picks.join(",\n  "),
        any = if any.is_empty() {
            "FALSE".to_string()
        } else {
            any
        },
    )
}
