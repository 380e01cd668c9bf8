//! The attach stage (ID mapping): every incoming record gets its golden record.
//!
//! 1. A record seen before keeps its golden record (the ID map: its contribution).
//! 2. Otherwise the match rules are tried in priority order: the first rule under which a
//!    live golden record has equal values (compared trimmed and case-insensitively, none NULL)
//!    attaches it. When that rule finds two or more live golden records, the record is
//!    attached to none: it goes to quarantine (see `quarantine.rs`) until the data or
//!    `hub resolve` settles it. A decision of `hub resolve` comes before the rules.
//! 3. Otherwise a contributing record starts a new golden record, shared by the other new
//!    records with the same values under the first match rule they can be compared by.
//!    A receive-only record joins such a new record when it has the same key, or stays
//!    unlinked; unlinked receive-only records are tried again every cycle.
//!
//! New golden ids are handed out in the order of those keys, so a cycle run again after a
//! crash hands out the same ids.

use indexmap::IndexMap;

use super::context::{
    ATTACHED, Cycle, contrib_now, contrib_old, delta, golden_old, gone, incoming,
};
use super::quarantine::{self, DECISION, QUARANTINED, RESOLVED, UNMERGE, UNMERGED};
use super::read::{IN_AT, IN_SID, IN_WM, SourceRead};
use super::sql::{lit, norm, null_of, q, tuple_key};
use super::state::{self, at_col, mapped_fields};
use super::{HubError, SourceCounts};

const INCOMING: &str = "bf_hub_incoming";
const LINKS_OLD: &str = "bf_hub_links_old";

/// A rule's name in the ID map and the log: `match: email` or `match: name, phone`.
pub fn rule_name(rule: &[String]) -> String {
    format!("match: {}", rule.join(", "))
}

