//! The diff stage: every model row and every key in state classified in one join
//! (`sql/diff.sql`): unchanged, new, changed, gone, or invalid (a NULL or duplicated key).

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::kernels::cmp::eq;
use arrow::datatypes::Int8Type;
use datafusion::prelude::DataFrame;

use super::map::{FIELDS, fields_type};
use super::read::Scope;
use super::{SyncError, SyncRef, engine};

const DIFF_SQL: &str = include_str!("../../sql/diff.sql");

/// Diff classes (`__bf_op` in sql/diff.sql).
pub(super) const UNCHANGED: i8 = 0;
pub(super) const NEW: i8 = 1;
pub(super) const CHANGED: i8 = 2;
pub(super) const GONE: i8 = 3;
pub(super) const NULL_KEY: i8 = 4;
pub(super) const DUPLICATE_KEY: i8 = 5;
/// A record the destination holds that is not in the model, of a sync without state (see
/// `existing`): left alone.
pub(super) const UNOWNED: i8 = 6;
pub(super) const OP: &str = "__bf_op";
pub(super) const PREV_KEY: &str = "__bf_prev_key";
/// The per-field hashes the state had for a row (a sync that sends only changed fields).
pub(super) const PREV_FIELDS: &str = "__bf_prev_fields";
/// The diff of `bf_mapped` (the mapped model rows) with `bf_prev` (the state it compares
/// with), as a plan. A run that reads the whole model finds gone keys with a full join; a cursor
/// run reads only part of it, so it cannot, and joins the other way (see the SQL). A run that
/// reads a change feed compares only the keys it touched (changed or deleted) with the state,
/// with a full join: a deleted key the state holds is gone. When `bf_prev` holds the
/// destination's keys rather than a state (`foreign`), a key missing from the model is
/// [`UNOWNED`], not gone.
pub(super) async fn plan(
    sync: &SyncRef<'_>,
    scope: Scope,
    foreign: bool,
) -> Result<DataFrame, SyncError> {
    let from = match scope {
        Scope::Part => "model m LEFT JOIN bf_prev p ON m.__bf_key = p.__bf_key",
        Scope::Whole => "bf_prev p FULL JOIN model m ON m.__bf_key = p.__bf_key",
        // The state's rows of the keys the feed touched (`changes::PREV`, kept in memory:
        // as many as the changes), of those keys the feed settles.
        Scope::Changes => {
            "(SELECT s.* FROM (SELECT DISTINCT __bf_key FROM \
               (SELECT __bf_key FROM bf_mapped UNION ALL SELECT __bf_key FROM bf_deleted) k \
               WHERE __bf_key IS NOT NULL) t \
             JOIN bf_prev_touched s ON s.__bf_key = t.__bf_key) p \
             FULL JOIN model m ON m.__bf_key = p.__bf_key"
        }
    };
    let gone = if foreign { UNOWNED } else { GONE };
    sync.ctx
        .sql(
            &super::state::fields_sql(DIFF_SQL, super::state::keeps_fields(sync))
                .replace("{from}", from)
                .replace("{gone}", &gone.to_string()),
        )
        .await
        .map_err(engine(sync.name, "diff"))
}

/// `diff` with the per-field hashes ([`FIELDS`], a sync that sends only changed fields) of the
/// rows it sends: new and changed ones. The state keeps the others' from earlier runs, so they
/// are not computed for them.
pub(super) fn with_field_hashes(
    diff: DataFrame,
    hashes: datafusion::prelude::Expr,
) -> datafusion::error::Result<DataFrame> {
    use datafusion::prelude::{ident, lit};
    let sent = ident(OP).in_list(vec![lit(NEW), lit(CHANGED)], false);
    let none = lit(datafusion::common::ScalarValue::try_from(&fields_type())?);
    let hashes = datafusion::logical_expr::when(sent, hashes).otherwise(none)?;
    diff.with_column(FIELDS, hashes)
}

/// Rows of the model (not gone, not unowned).
pub(super) fn model_rows(ops: &arrow::array::Int8Array) -> BooleanArray {
    let not_model = arrow::compute::kernels::boolean::or(&mask(ops, GONE), &mask(ops, UNOWNED))
        .unwrap_or_else(|_| BooleanArray::from(vec![false; ops.len()]));
    arrow::compute::kernels::boolean::not(&not_model)
        .unwrap_or_else(|_| BooleanArray::from(vec![true; ops.len()]))
}

pub(super) fn mask(ops: &arrow::array::Int8Array, class: i8) -> BooleanArray {
    let scalar = arrow::array::Int8Array::new_scalar(class);
    eq(ops, &scalar).unwrap_or_else(|_| BooleanArray::from(vec![false; ops.len()]))
}

pub(super) fn ops_of(
    sync: &str,
    batch: &RecordBatch,
) -> Result<arrow::array::Int8Array, SyncError> {
    batch
        .column_by_name(OP)
        .and_then(|c| c.as_primitive_opt::<Int8Type>())
        .cloned()
        .ok_or_else(|| SyncError::Mapping {
            sync: sync.to_string(),
            problems: vec!["the diff lost its op column (this is a bug in backflow)".into()],
        })
}
