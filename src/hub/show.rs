//! Looking into the hub from the command line: a golden record with where each value came
//! from, its ID mappings and its history (`backflow hub show`), and the newest transaction log
//! entries (`backflow hub log`).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::prelude::{SessionContext, col, lit};
use serde::Serialize;

use super::HubError;
use super::state::{self, HubManifest, StateFile, contributions_schema, log_schema};
use crate::project::Project;

/// One field of a golden record.
#[derive(Debug, Clone, Serialize)]
pub struct FieldValue {
    pub field: String,
    pub value: Option<String>,
    /// The source the value came from.
    pub source: Option<String>,
}

/// One source record linked to a golden record.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub source: String,
    pub source_id: String,
    /// How it was linked: `id`, `new`, `match: …`, `merge`.
    pub linked_by: Option<String>,
    /// The hub version it was first read in.
    pub first_version: Option<i64>,
}

/// One row of the transaction log.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub version: i64,
    pub at: String,
    pub golden_id: i64,
    pub op: String,
    pub field: Option<String>,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub source: Option<String>,
    pub source_id: Option<String>,
    pub detail: Option<String>,
    pub run_id: String,
}

/// A golden record, as `backflow hub show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct GoldenRecord {
    pub entity: String,
    pub golden_id: i64,
    /// Set when the record was merged into another and retired.
    pub merged_into: Option<i64>,
    /// Set when the record was retired because its last source record was deleted.
    pub retired_at: Option<String>,
    pub retired_reason: Option<String>,
    /// Golden records merged into this one (and into those, …).
    pub absorbed: Vec<i64>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub fields: Vec<FieldValue>,
    pub links: Vec<Link>,
    /// This record's log and that of the records merged into it, oldest first.
    pub history: Vec<LogEntry>,
}

/// What to show: a golden id, or the golden record a source record is linked to.
#[derive(Debug, Clone)]
pub enum Lookup {
    Golden(i64),
    SourceRecord { source: String, id: String },
}

fn engine(entity: &str) -> impl Fn(datafusion::error::DataFusionError) -> HubError + '_ {
    move |source| HubError::Engine {
        entity: entity.to_string(),
        stage: "show",
        source,
    }
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let c = batch.column_by_name(name)?;
    if c.is_null(row) {
        return None;
    }
    // The one value, not the whole column (this is called for every row).
    let c = arrow::compute::cast(&c.slice(row, 1), &DataType::Utf8).ok()?;
    Some(c.as_string::<i32>().value(0).to_string())
}

fn int(batch: &RecordBatch, name: &str, row: usize) -> Option<i64> {
    text(batch, name, row).and_then(|t| t.parse().ok())
}

/// Every source's contributions of `manifest` as one relation (source, source id as text,
/// golden id, how it was linked, first version).
async fn links(
    project: &Project,
    ctx: &SessionContext,
    entity_name: &str,
    manifest: &HubManifest,
) -> Result<datafusion::prelude::DataFrame, HubError> {
    let entity = &project.config.entities[entity_name];
    let mut all: Option<datafusion::prelude::DataFrame> = None;
    for (source, s) in &manifest.sources {
        if !entity.sources.contains_key(source) {
            continue;
        }
        let id_type: DataType = s.id_type.parse().unwrap_or(DataType::Utf8);
        let schema = contributions_schema(entity, source, &id_type);
        let df = state::read_aligned(&project.state, ctx, &[&s.contributions], &schema)
            .await
            .and_then(|df| {
                df.select(vec![
                    lit(source.as_str()).alias("source"),
                    datafusion::logical_expr::cast(col(state::SID), DataType::Utf8)
                        .alias("source_id"),
                    col(state::LINK).alias(state::GOLDEN_ID),
                    col(state::LINKED_BY).alias("linked_by"),
                    col(state::FIRST_SEQ).alias("first_version"),
                ])
            })
            .map_err(engine(entity_name))?;
        all = Some(match all {
            None => df,
            Some(a) => a.union(df).map_err(engine(entity_name))?,
        });
    }
    match all {
        Some(a) => Ok(a),
        None => Err(HubError::Settings {
            entity: entity_name.to_string(),
            message: "it has no sources in its state".into(),
        }),
    }
}

