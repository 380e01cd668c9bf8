//! The read stage: each source's records past its position, in watermark order, at most
//! `batch_size` per cycle, mapped into the entity's fields.
//!
//! A source with a watermark is read in `(watermark, id)` order and its position is the last
//! `(watermark, id)` read, so records tied at a watermark value are never skipped or read
//! twice, however the batch boundary falls. A source without one is walked in id order; when a
//! walk reaches the end, the next run starts a new one (every record is read again, and only
//! those whose values changed count).

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, cast, col, lit, try_cast, when};
use datafusion::prelude::{DataFrame, SessionContext, ident};

use super::HubError;
use super::state::{Position, StoredValue};
use crate::config::entity::EntitySourceConfig;

/// What the read stage needs to know of its cycle.
pub struct ReadContext<'a> {
    pub name: &'a str,
    pub entity: &'a crate::config::entity::EntityConfig,
    /// The cycle's clock (µs since the epoch).
    pub now_us: i64,
}
use crate::history::{RecordKind, SampleRecord};

/// Columns of a source's incoming records (besides the entity fields it maps).
pub const IN_SID: &str = "__bf_sid";
pub const IN_WM: &str = "__bf_wm";
pub const IN_AT: &str = "__bf_change_at";
/// The fields of a record that could not be read as their type (empty: none).
pub const IN_BAD: &str = "__bf_bad";
/// Whether the source marks the record deleted (its `deleted` condition).
pub const IN_DELETED: &str = "__bf_deleted";

const VALID_SQL: &str = include_str!("../../sql/hub/valid.sql");
const INVALID_SQL: &str = include_str!("../../sql/hub/invalid.sql");

/// What a cycle read from one source.
#[derive(Debug, Clone)]
pub struct SourceRead {
    /// The position after this read, committed with the cycle.
    pub position: Option<Position>,
    pub id_type: DataType,
    /// The table of this source's valid incoming records (registered in the session).
    pub table: String,
}

/// The relation a source reads from, as a table of `ctx`.
pub async fn relation(
    ctx: &SessionContext,
    entity: &str,
    source: &str,
    config: &EntitySourceConfig,
) -> Result<DataFrame, HubError> {
    ctx.table(config.from.as_str())
        .await
        .map_err(|e| HubError::Source {
            entity: entity.to_string(),
            source_name: source.to_string(),
            message: format!("cannot read \"{}\": {e}", config.from),
        })
}