/// Register `bf_hub_incoming` (every source's records of this cycle in the entity's fields)
/// and compute `bf_hub_attached` (source, id, golden id, how it was found).
pub async fn attach(
    cycle: &Cycle<'_>,
    reads: &IndexMap<String, SourceRead>,
    resolution: Option<&quarantine::Resolution>,
) -> Result<(), HubError> {
    let entity = cycle.entity;
    let types: Vec<(String, arrow::datatypes::DataType)> = entity
        .field_types()
        .into_iter()
        .map(|(n, t)| (n, t.unwrap_or(arrow::datatypes::DataType::Utf8)))
        .collect();

    // Each source's records of this cycle: those read (less those dropped from quarantine and
    // read again unchanged), and those tried again: ambiguous records in quarantine, and the
    // receive-only records that matched nothing before.
    for (source, config) in &entity.sources {
        let mapped = mapped_fields(entity, source);
        let fields = |alias: &str| -> String {
            mapped
                .iter()
                .map(|f| format!(", {alias}.{}", q(f)))
                .collect::<String>()
        };
        let read = &reads[source].table;
        let mut parts = vec![quarantine::kept_sql(
            cycle,
            source,
            read,
            &format!(
                "r.{IN_SID}, r.{IN_WM}{}, r.{IN_AT}, TRUE AS __bf_read",
                fields("r")
            ),
        )];
        let no_wm = null_of(&arrow::datatypes::DataType::Null);
        if !config.role.contributes() {
            parts.push(format!(
                "SELECT o.{IN_SID}, {no_wm} AS {IN_WM}{fields}, {now} AS {IN_AT}, FALSE AS __bf_read \
                 FROM {read} r RIGHT ANTI JOIN {old} o ON o.{IN_SID} = r.{IN_SID} \
                 WHERE o.__bf_golden_id IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM {gone} g WHERE g.{IN_SID} = o.{IN_SID}) \
                   AND {not_dropped}",
                fields = fields("o"),
                now = cycle.now_us,
                old = contrib_old(source),
                gone = gone(source),
                not_dropped = quarantine::not_dropped(source, "o"),
            ));
        }
        // A record being unmerged comes in again as the ID map has it.
        if let Some(r) = resolution.filter(|r| &r.source == source)
            && let quarantine::Decision::Unmerge(g) = r.decision
        {
            parts.push(format!(
                    "SELECT o.{IN_SID}, {no_wm} AS {IN_WM}{fields}, {now} AS {IN_AT}, FALSE AS __bf_read \
                     FROM {old} o WHERE CAST(o.{IN_SID} AS VARCHAR) = {id} AND o.__bf_golden_id = {g}",
                    fields = fields("o"),
                    now = cycle.now_us,
                    old = contrib_old(source),
                    id = lit(&r.id),
                ));
        }
        parts.push(quarantine::retry_sql(
            source,
            read,
            &format!(
                "o.{IN_SID}, {no_wm} AS {IN_WM}{}, o.{IN_AT}, FALSE AS __bf_read",
                fields("o")
            ),
        ));
        // The plan holds the table it reads, so the name can be taken over.
        let df = cycle.sql("attach", &parts.join("\nUNION ALL\n")).await?;
        cycle.register("attach", &incoming(source), df)?;
    }

    // Every source's records in one relation, in the entity's fields.
    let mut parts = Vec::new();
    let mut links = Vec::new();
    for (source, config) in &entity.sources {
        let mapped = mapped_fields(entity, source);
        let fields = types
            .iter()
            .map(|(f, t)| {
                if mapped.contains(f) {
                    format!("{} AS {}", q(f), q(f))
                } else {
                    format!("{} AS {}", null_of(t), q(f))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!(
            "SELECT {src} AS __bf_source, CAST({IN_SID} AS VARCHAR) AS __bf_sid_text, \
             {contributes} AS __bf_contributes, __bf_read, {fields} FROM {table}",
            src = lit(source),
            contributes = config.role.contributes(),
            table = incoming(source),
        ));
        links.push(format!(
            "SELECT {src} AS __bf_source, CAST({IN_SID} AS VARCHAR) AS __bf_sid_text, __bf_golden_id \
             FROM {old} WHERE __bf_golden_id IS NOT NULL",
            src = lit(source),
            old = contrib_old(source),
        ));
    }
    let df = cycle.sql("attach", &parts.join("\nUNION ALL\n")).await?;
    cycle.register("attach", INCOMING, df)?;
    let df = cycle.sql("attach", &links.join("\nUNION ALL\n")).await?;
    cycle.register("attach", LINKS_OLD, df)?;

    let sql = attach_sql(cycle);
    let df = cycle.sql("attach", &sql).await?;
    cycle
        .materialize("attach", df, "attached.parquet", ATTACHED, None)
        .await?;
    Ok(())
}

/// The attach query (see the module's documentation).
fn attach_sql(cycle: &Cycle<'_>) -> String {
    let rules = &cycle.entity.match_rules;
    let next = cycle.previous.as_ref().map_or(1, |m| m.next_golden_id);
    let mut ctes = vec![format!(
        "live AS (SELECT * FROM {} WHERE __bf_merged_into IS NULL AND __bf_retired_at IS NULL)",
        golden_old()
    )];
    let mut joins = Vec::new();
    let mut found = Vec::new();
    let mut how = vec![
        "WHEN i.__bf_lid IS NOT NULL THEN 'id'".to_string(),
        format!("WHEN i.__bf_action = 'attach' THEN {}", lit(RESOLVED)),
    ];
    // How many live golden records the first rule that finds any finds.
    let mut candidates =
        vec!["WHEN i.__bf_lid IS NOT NULL OR i.__bf_action IS NOT NULL THEN 1".to_string()];
    let mut group = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        let keys: Vec<String> = rule
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} AS __bf_k{i}", norm(q(f).as_str())))
            .collect();
        let not_null = rule
            .iter()
            .map(|f| format!("{} IS NOT NULL", norm(&q(f))))
            .collect::<Vec<_>>()
            .join(" AND ");
        let group_by = (0..rule.len())
            .map(|i| format!("__bf_k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        ctes.push(format!(
            "m{r} AS (SELECT {group_by}, MIN(golden_id) AS __bf_g, COUNT(*) AS __bf_n FROM \
             (SELECT golden_id, {keys} FROM live WHERE {not_null}) GROUP BY {group_by})",
            keys = keys.join(", ")
        ));
        let on = rule
            .iter()
            .enumerate()
            .map(|(i, f)| format!("m{r}.__bf_k{i} = {}", norm(&format!("i.{}", q(f)))))
            .collect::<Vec<_>>()
            .join(" AND ");
        joins.push(format!("LEFT JOIN m{r} ON {on}"));
        found.push(format!("m{r}.__bf_g"));
        candidates.push(format!("WHEN m{r}.__bf_g IS NOT NULL THEN m{r}.__bf_n"));
        how.push(format!(
            "WHEN m{r}.__bf_g IS NOT NULL THEN {}",
            lit(&rule_name(rule))
        ));
        let complete = rule
            .iter()
            .map(|f| format!("{} IS NOT NULL", norm(&format!("i.{}", q(f)))))
            .collect::<Vec<_>>()
            .join(" AND ");
        let values: Vec<String> = rule.iter().map(|f| norm(&format!("i.{}", q(f)))).collect();
        group.push(format!(
            "WHEN {complete} THEN {}",
            tuple_key(&format!("rule{r}"), &values)
        ));
    }
    let record_key = tuple_key(
        "record",
        &["i.__bf_source".to_string(), "i.__bf_sid_text".to_string()],
    );
    // Which rule a group key came from, for the ID map's "how".
    let group_rule = rules
        .iter()
        .map(|rule| {
            format!(
                "WHEN {} THEN {}",
                rule.iter()
                    .map(|f| format!("{} IS NOT NULL", norm(&format!("i.{}", q(f)))))
                    .collect::<Vec<_>>()
                    .join(" AND "),
                lit(&rule_name(rule))
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    // A record settled as new (`hub resolve --new`) or unmerged has a golden record of its own.
    let group_case = format!(
        "CASE WHEN i.__bf_action IN ('new', {unmerge}) THEN {record_key} {} ELSE {record_key} END",
        group.join(" "),
        unmerge = lit(UNMERGE),
    );
    let found = if found.is_empty() {
        "i.__bf_lid, CASE WHEN i.__bf_action = 'attach' THEN i.__bf_to END".to_string()
    } else {
        format!(
            "i.__bf_lid, CASE WHEN i.__bf_action = 'attach' THEN i.__bf_to END, \
             CASE WHEN i.__bf_action IS NULL THEN COALESCE({}) END",
            found.join(", ")
        )
    };
    let group_rule_case = if group_rule.is_empty() {
        "CAST(NULL AS VARCHAR)".to_string()
    } else {
        format!("CASE {group_rule} END")
    };
    format!(
        "WITH {ctes},
linked AS (
    -- The ID map's golden record (set aside for a record being unmerged) and a decision.
    SELECT i.*, d.__bf_action, d.__bf_to,
           CASE WHEN d.__bf_action = {unmerge} THEN NULL ELSE l.__bf_golden_id END AS __bf_lid
    FROM {INCOMING} i
    LEFT JOIN {LINKS_OLD} l ON l.__bf_source = i.__bf_source AND l.__bf_sid_text = i.__bf_sid_text
    LEFT JOIN {DECISION} d ON d.__bf_source = i.__bf_source AND d.__bf_sid_text = i.__bf_sid_text
),
found AS (
    SELECT i.__bf_source, i.__bf_sid_text, i.__bf_contributes, i.__bf_read, i.__bf_action,
           COALESCE({found}) AS __bf_found,
           CASE {how} END AS __bf_how,
           CASE {candidates} ELSE 0 END AS __bf_n,
           {group_case} AS __bf_group,
           {group_rule_case} AS __bf_group_rule
    FROM linked i
    {joins}
),
groups AS (
    -- New golden ids in the order of the sources, then of the records' ids, then of the keys.
    SELECT __bf_group, {next} - 1 + ROW_NUMBER() OVER (ORDER BY __bf_first_rank, __bf_first_id, __bf_group) AS __bf_new_id
    FROM (SELECT __bf_group, MIN({rank}) AS __bf_first_rank, MIN(__bf_sid_text) AS __bf_first_id
          FROM found WHERE __bf_found IS NULL AND __bf_contributes GROUP BY __bf_group)
)
SELECT f.__bf_source, f.__bf_sid_text, f.__bf_read,
       CASE WHEN f.__bf_n > 1 THEN NULL ELSE COALESCE(f.__bf_found, g.__bf_new_id) END AS __bf_golden_id,
       CASE WHEN f.__bf_n > 1 THEN {quarantined}
            WHEN f.__bf_found IS NOT NULL THEN f.__bf_how
            WHEN g.__bf_new_id IS NOT NULL AND f.__bf_contributes AND f.__bf_action = {unmerge} THEN {unmerged}
            WHEN g.__bf_new_id IS NOT NULL AND f.__bf_contributes THEN 'new'
            WHEN g.__bf_new_id IS NOT NULL THEN f.__bf_group_rule
       END AS __bf_linked_by,
       f.__bf_how AS __bf_rule, f.__bf_n
FROM found f LEFT JOIN groups g ON g.__bf_group = f.__bf_group",
        quarantined = lit(QUARANTINED),
        unmerge = lit(UNMERGE),
        unmerged = lit(UNMERGED),
        candidates = candidates.join(" "),
        ctes = ctes.join(",\n"),
        rank = super::sql::rank_case(
            "__bf_source",
            &cycle.entity.sources.keys().cloned().collect::<Vec<_>>()
        ),
        how = how.join(" "),
        joins = joins.join("\n    "),
    )
}

/// Per source: records attached by id, by a match rule, as new golden records, or unlinked.
pub async fn count(
    cycle: &Cycle<'_>,
    sources: &mut IndexMap<String, SourceCounts>,
) -> Result<(), HubError> {
    let batches = cycle
        .sql(
            "attach",
            &format!(
                "SELECT __bf_source, \
                   SUM(CASE WHEN __bf_linked_by = 'id' THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN __bf_linked_by LIKE 'match:%' THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN __bf_linked_by = 'new' THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN __bf_golden_id IS NULL AND __bf_linked_by IS DISTINCT FROM {quarantined} THEN 1 ELSE 0 END) \
                 FROM {ATTACHED} WHERE __bf_read GROUP BY __bf_source",
                quarantined = lit(QUARANTINED),
            ),
        )
        .await?
        .collect()
        .await
        .map_err(cycle.engine("attach"))?;
    for batch in batches {
        let names = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| cycle.engine("attach")(e.into()))?;
        let names = arrow::array::AsArray::as_string::<i32>(&names);
        let n = |c: usize, r: usize| -> u64 {
            arrow::compute::cast(batch.column(c), &arrow::datatypes::DataType::Int64)
                .ok()
                .map(|a| {
                    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&a)
                        .value(r)
                        .max(0) as u64
                })
                .unwrap_or(0)
        };
        for r in 0..batch.num_rows() {
            if let Some(c) = sources.get_mut(names.value(r)) {
                c.by_id = n(1, r);
                c.matched = n(2, r);
                c.new = n(3, r);
                c.unlinked = n(4, r);
            }
        }
    }
    Ok(())
}

/// Per source: `bf_hub_delta_<source>`, the contributions of this cycle's records (their
/// values, when each field last changed, their golden id), and `bf_hub_contrib_now_<source>`,
/// every contribution as of this cycle (before merges). Returns how many records are new or
/// differ from what their source reported before (values or golden record).
pub async fn deltas(cycle: &Cycle<'_>) -> Result<u64, HubError> {
    let v = cycle.version;
    let mut changed = 0;
    for source in cycle.entity.sources.keys() {
        let mapped = mapped_fields(cycle.entity, source);
        let mut cols = vec![
            format!("i.{IN_SID} AS {IN_SID}"),
            "a.__bf_golden_id AS __bf_golden_id".to_string(),
        ];
        cols.extend(mapped.iter().map(|f| format!("i.{0} AS {0}", q(f))));
        cols.extend(mapped.iter().map(|f| {
            format!(
                "CASE WHEN (o.{IN_SID} IS NULL) OR (i.{f} IS DISTINCT FROM o.{f}) THEN i.{IN_AT} ELSE o.{at} END AS {at}",
                f = q(f),
                at = q(&at_col(f))
            )
        }));
        // A record read again exactly as it was keeps its row: nothing new was reported.
        let same = std::iter::once(format!(
            "(o.{IN_SID} IS NOT NULL) AND (o.__bf_golden_id IS NOT DISTINCT FROM a.__bf_golden_id)"
        ))
        .chain(
            mapped
                .iter()
                .map(|f| format!("(i.{0} IS NOT DISTINCT FROM o.{0})", q(f))),
        )
        .collect::<Vec<_>>()
        .join(" AND ");
        cols.push(format!(
            "CASE WHEN {same} THEN o.__bf_read_seq ELSE {v} END AS __bf_read_seq"
        ));
        cols.push(format!(
            "CASE WHEN (o.{IN_SID} IS NOT NULL) AND (o.__bf_golden_id IS NOT DISTINCT FROM a.__bf_golden_id) \
             THEN o.__bf_link_seq ELSE {v} END AS __bf_link_seq"
        ));
        cols.push(format!("COALESCE(o.__bf_first_seq, {v}) AS __bf_first_seq"));
        cols.push(format!(
            "CASE WHEN (o.{IN_SID} IS NOT NULL) AND (o.__bf_golden_id IS NOT DISTINCT FROM a.__bf_golden_id) \
             THEN o.__bf_linked_by ELSE a.__bf_linked_by END AS __bf_linked_by"
        ));
        let sql = format!(
            "SELECT {cols}
             FROM {inc} i
             JOIN {ATTACHED} a ON a.__bf_source = {src} AND a.__bf_sid_text = CAST(i.{IN_SID} AS VARCHAR)
             LEFT JOIN {old} o ON o.{IN_SID} = i.{IN_SID}
             {held}",
            held = if cycle.entity.sources[source].role.contributes() {
                // A contributing record in quarantine contributes nothing (yet).
                format!("WHERE a.__bf_linked_by IS DISTINCT FROM {}", lit(QUARANTINED))
            } else {
                String::new()
            },
            cols = cols.join(",\n  "),
            inc = incoming(source),
            src = lit(source),
            old = contrib_old(source),
        );
        let df = cycle.sql("attach", &sql).await?;
        let id_type = df
            .schema()
            .field_with_unqualified_name(IN_SID)
            .map(|f| f.data_type().clone())
            .map_err(cycle.engine("attach"))?;
        let schema = state::contributions_schema(cycle.entity, source, &id_type);
        cycle
            .materialize(
                "attach",
                df,
                &format!("delta-{source}.parquet"),
                &delta(source),
                Some(schema),
            )
            .await?;
        let now = cycle
            .sql(
                "attach",
                &format!(
                    "SELECT o.* FROM (SELECT {IN_SID} FROM {d} UNION ALL SELECT {IN_SID} FROM {g}) d \
                     RIGHT ANTI JOIN {old} o ON o.{IN_SID} = d.{IN_SID} \
                     UNION ALL SELECT * FROM {d}",
                    d = delta(source),
                    g = gone(source),
                    old = contrib_old(source),
                ),
            )
            .await?;
        cycle.register("attach", &contrib_now(source), now)?;
        let differs: Vec<String> = std::iter::once(format!(
            "(o.{IN_SID} IS NULL) OR (d.__bf_golden_id IS DISTINCT FROM o.__bf_golden_id)"
        ))
        .chain(
            mapped
                .iter()
                .map(|f| format!("(d.{0} IS DISTINCT FROM o.{0})", q(f))),
        )
        .collect();
        changed += cycle
            .count(
                "attach",
                &format!(
                    "SELECT COUNT(*) FROM {d} d LEFT JOIN {old} o ON o.{IN_SID} = d.{IN_SID} WHERE {}",
                    differs.join(" OR "),
                    d = delta(source),
                    old = contrib_old(source),
                ),
            )
            .await?;
    }
    Ok(changed)
}