/// The golden record `lookup` names, with its links and history.
pub async fn golden_record(
    project: &Project,
    ctx: &SessionContext,
    entity_name: &str,
    lookup: &Lookup,
) -> Result<GoldenRecord, HubError> {
    let err = engine(entity_name);
    let not_found = |what: String| HubError::Settings {
        entity: entity_name.to_string(),
        message: what,
    };
    let entity = &project.config.entities[entity_name];
    let Some(manifest) = super::latest(project, entity_name).await? else {
        return Err(not_found(
            "no golden records yet: run it first (`backflow run`)".into(),
        ));
    };
    let links_df = links(project, ctx, entity_name, &manifest).await?;
    let golden_id = match lookup {
        Lookup::Golden(id) => *id,
        Lookup::SourceRecord { source, id } => {
            let found = links_df
                .clone()
                .filter(
                    col("source")
                        .eq(lit(source.as_str()))
                        .and(col("source_id").eq(lit(id.as_str()))),
                )
                .map_err(&err)?
                .collect()
                .await
                .map_err(&err)?;
            let g = found
                .iter()
                .find(|b| b.num_rows() > 0)
                .and_then(|b| int(b, state::GOLDEN_ID, 0));
            match g {
                Some(g) => g,
                None => {
                    return Err(not_found(format!(
                        "source \"{source}\" has no record \"{id}\" linked to a golden record"
                    )));
                }
            }
        }
    };
    let golden = super::golden_table(project, ctx, entity_name, Some(&manifest))
        .await
        .map_err(&err)?;
    let rows = golden
        .clone()
        .filter(col(state::GOLDEN_ID).eq(lit(golden_id)))
        .map_err(&err)?
        .collect()
        .await
        .map_err(&err)?;
    let Some(batch) = rows.into_iter().find(|b| b.num_rows() > 0) else {
        return Err(not_found(format!("no golden record {golden_id}")));
    };
    let fields = entity
        .fields
        .keys()
        .map(|f| FieldValue {
            field: f.clone(),
            value: text(&batch, f, 0),
            source: text(&batch, &state::src_col(f), 0),
        })
        .collect();

    // The records merged into this one, transitively.
    let mut absorbed: Vec<i64> = Vec::new();
    let mut frontier = vec![golden_id];
    while !frontier.is_empty() {
        let list: Vec<datafusion::prelude::Expr> = frontier.iter().map(|g| lit(*g)).collect();
        let found = golden
            .clone()
            .filter(col(state::MERGED_INTO).in_list(list, false))
            .and_then(|d| d.select(vec![col(state::GOLDEN_ID)]))
            .map_err(&err)?
            .collect()
            .await
            .map_err(&err)?;
        frontier = found
            .iter()
            .flat_map(|b| (0..b.num_rows()).filter_map(|r| int(b, state::GOLDEN_ID, r)))
            .filter(|g| !absorbed.contains(g) && *g != golden_id)
            .collect();
        absorbed.extend(frontier.iter().copied());
    }

    let link_rows = links_df
        .filter(col(state::GOLDEN_ID).eq(lit(golden_id)))
        .and_then(|d| {
            d.sort(vec![
                col("source").sort(true, true),
                col("source_id").sort(true, true),
            ])
        })
        .map_err(&err)?
        .collect()
        .await
        .map_err(&err)?;
    let links: Vec<Link> = link_rows
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| Link {
                source: text(b, "source", r).unwrap_or_default(),
                source_id: text(b, "source_id", r).unwrap_or_default(),
                linked_by: text(b, "linked_by", r),
                first_version: int(b, "first_version", r),
            })
        })
        .collect();

    let mut ids = vec![golden_id];
    ids.extend(absorbed.iter().copied());
    let history = log_entries(project, ctx, entity_name, &manifest, Some(&ids), None).await?;
    Ok(GoldenRecord {
        entity: entity_name.to_string(),
        golden_id,
        merged_into: int(&batch, state::MERGED_INTO, 0),
        retired_at: text(&batch, state::RETIRED_AT, 0),
        retired_reason: text(&batch, state::RETIRED_REASON, 0),
        absorbed,
        created_at: text(&batch, state::CREATED_AT, 0),
        updated_at: text(&batch, state::UPDATED_AT, 0),
        fields,
        links,
        history,
    })
}

/// Log entries of the golden records `ids` (all when `None`), oldest first; the newest
/// `limit` when given.
pub async fn log_entries(
    project: &Project,
    ctx: &SessionContext,
    entity_name: &str,
    manifest: &HubManifest,
    ids: Option<&[i64]>,
    limit: Option<usize>,
) -> Result<Vec<LogEntry>, HubError> {
    let err = engine(entity_name);
    let files: Vec<&StateFile> = manifest.log.iter().collect();
    let mut df = state::read_aligned(&project.state, ctx, &files, &log_schema())
        .await
        .map_err(&err)?;
    if let Some(ids) = ids {
        let list = ids.iter().map(|g| lit(*g)).collect();
        df = df
            .filter(col(state::GOLDEN_ID).in_list(list, false))
            .map_err(&err)?;
    }
    // Newest first for the limit, then oldest first for reading.
    let order = |asc: bool| {
        vec![
            col("version").sort(asc, false),
            col("op").sort(asc, false),
            col("golden_id").sort(asc, false),
            col("field").sort(asc, false),
            col("source").sort(asc, false),
            col("source_id").sort(asc, false),
        ]
    };
    df = df.sort(order(false)).map_err(&err)?;
    if let Some(n) = limit {
        df = df.limit(0, Some(n)).map_err(&err)?;
    }
    let batches = df
        .sort(order(true))
        .map_err(&err)?
        .collect()
        .await
        .map_err(&err)?;
    Ok(batches
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |r| log_entry(b, r)))
        .collect())
}

