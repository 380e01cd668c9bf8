//! Quarantine: source records kept out of the golden records until the data or a person
//! settles them (Boomi's term), without stopping the rest of the cycle.
//!
//! - **Ambiguous**: a record the ID map does not know whose first match rule that finds
//!   anything finds two or more live golden records. Attaching it to one of them would be a
//!   guess, so it is attached to none.
//! - **Invalid**: a record whose latest version cannot be taken: a value that does not read as
//!   its field's type, or its id twice at one watermark value. (A record whose id is NULL
//!   cannot be named, so it is only counted invalid.) A record already linked keeps what it
//!   contributed before.
//!
//! Each source keeps its entries in `quarantine-<source>.parquet` (its ids, the values read,
//! why, the candidates, since when, and a decision). An entry leaves when its record attaches
//! (ambiguous records are tried again every cycle that has work, so a merge or a corrected value
//! settles them), when the source sends a version that can be taken, when the record is deleted
//! in its source, or when `backflow hub resolve` settles it:
//!
//! ```text
//! --attach G   link it to golden record G ("resolved" in the ID map and the log)
//! --new        give it a golden record of its own
//! --drop       leave this version out: it stays listed as dropped, and is ignored while the
//!              source sends it unchanged; a changed version is matched again
//! ```

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::HubError;
use super::context::{ATTACHED, Cycle, contrib_old, golden_old, gone, incoming};
use super::read::{IN_AT, IN_SID};
use super::sql::{lit, norm, q};
use super::state::{self, StateFile, mapped_fields};

/// `__bf_linked_by` of a record the attach stage quarantined.
pub const QUARANTINED: &str = "quarantined";
/// `__bf_linked_by` of a record `hub resolve --attach` linked.
pub const RESOLVED: &str = "resolved (hub resolve)";
/// `__bf_linked_by` of a record `hub unmerge` took out into a golden record of its own.
pub const UNMERGED: &str = "unmerged (hub unmerge)";
/// `__bf_action` of an unmerge in [`DECISION`].
pub const UNMERGE: &str = "unmerge";
pub const AMBIGUOUS: &str = "ambiguous";
pub const INVALID: &str = "invalid";
const DROP: &str = "drop";

/// The table of `hub resolve`'s decision in this cycle (none or one row): `__bf_source`,
/// `__bf_sid_text`, `__bf_action` (`attach`, `new`, `drop`), `__bf_to` (for `attach`).
pub const DECISION: &str = "bf_hub_decision";

pub const KIND: &str = "__bf_kind";
pub const REASON: &str = "__bf_reason";
pub const RULE: &str = "__bf_rule";
pub const CANDIDATES: &str = "__bf_candidates";
pub const SINCE: &str = "__bf_since";
pub const DECIDED: &str = "__bf_decision";

/// The source's quarantine as committed, with this cycle's `--drop` applied.
pub fn old_table(source: &str) -> String {
    format!("bf_hub_quar_old_{source}")
}
/// The source's quarantine exactly as committed.
fn stored_table(source: &str) -> String {
    format!("bf_hub_quar_stored_{source}")
}
/// The source's invalid records of this cycle that have an id: `__bf_sid`, `__bf_reason`,
/// the fields, `__bf_change_at`.
pub fn invalid_table(source: &str) -> String {
    format!("bf_hub_invalid_{source}")
}
fn next_table(source: &str) -> String {
    format!("bf_hub_quar_next_{source}")
}

/// What a person decided for one source record: `hub resolve` for a record in quarantine,
/// `hub unmerge` for one linked to a golden record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Attach(i64),
    New,
    Drop,
    /// Take the record out of this golden record into one of its own.
    Unmerge(i64),
}

/// A decision and the record it is for (its id as text, as people write it).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub source: String,
    pub id: String,
    pub decision: Decision,
    /// Golden records the record's new golden record is never to be merged with (`--new`:
    /// the candidates it matched; an unmerge: the one it leaves).
    pub apart_from: Vec<i64>,
}

