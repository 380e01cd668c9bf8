//! The lookup stage: fields whose value is found in the destination by another field
//! (`fields.lookup`, associations in CRMs). Until a row is sent such a field holds the value
//! looked up (which is what the row hash covers); the record found replaces it, and a row whose
//! value finds no record, or more than one, carries the reason in [`REASON`] and is rejected
//! instead of sent (see `apply`), so the next run tries it again like any rejected row.
//!
//! - Database destinations: a join of the diff with the looked-up table grouped by the field
//!   compared, as one plan; the table is read once per run with its own types, and the field
//!   takes the type of the column it returns.
//! - Other destinations (HTTP APIs): per destination batch, the values not seen yet in this
//!   run are asked for in batches ([`ObjectWriter::look_up`]) and remembered for the rest of it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::functions::string::expr_fn::concat;
use datafusion::functions_aggregate::expr_fn::{count, min};
use datafusion::logical_expr::{JoinType, cast, when};
use datafusion::prelude::{DataFrame, Expr, ident, lit};

use super::{SyncError, SyncRef, engine};
use crate::config::{LookupField, OnMissing};
use crate::destinations::{Destination, Found, LookupQuery, ObjectWriter};

/// Why a row's lookups failed (NULL when they did not).
pub(super) const REASON: &str = "__bf_lookup";

/// The schema name the looked-up tables of a database destination are registered under while
/// the plan is made.
const SCHEMA: &str = "bf_lookup";

/// The diff with the lookups planned in, and what is left to do when rows are sent.
pub(super) struct Planned {
    pub diff: DataFrame,
    /// The type each lookup field has once found (the destination sees these).
    pub types: Vec<(String, DataType)>,
    /// For destinations that find records by request.
    pub resolver: Option<Resolver>,
}

/// Plan the lookups of `sync` into `diff` (nothing to do without `fields.lookup`).
pub(super) async fn plan(
    sync: &SyncRef<'_>,
    destination: &Arc<dyn Destination>,
    diff: DataFrame,
) -> Result<Planned, SyncError> {
    let lookups = &sync.config.fields.lookup;
    if lookups.is_empty() {
        return Ok(Planned {
            diff,
            types: vec![],
            resolver: None,
        });
    }
    let mut objects: Vec<String> = lookups.values().map(|l| l.object.clone()).collect();
    objects.sort();
    objects.dedup();
    match destination.lookup_source(&objects) {
        Some(source) => joined(sync, source.as_ref(), diff).await,
        None => {
            let mut fields = Vec::new();
            let mut types = Vec::new();
            for (field, l) in lookups {
                let to = l
                    .value_type
                    .as_deref()
                    .and_then(crate::config::entity::parse_type)
                    .unwrap_or(DataType::Utf8);
                types.push((field.clone(), to.clone()));
                fields.push(Requested {
                    field: field.clone(),
                    config: l.clone(),
                    to,
                    cache: HashMap::new(),
                });
            }
            Ok(Planned {
                diff,
                types,
                resolver: Some(Resolver { fields }),
            })
        }
    }
}