/// Which records a read takes.
#[derive(Debug, Clone, Copy)]
pub enum Window<'a> {
    /// At most `batch_size`, in order, after this position (from the start when None).
    After(Option<&'a Position>),
    /// The records of `After`, in no order, up to one more than `batch_size`: a read that
    /// returns no more than `batch_size` is the whole window and needs no sort. (A sort with
    /// a limit is a top-k heap in DataFusion, one owned row per record: for a limit of
    /// millions, far slower than reading unsorted. Only a window larger than a batch is read
    /// again as `After`.)
    Whole(Option<&'a Position>),
    /// Every record with exactly this position's watermark and id (a batch that ended
    /// inside a group of such records takes all of them).
    At(&'a Position),
    /// Every record with one of these ids (as text; an id that cannot be of the id column's
    /// type matches nothing), whatever the position.
    Ids(&'a [String]),
}

/// The mapped, filtered, ordered and limited read of one source (not yet executed).
/// `stored_id_type` is the type the source's ids had in the state, when it has one.
pub fn plan(
    cycle: &ReadContext,
    ctx_relation: DataFrame,
    name: &str,
    source: &EntitySourceConfig,
    window: Window<'_>,
    stored_id_type: Option<&DataType>,
) -> Result<(DataFrame, DataType), HubError> {
    let entity = cycle.entity;
    let problem = |message: String| HubError::Source {
        entity: cycle.name.to_string(),
        source_name: name.to_string(),
        message,
    };
    // Ids keep the type they had when it is text (a file whose last text id left is read as
    // numbers now; as text they are the same ids), or when the source has no rows to tell.
    let current = ctx_relation
        .schema()
        .field_with_unqualified_name(&source.id)
        .ok()
        .map(|f| f.data_type().clone());
    let ctx_relation = match (current, stored_id_type) {
        (Some(now), Some(stored))
            if now != *stored
                && (now == DataType::Null
                    || matches!(
                        stored,
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )) =>
        {
            ctx_relation
                .with_column(&source.id, cast(ident(&source.id), stored.clone()))
                .map_err(|e| problem(e.to_string()))?
        }
        _ => ctx_relation,
    };
    let schema = ctx_relation.schema().clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let column_type = |c: &str| {
        schema
            .field_with_unqualified_name(c)
            .ok()
            .map(|f| f.data_type().clone())
    };
    let mut problems = Vec::new();
    let id_type = column_type(&source.id);
    if id_type.is_none() {
        problems.push(format!(
            "id column \"{}\" is not a column of \"{}\"{} (its columns: {})",
            source.id,
            source.from,
            crate::names::suggest(&source.id, columns.iter().map(String::as_str)),
            columns.join(", ")
        ));
    }
    let wm_type = source.watermark.as_ref().and_then(|w| column_type(w));
    if let (Some(w), None) = (&source.watermark, &wm_type) {
        problems.push(format!(
            "watermark column \"{w}\" is not a column of \"{}\" (its columns: {})",
            source.from,
            columns.join(", ")
        ));
    }
    let types = entity.field_types();
    let mut exprs: Vec<Expr> = vec![ident(&source.id).alias(IN_SID)];
    // Fields whose value cannot be read as the field's type (`'n/a'` for a double): the
    // record is invalid, named with the fields.
    let mut bad: Vec<Expr> = Vec::new();
    exprs.push(match &source.watermark {
        Some(w) => ident(w).alias(IN_WM),
        None => lit(ScalarValue::Null).alias(IN_WM),
    });
    for (field, ty) in &types {
        let Some(sql) = source.fields.get(field) else {
            continue;
        };
        let Some(ty) = ty else { continue };
        match ctx_relation.parse_sql_expr(sql) {
            Ok(e) => {
                let typed = try_cast(e.clone(), ty.clone());
                bad.push(
                    when(
                        e.is_not_null().and(typed.clone().is_null()),
                        lit(field.as_str()),
                    )
                    .end()
                    .map_err(|e| problem(e.to_string()))?,
                );
                exprs.push(typed.alias(field));
            }
            Err(e) => problems.push(format!(
                "field \"{field}\" = `{sql}` is not a valid SQL expression over \"{}\": {e}",
                source.from
            )),
        }
    }
    // When a value changed: the record's watermark when it is a point in time, else now.
    let now = lit(ScalarValue::Int64(Some(cycle.now_us)));
    let change_at = match &wm_type {
        Some(DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64) => {
            let w = ident(source.watermark.as_deref().unwrap_or_default());
            let us = cast(
                cast(
                    w,
                    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                ),
                DataType::Int64,
            );
            datafusion::functions::expr_fn::coalesce(vec![us, now])
        }
        _ => now,
    };
    exprs.push(change_at.alias(IN_AT));
    exprs.push(if bad.is_empty() {
        lit("").alias(IN_BAD)
    } else {
        datafusion::functions::string::expr_fn::concat_ws(lit(", "), bad).alias(IN_BAD)
    });
    exprs.push(match &source.deleted {
        Some(sql) => match ctx_relation.parse_sql_expr(sql).and_then(|e| {
            use datafusion::logical_expr::ExprSchemable as _;
            let t = e.get_type(ctx_relation.schema())?;
            Ok((e, t))
        }) {
            Ok((e, DataType::Boolean)) => {
                datafusion::functions::expr_fn::coalesce(vec![e, lit(false)]).alias(IN_DELETED)
            }
            // A column with no values at all (every cell empty, or no rows): none is marked.
            Ok((_, DataType::Null)) => lit(false).alias(IN_DELETED),
            Ok((_, t)) => {
                problems.push(format!(
                    "deleted = `{sql}` is of type {t}, not a condition: write one that is true \
                     for a deleted record, such as `status = 'archived'` or `deleted_at IS NOT NULL`"
                ));
                lit(false).alias(IN_DELETED)
            }
            Err(e) => {
                problems.push(format!(
                    "deleted = `{sql}` is not a valid SQL condition over \"{}\": {e}",
                    source.from
                ));
                lit(false).alias(IN_DELETED)
            }
        },
        None => lit(false).alias(IN_DELETED),
    });
    if !problems.is_empty() {
        return Err(problem(problems.join("; ")));
    }
    let id_type = id_type.unwrap_or(DataType::Null);
    let df_err = |e: datafusion::error::DataFusionError| problem(e.to_string());
    let mut df = ctx_relation;
    match window {
        Window::After(None) | Window::Whole(None) => {}
        // A watermark column with no values (a file of a header only): only records with a
        // NULL watermark, read from the start, could be there; none is past the position.
        Window::After(Some(_)) | Window::Whole(Some(_)) if wm_type == Some(DataType::Null) => {
            df = df.filter(lit(false)).map_err(df_err)?;
        }
        Window::After(Some(pos)) | Window::Whole(Some(pos)) => {
            let filter = past(pos, source, &id_type, wm_type.as_ref()).map_err(&problem)?;
            df = df.filter(filter).map_err(df_err)?;
        }
        Window::Ids(ids) => {
            let values = ids
                .iter()
                .map(|i| try_cast(lit(i.as_str()), id_type.clone()))
                .collect();
            df = df
                .filter(ident(&source.id).in_list(values, false))
                .map_err(df_err)?;
            let mut order = Vec::new();
            if let Some(w) = &source.watermark {
                order.push(ident(w).sort(true, true));
            }
            order.push(ident(&source.id).sort(true, true));
            let df = df
                .sort(order)
                .and_then(|df| df.select(exprs))
                .map_err(df_err)?;
            return Ok((df, id_type));
        }
        Window::At(pos) => {
            let filter = at(pos, source, &id_type, wm_type.as_ref()).map_err(&problem)?;
            let df = df
                .filter(filter)
                .and_then(|df| df.select(exprs))
                .map_err(df_err)?;
            return Ok((df, id_type));
        }
    }
    if let Window::Whole(_) = window {
        let df = df
            .limit(0, Some(entity.batch_size().saturating_add(1)))
            .and_then(|df| df.select(exprs))
            .map_err(df_err)?;
        return Ok((df, id_type));
    }
    let mut order = Vec::new();
    if let Some(w) = &source.watermark {
        order.push(ident(w).sort(true, true));
    }
    order.push(ident(&source.id).sort(true, true));
    let df = df
        .sort(order)
        .and_then(|df| df.limit(0, Some(entity.batch_size())))
        .and_then(|df| df.select(exprs))
        .map_err(|e| problem(e.to_string()))?;
    Ok((df, id_type))
}

/// The filter for the records to read after `pos`, in `(watermark NULLS FIRST, id NULLS
/// FIRST)` order: after the last record while a batch was cut short, from the last watermark
/// on (ties read again) once the source was read to its end. Records with a NULL watermark are
/// read only from the start (the initial load, a full resync).
fn past(
    pos: &Position,
    source: &EntitySourceConfig,
    id_type: &DataType,
    wm_type: Option<&DataType>,
) -> Result<Expr, String> {
    // After the last id within its watermark: NULL ids come first.
    let id = ident(&source.id);
    let id_after = match &pos.id {
        Some(last) => id.gt(lit(last.to_scalar(id_type)?)),
        None => id.is_not_null(),
    };
    let Some((w, wm)) = watermark_of(pos, source, wm_type)? else {
        return Ok(id_after);
    };
    Ok(match (wm, pos.drained) {
        (None, false) => w.clone().is_not_null().or(w.is_null().and(id_after)),
        (None, true) => w.is_not_null(),
        (Some(v), false) => w.clone().gt(v.clone()).or(w.eq(v).and(id_after)),
        (Some(v), true) => w.gt_eq(v),
    })
}

/// The source's watermark column and the position's value of it (None: NULL), when the
/// source has a watermark.
fn watermark_of(
    pos: &Position,
    source: &EntitySourceConfig,
    wm_type: Option<&DataType>,
) -> Result<Option<(Expr, Option<Expr>)>, String> {
    let (Some(w), Some(wm_type)) = (&source.watermark, wm_type) else {
        return Ok(None);
    };
    let value = match &pos.watermark {
        Some(v) => Some(lit(v.to_scalar(wm_type)?)),
        None => None,
    };
    Ok(Some((ident(w), value)))
}

/// The filter for the records at exactly `pos`.
fn at(
    pos: &Position,
    source: &EntitySourceConfig,
    id_type: &DataType,
    wm_type: Option<&DataType>,
) -> Result<Expr, String> {
    let id = ident(&source.id);
    let same_id = match &pos.id {
        Some(v) => id.eq(lit(v.to_scalar(id_type)?)),
        None => id.is_null(),
    };
    Ok(match watermark_of(pos, source, wm_type)? {
        None => same_id,
        Some((w, None)) => w.is_null().and(same_id),
        Some((w, Some(v))) => w.eq(v).and(same_id),
    })
}

/// The position after the last record of the read in `rel` (None when it read nothing: the
/// position stays).
pub async fn last_position(
    ctx: &SessionContext,
    table: &str,
    has_watermark: bool,
    drained: bool,
) -> datafusion::error::Result<Option<Position>> {
    let mut order = Vec::new();
    if has_watermark {
        order.push(col(IN_WM).sort(false, false));
    }
    order.push(col(IN_SID).sort(false, false));
    let batches = ctx
        .table(table)
        .await?
        .sort(order)?
        .limit(0, Some(1))?
        .select(vec![col(IN_WM), col(IN_SID)])?
        .collect()
        .await?;
    let Some(batch) = batches.into_iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let value = |i: usize| ScalarValue::try_from_array(batch.column(i), 0);
    let wm = value(0)?;
    let id = value(1)?;
    Ok(Some(Position {
        watermark: (has_watermark && !wm.is_null()).then(|| StoredValue::from_scalar(&wm)),
        id: (!id.is_null()).then(|| StoredValue::from_scalar(&id)),
        drained,
    }))
}

/// The invalid records of the read registered as `raw` (see sql/hub/invalid.sql).
pub fn invalid_sql(raw: &str) -> String {
    INVALID_SQL
        .replace("{input}", raw)
        .replace("{dup}", &dup_table(raw))
}

/// The table of the ids read more than once in the read registered as `raw` (see
/// `sql/hub/valid.sql`), registered by the caller from [`dup_sql`].
pub fn dup_table(raw: &str) -> String {
    format!("{raw}_dup")
}

/// The ids read more than once in the read registered as `raw`.
pub fn dup_sql(raw: &str) -> String {
    format!(
        "SELECT __bf_sid AS __bf_dup FROM {raw} \
         WHERE __bf_sid IS NOT NULL GROUP BY __bf_sid HAVING COUNT(*) > 1"
    )
}

/// The valid records of the read registered as `raw` (an id, and one record per id — the
/// latest by watermark), and the number of invalid ones, sampled into `samples`. The ids read
/// more than once must be registered as [`dup_table`] first.
pub async fn validate(
    ctx: &SessionContext,
    raw: &str,
    source: &str,
    samples: &mut Vec<SampleRecord>,
) -> datafusion::error::Result<(DataFrame, u64)> {
    let valid = ctx
        .sql(
            &VALID_SQL
                .replace("{input}", raw)
                .replace("{dup}", &dup_table(raw)),
        )
        .await?;
    let invalid_sql = invalid_sql(raw);
    let count = ctx
        .sql(&format!("SELECT COUNT(*) AS n FROM ({invalid_sql})"))
        .await?
        .collect()
        .await?
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0) as u64
        })
        .unwrap_or(0);
    let room = crate::history::SAMPLE_LIMIT.saturating_sub(samples.len());
    if count == 0 || room == 0 {
        return Ok((valid, count));
    }
    let sample = ctx
        .sql(&format!("{invalid_sql} LIMIT {room}"))
        .await?
        .collect()
        .await?;
    for batch in sample {
        let ids = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let reasons = arrow::compute::cast(batch.column(1), &DataType::Utf8)?;
        let reasons = reasons.as_string::<i32>();
        let record = batch.project(&(2..batch.num_columns()).collect::<Vec<_>>())?;
        for r in 0..batch.num_rows() {
            samples.push(SampleRecord {
                kind: RecordKind::Invalid,
                key: (!ids.is_null(r)).then(|| format!("{source}:{}", ids.value(r))),
                reason: reasons.value(r).to_string(),
                record: crate::values::row_json(&record, r),
            });
        }
    }
    Ok((valid, count))
}
