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
use crate::config::entity::{FuzzyRule, MatchRule};

const INCOMING: &str = "bf_hub_incoming";
const LINKS_OLD: &str = "bf_hub_links_old";
/// The records of `INCOMING` with the golden record the ID map has for them (`__bf_lid`: none
/// for a record being unmerged) and a decision of `hub resolve` (`__bf_action`, `__bf_to`).
const LINKED: &str = "bf_hub_linked";

/// An exact rule's name in the ID map and the log: `match: email` or `match: name, phone`.
pub fn rule_name(rule: &[String]) -> String {
    MatchRule::Exact(rule.to_vec()).name()
}

/// The text a fuzzy rule compares, from the fields of the relation `alias`: each normalised
/// (`normalize_text`), joined by a space; and the condition that none of them is blank.
fn fuzzy_text(rule: &FuzzyRule, alias: &str) -> (String, String) {
    let parts: Vec<String> = rule
        .fields
        .iter()
        .map(|f| format!("normalize_text(CAST({alias}.{} AS VARCHAR))", q(f)))
        .collect();
    let present = parts
        .iter()
        .map(|p| format!("{p} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" AND ");
    (format!("concat_ws(' ', {})", parts.join(", ")), present)
}

/// The join condition of a fuzzy rule's blocking fields between `a` and `b` (TRUE without).
fn block_on(rule: &FuzzyRule, a: &str, b: &str) -> String {
    if rule.block.is_empty() {
        return "TRUE".into();
    }
    rule.block
        .iter()
        .map(|f| {
            format!(
                "{} = {}",
                norm(&format!("{a}.{}", q(f))),
                norm(&format!("{b}.{}", q(f)))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
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

    // Each record with its golden record in the ID map and a decision. The attach query reads
    // it once per match rule and again for the result, and each read would scan the whole ID
    // map again: once there is an ID map, it is written once. (Before, there is nothing to
    // scan, and writing every record of a first cycle costs more than reading them again.)
    let df = cycle
        .sql(
            "attach",
            &format!(
                "SELECT i.*, d.__bf_action, d.__bf_to,
                        CASE WHEN d.__bf_action = {unmerge} THEN NULL ELSE l.__bf_golden_id END AS __bf_lid
                 FROM {INCOMING} i
                 LEFT JOIN {LINKS_OLD} l ON l.__bf_source = i.__bf_source AND l.__bf_sid_text = i.__bf_sid_text
                 LEFT JOIN {DECISION} d ON d.__bf_source = i.__bf_source AND d.__bf_sid_text = i.__bf_sid_text",
                unmerge = lit(UNMERGE),
            ),
        )
        .await?;
    cycle
        .materialize_with_id_map("attach", df, "linked.parquet", LINKED)
        .await?;

    let sql = attach_sql(cycle);
    let df = cycle.sql("attach", &sql).await?;
    cycle
        .materialize("attach", df, "attached.parquet", ATTACHED, None)
        .await?;
    join_similar_new_records(cycle).await
}

/// New golden records of this cycle whose records a fuzzy rule finds similar (in the same
/// block, at or above the threshold) become one, transitively: the pairs are the edges of a
/// graph whose connected components (a union-find) are the golden records, each keeping its
/// lowest id. The records that join another's get the rule and the score as how they were
/// linked.
async fn join_similar_new_records(cycle: &Cycle<'_>) -> Result<(), HubError> {
    let fuzzy: Vec<&FuzzyRule> = cycle
        .entity
        .match_rules
        .iter()
        .filter_map(|r| match r {
            MatchRule::Fuzzy(f) => Some(f),
            MatchRule::Exact(_) => None,
        })
        .collect();
    if fuzzy.is_empty() {
        return Ok(());
    }
    let news = format!(
        "(SELECT a.__bf_golden_id AS __bf_g, i.* FROM {ATTACHED} a JOIN {INCOMING} i \
           ON i.__bf_source = a.__bf_source AND i.__bf_sid_text = a.__bf_sid_text \
         WHERE a.__bf_linked_by = 'new')"
    );
    let pairs: Vec<String> = fuzzy
        .iter()
        .map(|fr| {
            let (ta, pa) = fuzzy_text(fr, "a");
            let (tb, pb) = fuzzy_text(fr, "b");
            format!(
                "SELECT a.__bf_g AS x, b.__bf_g AS y, {f}({ta}, {tb}) AS s, {name} AS rule \
                 FROM {news} a JOIN {news} b ON {on} AND a.__bf_g < b.__bf_g \
                 WHERE {pa} AND {pb} AND {f}({ta}, {tb}) >= {threshold}",
                f = fr.compare.function(),
                name = lit(&MatchRule::Fuzzy((*fr).clone()).name()),
                on = block_on(fr, "a", "b"),
                threshold = fr.threshold,
            )
        })
        .collect();
    let batches = cycle
        .sql("attach", &pairs.join(" UNION ALL "))
        .await?
        .collect()
        .await
        .map_err(cycle.engine("attach"))?;
    let mut index: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut edges: Vec<(i64, i64, f64, String)> = Vec::new();
    for b in &batches {
        let col = |i: usize, t: &arrow::datatypes::DataType| {
            arrow::compute::cast(b.column(i), t).map_err(|e| cycle.engine("attach")(e.into()))
        };
        let (x, y) = (
            col(0, &arrow::datatypes::DataType::Int64)?,
            col(1, &arrow::datatypes::DataType::Int64)?,
        );
        let (sc, rule) = (
            col(2, &arrow::datatypes::DataType::Float64)?,
            col(3, &arrow::datatypes::DataType::Utf8)?,
        );
        use arrow::array::AsArray;
        let x = x.as_primitive::<arrow::datatypes::Int64Type>();
        let y = y.as_primitive::<arrow::datatypes::Int64Type>();
        let sc = sc.as_primitive::<arrow::datatypes::Float64Type>();
        let rule = rule.as_string::<i32>();
        for r in 0..b.num_rows() {
            for g in [x.value(r), y.value(r)] {
                let next = index.len();
                index.entry(g).or_insert(next);
            }
            edges.push((
                x.value(r),
                y.value(r),
                sc.value(r),
                rule.value(r).to_string(),
            ));
        }
    }
    if edges.is_empty() {
        return Ok(());
    }
    let mut sets = petgraph::unionfind::UnionFind::<usize>::new(index.len());
    for (x, y, _, _) in &edges {
        sets.union(index[x], index[y]);
    }
    // Each component keeps its lowest golden id.
    let mut lowest: std::collections::HashMap<usize, i64> = std::collections::HashMap::new();
    for (g, i) in &index {
        let root = sets.find(*i);
        let e = lowest.entry(root).or_insert(*g);
        *e = (*e).min(*g);
    }
    // How each joining record was linked: its best edge.
    let mut how: std::collections::BTreeMap<i64, (f64, String)> = std::collections::BTreeMap::new();
    for (x, y, score, rule) in &edges {
        for g in [x, y] {
            let e = how.entry(*g).or_insert((*score, rule.clone()));
            if *score > e.0 {
                *e = (*score, rule.clone());
            }
        }
    }
    let mut losers = Vec::new();
    let mut winners = Vec::new();
    let mut hows = Vec::new();
    for (g, i) in &index {
        let w = lowest[&sets.find(*i)];
        if w != *g {
            let (score, rule) = &how[g];
            losers.push(*g);
            winners.push(w);
            hows.push(format!("{rule} ({:.3})", score));
        }
    }
    let remap = arrow::array::RecordBatch::try_from_iter(vec![
        (
            "__bf_loser",
            std::sync::Arc::new(arrow::array::Int64Array::from(losers)) as arrow::array::ArrayRef,
        ),
        (
            "__bf_winner",
            std::sync::Arc::new(arrow::array::Int64Array::from(winners)) as _,
        ),
        (
            "__bf_how",
            std::sync::Arc::new(arrow::array::StringArray::from(hows)) as _,
        ),
    ])
    .map_err(|e| cycle.engine("attach")(e.into()))?;
    let remap = cycle
        .ctx
        .read_batch(remap)
        .map_err(cycle.engine("attach"))?;
    cycle.register("attach", "bf_hub_fuzzy_remap", remap)?;
    let df = cycle
        .sql(
            "attach",
            &format!(
                "SELECT a.__bf_source, a.__bf_sid_text, a.__bf_read, \
                   COALESCE(m.__bf_winner, a.__bf_golden_id) AS __bf_golden_id, \
                   CASE WHEN m.__bf_winner IS NOT NULL THEN m.__bf_how ELSE a.__bf_linked_by END AS __bf_linked_by, \
                   a.__bf_rule, a.__bf_n \
                 FROM {ATTACHED} a LEFT JOIN bf_hub_fuzzy_remap m \
                   ON m.__bf_loser = a.__bf_golden_id AND a.__bf_linked_by = 'new'"
            ),
        )
        .await?;
    cycle
        .materialize("attach", df, "attached-joined.parquet", ATTACHED, None)
        .await?;
    Ok(())
}

/// The attach query (see the module's documentation).
fn attach_sql(cycle: &Cycle<'_>) -> String {
    let rules = &cycle.entity.match_rules;
    let next = cycle.previous.as_ref().map_or(1, |m| m.next_golden_id);
    let live = format!(
        "live AS (SELECT * FROM {} WHERE __bf_merged_into IS NULL AND __bf_retired_at IS NULL)",
        golden_old()
    );
    let mut ctes = Vec::new();
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
    // Fuzzy rules: candidate pairs from the blocking join, scored; the best-scoring golden
    // record(s) of each record that the ID map does not know.
    let mut fuzzy_ctes = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        let rule = match rule {
            MatchRule::Exact(fields) => fields,
            MatchRule::Fuzzy(fr) => {
                let (ti, pi) = fuzzy_text(fr, "i");
                let (tg, pg) = fuzzy_text(fr, "g");
                fuzzy_ctes.push(format!(
                    "p{r} AS (
    SELECT i.__bf_source, i.__bf_sid_text, g.golden_id, {f}({ti}, {tg}) AS __bf_s
    FROM linked i JOIN live g ON {on}
    WHERE i.__bf_lid IS NULL AND i.__bf_action IS NULL AND {pi} AND {pg}
      AND {f}({ti}, {tg}) >= {threshold}
),
m{r} AS (
    SELECT __bf_source, __bf_sid_text, MIN(golden_id) AS __bf_g, COUNT(*) AS __bf_n, MAX(__bf_s) AS __bf_s
    FROM (SELECT *, MAX(__bf_s) OVER (PARTITION BY __bf_source, __bf_sid_text) AS __bf_best FROM p{r})
    WHERE __bf_s = __bf_best GROUP BY __bf_source, __bf_sid_text
),",
                    f = fr.compare.function(),
                    on = block_on(fr, "i", "g"),
                    threshold = fr.threshold,
                ));
                joins.push(format!(
                    "LEFT JOIN m{r} ON m{r}.__bf_source = i.__bf_source AND m{r}.__bf_sid_text = i.__bf_sid_text"
                ));
                found.push(format!("m{r}.__bf_g"));
                candidates.push(format!("WHEN m{r}.__bf_g IS NOT NULL THEN m{r}.__bf_n"));
                how.push(format!(
                    "WHEN m{r}.__bf_g IS NOT NULL THEN {} || ' (' || CAST(round(m{r}.__bf_s, 3) AS VARCHAR) || ')'",
                    lit(&MatchRule::Fuzzy(fr.clone()).name())
                ));
                continue;
            }
        };
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
        // Only the live golden records with the values of a record to match are grouped (a
        // join from those values: when every record read is known by id, none is).
        let complete = rule
            .iter()
            .map(|f| format!("{} IS NOT NULL", norm(&format!("i.{}", q(f)))))
            .collect::<Vec<_>>()
            .join(" AND ");
        let wanted = rule
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} AS __bf_k{i}", norm(&format!("i.{}", q(f)))))
            .collect::<Vec<_>>()
            .join(", ");
        let same = (0..rule.len())
            .map(|i| format!("w.__bf_k{i} = l.__bf_k{i}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let l_keys = (0..rule.len())
            .map(|i| format!("l.__bf_k{i}"))
            .collect::<Vec<_>>();
        ctes.push(format!(
            "want{r} AS (SELECT DISTINCT {wanted} FROM linked i \
             WHERE i.__bf_lid IS NULL AND i.__bf_action IS NULL AND {complete}),
m{r} AS (SELECT {l_named}, MIN(l.golden_id) AS __bf_g, COUNT(*) AS __bf_n \
             FROM want{r} w JOIN (SELECT golden_id, {keys} FROM live WHERE {not_null}) l ON {same} \
             GROUP BY {l_group})",
            keys = keys.join(", "),
            l_named = l_keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k} AS __bf_k{i}"))
                .collect::<Vec<_>>()
                .join(", "),
            l_group = l_keys.join(", "),
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
        .filter_map(MatchRule::exact)
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
        "WITH {live},
linked AS (SELECT * FROM {LINKED}),
{ctes}
{fuzzy}
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
    -- (Joined to the records as the build side of the join: one short row per new golden
    -- record, where the records with all their columns would take several times the memory.)
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
FROM groups g RIGHT JOIN found f ON g.__bf_group = f.__bf_group",
        quarantined = lit(QUARANTINED),
        unmerge = lit(UNMERGE),
        unmerged = lit(UNMERGED),
        candidates = candidates.join(" "),
        ctes = ctes.iter().map(|c| format!("{c},")).collect::<Vec<_>>().join("\n"),
        rank = super::sql::rank_case(
            "__bf_source",
            &cycle.entity.sources.keys().cloned().collect::<Vec<_>>()
        ),
        how = how.join(" "),
        joins = joins.join("\n    "),
        fuzzy = fuzzy_ctes.join("\n"),
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
/// every contribution as of this cycle (before merges). Returns, per source, how many records
/// are new or differ from what their source reported before (values or golden record).
pub async fn deltas(cycle: &Cycle<'_>) -> Result<indexmap::IndexMap<String, u64>, HubError> {
    let v = cycle.version;
    let mut changed = indexmap::IndexMap::new();
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
        // A record read again exactly as it was keeps its row: nothing new was reported. (A
        // record linked for its source to create is reported the first time it is read,
        // whatever its values.)
        let same = std::iter::once(format!(
            "(o.{IN_SID} IS NOT NULL) AND (o.__bf_read_seq IS NOT NULL) \
             AND (o.__bf_golden_id IS NOT DISTINCT FROM a.__bf_golden_id)"
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
            "(o.{IN_SID} IS NULL) OR (o.__bf_read_seq IS NULL) \
             OR (d.__bf_golden_id IS DISTINCT FROM o.__bf_golden_id)"
        ))
        .chain(
            mapped
                .iter()
                .map(|f| format!("(d.{0} IS DISTINCT FROM o.{0})", q(f))),
        )
        .collect();
        let n = cycle
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
        changed.insert(source.clone(), n);
    }
    Ok(changed)
}