/// `schema` with the lookup fields' types.
pub(super) fn with_types(schema: &SchemaRef, types: &[(String, DataType)]) -> SchemaRef {
    if types.is_empty() {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match types.iter().find(|(n, _)| n == f.name()) {
            Some((_, t)) => f.as_ref().clone().with_data_type(t.clone()),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The lookups of a database destination: each a join with its table.
async fn joined(
    sync: &SyncRef<'_>,
    source: &dyn crate::sources::Source,
    diff: DataFrame,
) -> Result<Planned, SyncError> {
    let (ctx, name) = (sync.ctx, sync.name);
    let df_err = engine(name, "lookup");
    let unreadable = |reason: String| SyncError::Settings {
        sync: name.to_string(),
        message: format!(
            "fields.lookup: cannot read from destination \"{}\": {reason}",
            sync.config.to
        ),
    };
    if let Some(catalog) = ctx.catalog("datafusion") {
        let _ = catalog.deregister_schema(SCHEMA, true);
    }
    source.register(ctx, SCHEMA).await.map_err(|e| {
        use crate::sources::SourceError;
        unreadable(match e {
            SourceError::Missing { location, .. } => format!(
                "{location} does not exist yet (the tables looked up in must be there first: \
                 run the syncs that fill them)"
            ),
            SourceError::Table { table, reason, .. } => format!("table \"{table}\": {reason}"),
            // (The schema is only this stage's name for the destination.)
            other => other
                .to_string()
                .replace(&format!("source \"{SCHEMA}\": "), "")
                .replace(&format!("source \"{SCHEMA}\""), "the destination"),
        })
    })?;
    let mut tables = HashMap::new();
    for l in sync.config.fields.lookup.values() {
        if tables.contains_key(&l.object) {
            continue;
        }
        let provider = ctx
            .table_provider(TableReference::partial(SCHEMA, l.object.as_str()))
            .await
            .map_err(|e| unreadable(format!("table \"{}\": {e}", l.object)))?;
        tables.insert(l.object.clone(), provider);
    }
    if let Some(catalog) = ctx.catalog("datafusion") {
        let _ = catalog.deregister_schema(SCHEMA, true);
    }

    let columns: Vec<String> = diff
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut reasons = Vec::new();
    let mut types = Vec::new();
    let mut diff = diff;
    for (i, (field, l)) in sync.config.fields.lookup.iter().enumerate() {
        let provider = tables[&l.object].clone();
        let table_columns: Vec<String> = provider
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let input_type = diff
            .schema()
            .field_with_unqualified_name(field)
            .map(|f| f.data_type().clone())
            .map_err(&df_err)?;
        let reason_column = format!("__bf_lk{i}_reason");
        let looked_up = cast(ident(field), DataType::Utf8);
        let missing = match l.on_missing {
            OnMissing::Reject => concat(vec![
                lit(format!("no {} record has {} = ", l.object, l.by)),
                looked_up.clone(),
                lit(" (the lookup of "),
                lit(field.as_str()),
                lit(" found nothing; the row is sent again on the next run)"),
            ]),
            OnMissing::Null => lit(ScalarValue::Utf8(None)),
        };
        // Nothing to join: every value of the model is NULL (an empty CSV has no types), or the
        // table has no columns to read (SQLite cannot tell an empty table's column types): the
        // field is NULL, and each value that is not finds nothing.
        if input_type == DataType::Null || table_columns.is_empty() {
            let reason = when(ident(field).is_null(), lit(ScalarValue::Utf8(None)))
                .otherwise(missing)
                .map_err(&df_err)?;
            let select = resolved_columns(
                &columns,
                field,
                lit(ScalarValue::Utf8(None)),
                &reasons,
                reason.alias(&reason_column),
            );
            diff = diff.select(select).map_err(&df_err)?;
            reasons.push(reason_column);
            types.push((field.clone(), DataType::Utf8));
            continue;
        }
        let mut problems = Vec::new();
        for (setting, column) in [("by", &l.by), ("returns", &l.returns)] {
            if !table_columns.contains(column) {
                problems.push(format!(
                    "fields.lookup.{field}: {setting} = \"{column}\" is not a column of table \"{}\"{} (its columns: {})",
                    l.object,
                    crate::names::suggest(column, table_columns.iter().map(String::as_str)),
                    table_columns.join(", ")
                ));
            }
        }
        if !problems.is_empty() {
            return Err(SyncError::Mapping {
                sync: name.to_string(),
                problems,
            });
        }
        let returns_type = provider
            .schema()
            .field_with_name(&l.returns)
            .map(|f| f.data_type().clone())
            .map_err(|e| df_err(e.into()))?;
        let (value, found, records, with_returns) = (
            format!("__bf_lk{i}_value"),
            format!("__bf_lk{i}_found"),
            format!("__bf_lk{i}_records"),
            format!("__bf_lk{i}_with_returns"),
        );
        let by_type = provider
            .schema()
            .field_with_name(&l.by)
            .map(|f| f.data_type().clone())
            .map_err(|e| df_err(e.into()))?;
        // Values of one type are compared as they are; of two types, as their text, so that
        // no conversion can make two values meet (42.9 and 42, "042" and 42, a timestamp and
        // its day).
        let (by_key, field_key) = if by_type == input_type {
            (ident(&l.by), field.clone())
        } else {
            let key = format!("__bf_lk{i}_key");
            diff = diff
                .with_column(&key, cast(ident(field), DataType::Utf8))
                .map_err(&df_err)?;
            (cast(ident(&l.by), DataType::Utf8), key)
        };
        // One row per value of `by`: how many records have it, and what the one returns.
        let table = ctx
            .read_table(provider)
            .and_then(|t| t.select(vec![by_key.alias(&value), ident(&l.returns).alias(&found)]))
            // (No filter on NULL values: a NULL key joins nothing anyway, and a filter over the
            // cast would be pushed down to the database, which may not know TRY_CAST.)
            .and_then(|t| {
                t.aggregate(
                    vec![ident(&value)],
                    vec![
                        min(ident(&found)).alias(&found),
                        count(lit(1)).alias(&records),
                        count(ident(&found)).alias(&with_returns),
                    ],
                )
            })
            .map_err(&df_err)?;
        // The table is the join's build side; the diff streams through it.
        let joined = table
            .join(
                diff,
                JoinType::Right,
                &[value.as_str()],
                &[field_key.as_str()],
                None,
            )
            .map_err(&df_err)?;
        let reason = when(ident(field).is_null(), lit(ScalarValue::Utf8(None)))
            .when(ident(&records).is_null(), missing)
            .when(
                ident(&records).gt(lit(1i64)),
                concat(vec![
                    cast(ident(&records), DataType::Utf8),
                    lit(format!(" {} records have {} = ", l.object, l.by)),
                    looked_up.clone(),
                    lit(format!(
                        ": the lookup of {field} is ambiguous and chooses none"
                    )),
                ]),
            )
            .when(
                ident(&with_returns).eq(lit(0i64)),
                concat(vec![
                    lit(format!("the {} record whose {} is ", l.object, l.by)),
                    looked_up,
                    lit(format!(" has no {}", l.returns)),
                ]),
            )
            .otherwise(lit(ScalarValue::Utf8(None)))
            .map_err(&df_err)?;
        let null_found = lit(ScalarValue::try_from(&returns_type).map_err(&df_err)?);
        let resolved = when(ident(&records).eq(lit(1i64)), ident(&found))
            .otherwise(null_found)
            .map_err(&df_err)?;
        let select = resolved_columns(
            &columns,
            field,
            resolved,
            &reasons,
            reason.alias(&reason_column),
        );
        diff = joined.select(select).map_err(&df_err)?;
        reasons.push(reason_column);
        types.push((field.clone(), returns_type));
    }
    let mut select: Vec<Expr> = columns.iter().map(ident).collect();
    let reason = match reasons.as_slice() {
        [one] => ident(one),
        many => coalesce(many.iter().map(ident).collect()),
    };
    select.push(reason.alias(REASON));
    let diff = diff.select(select).map_err(&df_err)?;
    Ok(Planned {
        diff,
        types,
        resolver: None,
    })
}

/// The diff's `columns` with `field` replaced by `resolved`, then the reason columns so far and
/// this lookup's `reason`.
fn resolved_columns(
    columns: &[String],
    field: &str,
    resolved: Expr,
    reasons: &[String],
    reason: Expr,
) -> Vec<Expr> {
    let mut select: Vec<Expr> = columns
        .iter()
        .map(|c| {
            if c == field {
                resolved.clone().alias(c)
            } else {
                ident(c)
            }
        })
        .collect();
    select.extend(reasons.iter().map(ident));
    select.push(reason);
    select
}

/// Lookups done by request when rows are sent, each value asked once per run.
pub(super) struct Resolver {
    fields: Vec<Requested>,
}

struct Requested {
    field: String,
    config: LookupField,
    to: DataType,
    /// What each value (as text) found, in this run.
    cache: HashMap<String, Found>,
}

impl Resolver {
    /// `rows` with their lookup fields found, and [`REASON`] set for those that could not be.
    pub(super) async fn resolve(
        &mut self,
        sync: &str,
        writer: &mut dyn ObjectWriter,
        rows: RecordBatch,
    ) -> Result<RecordBatch, SyncError> {
        let n = rows.num_rows();
        let df_err = engine(sync, "lookup");
        let mut reasons: Vec<Option<String>> = match rows.column_by_name(REASON) {
            Some(c) => (0..n)
                .map(|i| (!c.is_null(i)).then(|| c.as_string::<i32>().value(i).to_string()))
                .collect(),
            None => vec![None; n],
        };
        let schema = rows.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        for f in &mut self.fields {
            let Ok(idx) = schema.index_of(&f.field) else {
                continue;
            };
            let input = rows.column(idx).clone();
            let texts = crate::values::texts(&input);
            let mut ask = Vec::new();
            let mut asked = HashSet::new();
            for i in 0..n {
                if texts.is_null(i) {
                    continue;
                }
                let v = texts.value(i);
                if !f.cache.contains_key(v) && asked.insert(v) {
                    ask.push(i as u32);
                }
            }
            if !ask.is_empty() {
                let values = arrow::compute::take(&input, &UInt32Array::from(ask.clone()), None)
                    .map_err(|e| df_err(e.into()))?;
                let query = LookupQuery {
                    object: f.config.object.clone(),
                    by: f.config.by.clone(),
                    returns: f.config.returns.clone(),
                };
                let found = writer.look_up(&query, &values).await.map_err(|source| {
                    SyncError::Destination {
                        sync: sync.to_string(),
                        source,
                    }
                })?;
                for (i, found) in ask.iter().zip(found) {
                    f.cache.insert(texts.value(*i as usize).to_string(), found);
                }
            }
            let mut out = StringBuilder::new();
            for (i, reason) in reasons.iter_mut().enumerate() {
                if texts.is_null(i) {
                    out.append_null();
                    continue;
                }
                let v = texts.value(i);
                let l = &f.config;
                let why = match f.cache.get(v) {
                    Some(Found::One(id)) => {
                        out.append_value(id);
                        continue;
                    }
                    Some(Found::Nothing) | None => (l.on_missing == OnMissing::Reject).then(|| {
                        format!(
                            "no {} record has {} = {v} (the lookup of {} found nothing; the row is sent again on the next run)",
                            l.object, l.by, f.field
                        )
                    }),
                    Some(Found::Many(k)) => Some(format!(
                        "{k} {} records have {} = {v}: the lookup of {} is ambiguous and chooses none",
                        l.object, l.by, f.field
                    )),
                    Some(Found::Refused(m)) => Some(m.clone()),
                };
                out.append_null();
                if reason.is_none() {
                    *reason = why;
                }
            }
            let found: ArrayRef = Arc::new(out.finish());
            let typed = arrow::compute::cast(&found, &f.to).map_err(|e| df_err(e.into()))?;
            for (i, reason) in reasons.iter_mut().enumerate() {
                if !found.is_null(i) && typed.is_null(i) && reason.is_none() {
                    *reason = Some(format!(
                        "the {} found for {} ({:?}) is not a {} (fields.lookup.{}.type)",
                        f.config.returns,
                        f.field,
                        found.as_string::<i32>().value(i),
                        f.to,
                        f.field
                    ));
                }
            }
            columns[idx] = typed;
            fields[idx] = fields[idx].clone().with_data_type(f.to.clone());
        }
        let reasons: ArrayRef = Arc::new(StringArray::from(reasons));
        match schema.index_of(REASON) {
            Ok(i) => columns[i] = reasons,
            Err(_) => {
                fields.push(Field::new(REASON, DataType::Utf8, true));
                columns.push(reasons);
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| df_err(e.into()))
    }
}

/// The rows of `rows` whose lookups failed, with why (row index, reason).
pub(super) fn failures(rows: &RecordBatch) -> Vec<(usize, String)> {
    let Some(c) = rows.column_by_name(REASON) else {
        return vec![];
    };
    // (Whatever string type the plan gave it; a reason is never dropped for its type.)
    let c = crate::values::texts(c);
    (0..c.len())
        .filter(|i| !c.is_null(*i))
        .map(|i| (i, c.value(i).to_string()))
        .collect()
}