/// Row `r` of a batch of log rows.
pub(super) fn log_entry(b: &RecordBatch, r: usize) -> LogEntry {
    LogEntry {
        version: int(b, "version", r).unwrap_or(0),
        at: text(b, "at", r).unwrap_or_default(),
        golden_id: int(b, "golden_id", r).unwrap_or(0),
        op: text(b, "op", r).unwrap_or_default(),
        field: text(b, "field", r),
        old_value: text(b, "old_value", r),
        new_value: text(b, "new_value", r),
        source: text(b, "source", r),
        source_id: text(b, "source_id", r),
        detail: text(b, "detail", r),
        run_id: text(b, "run_id", r).unwrap_or_default(),
    }
}

/// The newest `limit` log entries of an entity.
pub async fn recent_log(
    project: &Project,
    ctx: &SessionContext,
    entity_name: &str,
    limit: usize,
) -> Result<Vec<LogEntry>, HubError> {
    match super::latest(project, entity_name).await? {
        Some(m) => log_entries(project, ctx, entity_name, &m, None, Some(limit)).await,
        None => Ok(Vec::new()),
    }
}

/// A record in quarantine, as `backflow hub quarantine` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub source: String,
    pub source_id: String,
    /// `ambiguous` or `invalid`.
    pub kind: String,
    pub reason: String,
    /// The match rule that found several golden records (ambiguous records).
    pub rule: Option<String>,
    /// The live golden records it matched (ambiguous records), as of when it was last tried.
    pub candidates: Vec<i64>,
    /// When it was first put in quarantine (RFC 3339, UTC).
    pub since: Option<String>,
    /// `drop` when `hub resolve --drop` set this version aside.
    pub decision: Option<String>,
    /// The values read, in the entity's fields.
    pub values: serde_json::Value,
}

/// The records in quarantine of an entity, by source and id; dropped ones only with `all`.
pub async fn quarantine(
    project: &Project,
    ctx: &SessionContext,
    entity_name: &str,
    all: bool,
) -> Result<Vec<QuarantineEntry>, HubError> {
    use super::quarantine as qu;
    let err = engine(entity_name);
    let entity = &project.config.entities[entity_name];
    let Some(manifest) = super::latest(project, entity_name).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (source, s) in &manifest.sources {
        let (Some(file), true) = (&s.quarantine, entity.sources.contains_key(source)) else {
            continue;
        };
        let id_type: DataType = s.id_type.parse().unwrap_or(DataType::Utf8);
        let schema = qu::schema(entity, source, &id_type);
        let mut df = state::read_aligned(&project.state, ctx, &[file], &schema)
            .await
            .map_err(&err)?;
        if !all {
            df = df.filter(col(qu::DECIDED).is_null()).map_err(&err)?;
        }
        let batches = df
            .sort(vec![col(read_sid()).sort(true, true)])
            .map_err(&err)?
            .collect()
            .await
            .map_err(&err)?;
        let mapped = state::mapped_fields(entity, source);
        for b in &batches {
            let values = b
                .project(
                    &mapped
                        .iter()
                        .filter_map(|f| b.schema().index_of(f).ok())
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| err(e.into()))?;
            for r in 0..b.num_rows() {
                out.push(QuarantineEntry {
                    source: source.clone(),
                    source_id: text(b, read_sid(), r).unwrap_or_default(),
                    kind: text(b, qu::KIND, r).unwrap_or_default(),
                    reason: text(b, qu::REASON, r).unwrap_or_default(),
                    rule: text(b, qu::RULE, r),
                    candidates: text(b, qu::CANDIDATES, r)
                        .map(|c| c.split(',').filter_map(|g| g.trim().parse().ok()).collect())
                        .unwrap_or_default(),
                    since: text(b, qu::SINCE, r),
                    decision: text(b, qu::DECIDED, r),
                    values: serde_json::from_str(&crate::values::row_json(&values, r))
                        .unwrap_or(serde_json::Value::Null),
                });
            }
        }
    }
    Ok(out)
}

fn read_sid() -> &'static str {
    super::read::IN_SID
}