/// The id among `ids` that `typed` names: the same text, or else the only one equal to it as
/// an integer (`7` for `007`). `Err(None)`: none; `Err(Some(list))`: several equal as numbers.
pub fn pick_id<'a>(ids: &[&'a str], typed: &str) -> Result<&'a str, Option<String>> {
    if let Some(id) = ids.iter().find(|i| **i == typed) {
        return Ok(id);
    }
    let Ok(n) = typed.trim().parse::<i128>() else {
        return Err(None);
    };
    let same: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|i| i.trim().parse::<i128>().is_ok_and(|m| m == n))
        .collect();
    match same.as_slice() {
        [] => Err(None),
        [one] => Ok(one),
        several => Err(Some(
            several
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// A source's quarantine file schema: its id type and the entity fields it maps.
pub fn schema(
    entity: &crate::config::entity::EntityConfig,
    source: &str,
    id_type: &DataType,
) -> SchemaRef {
    let types: indexmap::IndexMap<String, DataType> = entity
        .field_types()
        .into_iter()
        .map(|(n, t)| (n, t.unwrap_or(DataType::Utf8)))
        .collect();
    let mut fields = vec![Field::new(IN_SID, id_type.clone(), true)];
    for f in mapped_fields(entity, source) {
        fields.push(Field::new(&f, types[&f].clone(), true));
    }
    fields.extend([
        Field::new(IN_AT, DataType::Int64, true),
        Field::new(KIND, DataType::Utf8, true),
        Field::new(REASON, DataType::Utf8, true),
        Field::new(RULE, DataType::Utf8, true),
        Field::new(CANDIDATES, DataType::Utf8, true),
        Field::new(SINCE, state::timestamp_type(), true),
        Field::new(DECIDED, DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Read stage: register the source's committed quarantine (`old_table`, with a `--drop` of
/// this cycle applied) and its invalid records of this cycle (`invalid_table`, from the
/// invalid rows of the read registered as `raw`).
pub async fn load(
    cycle: &Cycle<'_>,
    source: &str,
    file: Option<&StateFile>,
    id_type: &DataType,
    raw: &str,
    invalid_count: u64,
    resolution: Option<&Resolution>,
) -> Result<(), HubError> {
    let schema = schema(cycle.entity, source, id_type);
    let files: Vec<&StateFile> = file.into_iter().collect();
    let stored = state::read_aligned(&cycle.project.state, cycle.ctx, &files, &schema)
        .await
        .map_err(cycle.engine("read"))?;
    cycle.register("read", &stored_table(source), stored)?;
    // This cycle's decision on the record: a drop sets it aside; an attach or a new golden
    // record takes back one that was set aside.
    let decided = resolution
        .filter(|r| r.source == source)
        .and_then(|r| match r.decision {
            Decision::Drop => Some((r.id.as_str(), lit(DROP))),
            Decision::Attach(_) | Decision::New => Some((r.id.as_str(), "NULL".to_string())),
            Decision::Unmerge(_) => None,
        });
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| match (f.name().as_str(), &decided) {
            (DECIDED, Some((id, value))) => format!(
                "CASE WHEN CAST({IN_SID} AS VARCHAR) = {} THEN {value} ELSE {DECIDED} END AS {DECIDED}",
                lit(id),
            ),
            (name, _) => q(name),
        })
        .collect();
    let old = cycle
        .sql(
            "read",
            &format!("SELECT {} FROM {}", cols.join(", "), stored_table(source)),
        )
        .await?;
    cycle.register("read", &old_table(source), old)?;

    let fields: Vec<String> = mapped_fields(cycle.entity, source)
        .iter()
        .map(|f| q(f))
        .collect();
    let records = format!(
        "SELECT {IN_SID}, {REASON}{sep}{fields}, {IN_AT} FROM (
           SELECT *, ROW_NUMBER() OVER (PARTITION BY {IN_SID} ORDER BY {IN_AT} DESC) AS __bf_qn
           FROM ({invalid_sql}) WHERE {IN_SID} IS NOT NULL
         ) WHERE __bf_qn = 1",
        sep = if fields.is_empty() { "" } else { ", " },
        fields = fields.join(", "),
        invalid_sql = super::read::invalid_sql(raw),
    );
    let invalid = cycle.sql("read", &records).await?;
    if invalid_count == 0 {
        // Most reads have none: the windowed query is planned (for its schema), not run.
        let none = invalid.limit(0, Some(0)).map_err(cycle.engine("read"))?;
        return cycle.register("read", &invalid_table(source), none);
    }
    cycle
        .materialize(
            "read",
            invalid,
            &format!("invalid-{source}.parquet"),
            &invalid_table(source),
            None,
        )
        .await?;
    Ok(())
}

/// Attach stage: register `bf_hub_decision` (see [`DECISION`]).
pub async fn register_decision(
    cycle: &Cycle<'_>,
    resolution: Option<&Resolution>,
) -> Result<(), HubError> {
    let sql = match resolution {
        Some(r) => {
            let (action, to) = match r.decision {
                Decision::Attach(g) => ("attach", g.to_string()),
                Decision::New => ("new", "NULL".to_string()),
                Decision::Drop => (DROP, "NULL".to_string()),
                Decision::Unmerge(g) => (UNMERGE, g.to_string()),
            };
            format!(
                "SELECT {} AS __bf_source, {} AS __bf_sid_text, {} AS __bf_action, \
                 CAST({to} AS BIGINT) AS __bf_to",
                lit(&r.source),
                lit(&r.id),
                lit(action)
            )
        }
        None => {
            "SELECT CAST(NULL AS VARCHAR) AS __bf_source, CAST(NULL AS VARCHAR) AS __bf_sid_text, \
                 CAST(NULL AS VARCHAR) AS __bf_action, CAST(NULL AS BIGINT) AS __bf_to WHERE FALSE"
                .to_string()
        }
    };
    let df = cycle.sql("attach", &sql).await?;
    cycle.register("attach", DECISION, df)
}

/// Attach stage: the source's records read this cycle (`read`, a table with `__bf_sid`, the
/// mapped fields and `__bf_change_at`) less those dropped from quarantine and read again
/// unchanged, in the columns `cols` (qualified by `r.`).
pub fn kept_sql(cycle: &Cycle<'_>, source: &str, read: &str, cols: &str) -> String {
    let same = mapped_fields(cycle.entity, source)
        .iter()
        .map(|f| format!(" AND (d.{0} IS NOT DISTINCT FROM r.{0})", q(f)))
        .collect::<String>();
    format!(
        "SELECT {cols} FROM {read} r LEFT ANTI JOIN \
         (SELECT * FROM {old} WHERE {DECIDED} = {drop} AND {KIND} = {amb}) d \
         ON d.{IN_SID} = r.{IN_SID}{same}",
        old = old_table(source),
        drop = lit(DROP),
        amb = lit(AMBIGUOUS),
    )
}

/// Attach stage: the source's ambiguous records, undecided, that this cycle did not read:
/// tried again (with `__bf_read` false). `read` is the source's read table; `cols` the
/// columns (qualified by `o.`), as the source's incoming records have them.
pub fn retry_sql(source: &str, read: &str, cols: &str) -> String {
    format!(
        "SELECT {cols} FROM {read} r RIGHT ANTI JOIN {old} o ON o.{IN_SID} = r.{IN_SID} \
         WHERE o.{KIND} = {amb} AND o.{DECIDED} IS NULL \
           AND NOT EXISTS (SELECT 1 FROM {invalid} v WHERE v.{IN_SID} = o.{IN_SID}) \
           AND NOT EXISTS (SELECT 1 FROM {gone} g WHERE g.{IN_SID} = o.{IN_SID}) \
           AND NOT EXISTS (SELECT 1 FROM {contrib} c WHERE c.{sid} = o.{IN_SID})",
        old = old_table(source),
        amb = lit(AMBIGUOUS),
        invalid = invalid_table(source),
        gone = gone(source),
        contrib = contrib_old(source),
        sid = state::SID,
    )
}

/// Whether a receive-only record left unlinked before is dropped from quarantine (the retry
/// of unlinked records leaves it out).
pub fn not_dropped(source: &str, alias: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM {old} d WHERE d.{IN_SID} = {alias}.{IN_SID} AND d.{DECIDED} = {drop})",
        old = old_table(source),
        drop = lit(DROP),
    )
}

/// What a source's quarantine became in one cycle.
#[derive(Debug, Default)]
pub struct Next {
    /// The file to commit (None: the quarantine is empty).
    pub file: Option<StateFile>,
    /// Entries added, removed or changed.
    pub changed: u64,
    /// Records put in quarantine this cycle that were not there before.
    pub added: u64,
}

/// After the attach stage: the source's quarantine as this cycle leaves it. Entries of
/// records this cycle saw (read, tried again, invalid or deleted) are replaced by what it
/// found; the others stay.
/// How many records of each source the attach stage found ambiguous (one pass over the
/// attached records for every source; sources with none are absent).
pub async fn ambiguous(
    cycle: &Cycle<'_>,
) -> Result<std::collections::HashMap<String, u64>, HubError> {
    let batches = cycle
        .sql(
            "quarantine",
            &format!(
                "SELECT CAST(__bf_source AS VARCHAR), COUNT(*) FROM {ATTACHED} \
                 WHERE __bf_linked_by = {} GROUP BY __bf_source",
                lit(QUARANTINED)
            ),
        )
        .await?
        .collect()
        .await
        .map_err(cycle.engine("quarantine"))?;
    let mut out = std::collections::HashMap::new();
    for b in &batches {
        let names = arrow::compute::cast(b.column(0), &DataType::Utf8)
            .map_err(|e| cycle.engine("quarantine")(e.into()))?;
        let names = names.as_string::<i32>();
        let counts = arrow::compute::cast(b.column(1), &DataType::Int64)
            .map_err(|e| cycle.engine("quarantine")(e.into()))?;
        let counts = counts.as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            out.insert(names.value(r).to_string(), counts.value(r).max(0) as u64);
        }
    }
    Ok(out)
}

/// `ambiguous`: how many of the source's records the attach stage found ambiguous (see
/// [`ambiguous`]).
pub async fn next(
    cycle: &Cycle<'_>,
    source: &str,
    id_type: &DataType,
    ambiguous: u64,
) -> Result<Next, HubError> {
    let entity = cycle.entity;
    let schema = schema(entity, source, id_type);
    let mapped = mapped_fields(entity, source);
    let src = lit(source);
    let stored_rows = cycle
        .count(
            "quarantine",
            &format!("SELECT COUNT(*) FROM {}", stored_table(source)),
        )
        .await?;
    let invalid = cycle
        .count(
            "quarantine",
            &format!("SELECT COUNT(*) FROM {}", invalid_table(source)),
        )
        .await?;
    if stored_rows == 0 && ambiguous == 0 && invalid == 0 {
        return Ok(Next::default());
    }
    let values = |alias: &str| -> String {
        mapped
            .iter()
            .map(|f| format!("{alias}.{}, ", q(f)))
            .collect::<String>()
    };
    let now = cycle.now_sql();
    // The golden records each ambiguous record matched, per rule it can be compared by.
    let live = format!(
        "(SELECT golden_id{sep}{fields} FROM {golden} WHERE {merged} IS NULL AND {retired} IS NULL)",
        sep = if entity.fields.is_empty() { "" } else { ", " },
        fields = entity
            .fields
            .keys()
            .map(|f| q(f))
            .collect::<Vec<_>>()
            .join(", "),
        golden = golden_old(),
        merged = state::MERGED_INTO,
        retired = state::RETIRED_AT,
    );
    let held = format!(
        "(SELECT i.*, a.__bf_rule, a.__bf_n FROM {inc} i JOIN {ATTACHED} a \
           ON a.__bf_source = {src} AND a.__bf_sid_text = CAST(i.{IN_SID} AS VARCHAR) \
         WHERE a.__bf_linked_by = {quarantined})",
        inc = incoming(source),
        quarantined = lit(QUARANTINED),
    );
    let mut candidates = Vec::new();
    for rule in &entity.match_rules {
        if !rule.fields().iter().all(|f| mapped.contains(f)) {
            continue;
        }
        let (on, same_rule) = match rule {
            crate::config::entity::MatchRule::Exact(fields) => (
                fields
                    .iter()
                    .map(|f| {
                        format!(
                            "{} = {}",
                            norm(&format!("g.{}", q(f))),
                            norm(&format!("h.{}", q(f)))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" AND "),
                format!("h.__bf_rule = {}", lit(&rule.name())),
            ),
            crate::config::entity::MatchRule::Fuzzy(fr) => {
                let text = |alias: &str| {
                    fr.fields
                        .iter()
                        .map(|f| format!("normalize_text(CAST({alias}.{} AS VARCHAR))", q(f)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut on = fr
                    .block
                    .iter()
                    .map(|f| {
                        format!(
                            "{} = {}",
                            norm(&format!("g.{}", q(f))),
                            norm(&format!("h.{}", q(f)))
                        )
                    })
                    .collect::<Vec<_>>();
                on.push(format!(
                    "{f}(concat_ws(' ', {tg}), concat_ws(' ', {th})) >= {t}",
                    f = fr.compare.function(),
                    tg = text("g"),
                    th = text("h"),
                    t = fr.threshold
                ));
                (
                    on.join(" AND "),
                    format!(
                        "starts_with(h.__bf_rule, {})",
                        lit(&format!("{} (", rule.name()))
                    ),
                )
            }
        };
        candidates.push(format!(
            "SELECT h.{IN_SID}, array_to_string(array_agg(g.golden_id ORDER BY g.golden_id), ', ') AS c \
             FROM {held} h JOIN {live} g ON {on} WHERE {same_rule} GROUP BY h.{IN_SID}",
        ));
    }
    let candidates = if candidates.is_empty() {
        format!("SELECT {IN_SID}, CAST(NULL AS VARCHAR) AS c FROM {held} WHERE FALSE")
    } else {
        candidates.join(" UNION ALL ")
    };
    let same_invalid = std::iter::once(format!("(o.{REASON} IS NOT DISTINCT FROM v.{REASON})"))
        .chain(
            mapped
                .iter()
                .map(|f| format!("(o.{0} IS NOT DISTINCT FROM v.{0})", q(f))),
        )
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "SELECT h.{IN_SID}, {hv}h.{IN_AT}, {amb} AS {KIND},
                'matches ' || CAST(h.__bf_n AS VARCHAR) || ' golden records by ' || h.__bf_rule || '; attaching it to one of them would be a guess' AS {REASON},
                h.__bf_rule AS {RULE}, c.c AS {CANDIDATES}, COALESCE(o.{SINCE}, {now}) AS {SINCE},
                CAST(NULL AS VARCHAR) AS {DECIDED}
         FROM {held} h
         LEFT JOIN ({candidates}) c ON c.{IN_SID} = h.{IN_SID}
         LEFT JOIN {old} o ON o.{IN_SID} = h.{IN_SID}
         UNION ALL
         SELECT v.{IN_SID}, {vv}v.{IN_AT}, {inv} AS {KIND}, v.{REASON}, CAST(NULL AS VARCHAR),
                CAST(NULL AS VARCHAR), COALESCE(o.{SINCE}, {now}),
                CASE WHEN o.{DECIDED} = {drop} AND o.{KIND} = {inv} AND {same_invalid} THEN {drop} END
         FROM {invalid} v LEFT JOIN {old} o ON o.{IN_SID} = v.{IN_SID}
         UNION ALL
         SELECT o.* FROM (
             SELECT {IN_SID} FROM {inc} UNION ALL SELECT {IN_SID} FROM {invalid}
             UNION ALL SELECT {IN_SID} FROM {gone}
         ) t RIGHT ANTI JOIN {old} o ON o.{IN_SID} = t.{IN_SID}",
        hv = values("h"),
        vv = values("v"),
        amb = lit(AMBIGUOUS),
        inv = lit(INVALID),
        drop = lit(DROP),
        old = old_table(source),
        inc = incoming(source),
        invalid = invalid_table(source),
        gone = gone(source),
    );
    let df = cycle.sql("quarantine", &sql).await?;
    let file = cycle
        .materialize(
            "quarantine",
            df,
            &format!("quarantine-{source}.parquet"),
            &next_table(source),
            Some(schema.clone()),
        )
        .await?;
    let differs = std::iter::once(format!("(n.{IN_SID} IS NULL) OR (s.{IN_SID} IS NULL)"))
        .chain(
            [KIND, REASON, CANDIDATES, DECIDED]
                .iter()
                .map(|c| format!("(n.{c} IS DISTINCT FROM s.{c})")),
        )
        .chain(
            mapped
                .iter()
                .map(|f| format!("(n.{0} IS DISTINCT FROM s.{0})", q(f))),
        )
        .collect::<Vec<_>>()
        .join(" OR ");
    let changed = cycle
        .count(
            "quarantine",
            &format!(
                "SELECT COUNT(*) FROM {next} n FULL JOIN {stored} s ON n.{IN_SID} = s.{IN_SID} WHERE {differs}",
                next = next_table(source),
                stored = stored_table(source),
            ),
        )
        .await?;
    let added = cycle
        .count(
            "quarantine",
            &format!(
                "SELECT COUNT(*) FROM {next} n LEFT ANTI JOIN {stored} s ON n.{IN_SID} = s.{IN_SID}",
                next = next_table(source),
                stored = stored_table(source),
            ),
        )
        .await?;
    Ok(Next {
        file: (file.rows > 0).then_some(file),
        changed,
        added,
    })
}

/// Settle one record in quarantine (`backflow hub resolve`): check the decision against the
/// committed state, then run one cycle of the entity that reads no source and applies it.
pub async fn resolve(
    project: &crate::project::Project,
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    mut resolution: Resolution,
) -> Result<super::HubReport, HubError> {
    let entity = &project.config.entities[name];
    let refuse = |message: String| HubError::Settings {
        entity: name.to_string(),
        message,
    };
    let Some(config) = entity.sources.get(&resolution.source) else {
        return Err(refuse(format!(
            "it has no source \"{}\"{}; its sources are: {}",
            resolution.source,
            crate::names::suggest(
                &resolution.source,
                entity.sources.keys().map(String::as_str)
            ),
            entity
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let entries = super::show::quarantine(project, ctx, name, true).await?;
    let ids: Vec<&str> = entries
        .iter()
        .filter(|e| e.source == resolution.source)
        .map(|e| e.source_id.as_str())
        .collect();
    let found = match pick_id(&ids, &resolution.id) {
        Ok(id) => id,
        Err(None) => {
            return Err(refuse(format!(
                "record \"{}\" of source \"{}\" is not in quarantine; `backflow hub quarantine {name}` lists the records that are",
                resolution.id, resolution.source
            )));
        }
        Err(Some(several)) => {
            return Err(refuse(format!(
                "records {several} of source \"{}\" are all \"{}\" as numbers: name one exactly",
                resolution.source, resolution.id
            )));
        }
    };
    let Some(entry) = entries
        .iter()
        .find(|e| e.source == resolution.source && e.source_id == found)
    else {
        return Err(refuse(format!(
            "record \"{found}\" vanished from quarantine"
        )));
    };
    // The id as the state writes it, so the cycle finds it.
    resolution.id = entry.source_id.clone();
    let what = format!("{}:{}", entry.source, entry.source_id);
    match resolution.decision {
        Decision::Attach(_) | Decision::New if entry.kind == INVALID => {
            return Err(refuse(format!(
                "{what} is in quarantine because it is invalid ({}); its values cannot be \
                 taken as they are. Correct the record in the source (it leaves quarantine when \
                 it is read again valid), or set it aside with --drop",
                entry.reason
            )));
        }
        Decision::New if !config.role.contributes() => {
            return Err(refuse(format!(
                "source \"{}\" only receives records: its records cannot start golden records; \
                 use --attach GOLDEN_ID or --drop",
                entry.source
            )));
        }
        Decision::Drop if entry.decision.as_deref() == Some(DROP) => {
            return Err(refuse(format!("{what} is already dropped")));
        }
        Decision::New => {
            // Its own golden record, kept apart from those it matched (a merge would
            // otherwise fold it into one of them in the same cycle).
            resolution.apart_from = entry.candidates.clone();
        }
        Decision::Attach(g) => {
            let lookup = super::show::Lookup::Golden(g);
            let target = match super::show::golden_record(project, ctx, name, &lookup).await {
                Ok(t) => t,
                Err(HubError::Settings { .. }) => {
                    let matched = entry
                        .candidates
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(refuse(format!(
                        "there is no golden record {g}{}",
                        if matched.is_empty() {
                            String::new()
                        } else {
                            format!("; {what} matched {matched}")
                        }
                    )));
                }
                Err(e) => return Err(e),
            };
            if let Some(w) = target.merged_into {
                return Err(refuse(format!(
                    "golden record {g} was merged into golden record {w}: attach {what} to {w}"
                )));
            }
            if let Some(at) = target.retired_at {
                return Err(refuse(format!(
                    "golden record {g} was retired at {at}: attach {what} to a live golden record, or use --new"
                )));
            }
        }
        _ => {}
    }
    Ok(super::run(
        project,
        ctx,
        name,
        super::HubOptions {
            only_ids: Some(std::collections::BTreeMap::new()),
            resolution: Some(resolution),
            trigger: Some("resolve".into()),
            ..Default::default()
        },
    )
    .await)
}

/// Up to `limit` records this cycle put in the source's quarantine that were not there
/// before: their ids (as text) and why (with the candidates).
pub async fn added(
    cycle: &Cycle<'_>,
    source: &str,
    limit: usize,
) -> Result<Vec<(String, String)>, HubError> {
    let next = next_table(source);
    if !cycle.ctx.table_exist(next.as_str()).unwrap_or(false) {
        return Ok(Vec::new());
    }
    let batches = cycle
        .sql(
            "quarantine",
            &format!(
                "SELECT CAST(n.{IN_SID} AS VARCHAR) AS id, \
                   n.{REASON} || COALESCE(' (golden records ' || n.{CANDIDATES} || ')', '') AS why \
                 FROM {next} n LEFT ANTI JOIN {stored} s ON n.{IN_SID} = s.{IN_SID} \
                 ORDER BY id LIMIT {limit}",
                stored = stored_table(source),
            ),
        )
        .await?
        .collect()
        .await
        .map_err(cycle.engine("quarantine"))?;
    let mut out = Vec::new();
    for b in &batches {
        let ids = arrow::compute::cast(b.column(0), &DataType::Utf8)
            .map_err(|e| cycle.engine("quarantine")(e.into()))?;
        let why = arrow::compute::cast(b.column(1), &DataType::Utf8)
            .map_err(|e| cycle.engine("quarantine")(e.into()))?;
        let ids = arrow::array::AsArray::as_string::<i32>(&ids);
        let why = arrow::array::AsArray::as_string::<i32>(&why);
        for r in 0..b.num_rows() {
            out.push((ids.value(r).to_string(), why.value(r).to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::pick_id;

    #[test]
    fn ids_are_picked_exactly_first_then_as_numbers() {
        let ids = ["007", "7", "x", "08"];
        assert_eq!(pick_id(&ids, "7"), Ok("7"));
        assert_eq!(pick_id(&ids, "007"), Ok("007"));
        assert_eq!(pick_id(&ids, "8"), Ok("08"));
        assert_eq!(pick_id(&ids, "9"), Err(None));
        assert_eq!(pick_id(&ids, "y"), Err(None));
        assert_eq!(
            pick_id(&["007", "7"], "0007"),
            Err(Some("\"007\", \"7\"".into()))
        );
    }
}
