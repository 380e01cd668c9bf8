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

/// Build sides of up to this many rows (or [`COLLECT_BUILD_BYTES`]) are collected whole.
const COLLECT_BUILD_ROWS: usize = 10_000_000;
const COLLECT_BUILD_BYTES: usize = 512 << 20;

/// The diff `df` (with its lookups) planned with each hash join's build side where the SQL
/// puts it, on the left: the state's keys and hashes, the duplicate keys, a lookup's table.
/// When that side has up to [`COLLECT_BUILD_ROWS`] rows, one table is built from it and every
/// partition of the model probes it as it is read (DataFusion's `CollectLeft`), instead of
/// both sides being repartitioned by key. The model's rows are wide, and repartitioning them
/// (a copy of every row into its partition's batch) cost more than building the narrow side
/// on one thread: on this project's 2-core machine a 1M-row incremental mirror run into a file
/// took about 0.8 of the time (README, Performance). A larger state keeps DataFusion's partitioned join.
///
/// Only where the left side is the sync's own state (`Whole` and `Changes` scopes, not
/// `foreign`), whose size the statistics tell. With join reordering on, a left side of unknown
/// size (the destination's keys of a sync without state) let DataFusion collect the model
/// instead, every row of it in memory. A cursor run (`Part`) keeps the defaults: its left side
/// is the model's rows past the watermark, whose number only an estimate tells.
pub(super) fn with_join_sides(df: DataFrame, scope: Scope, foreign: bool) -> DataFrame {
    if foreign || scope == Scope::Part {
        return df;
    }
    let (mut state, plan) = df.into_parts();
    let optimizer = &mut state.config_mut().options_mut().optimizer;
    optimizer.join_reordering = false;
    optimizer.hash_join_single_partition_threshold_rows = optimizer
        .hash_join_single_partition_threshold_rows
        .max(COLLECT_BUILD_ROWS);
    optimizer.hash_join_single_partition_threshold = optimizer
        .hash_join_single_partition_threshold
        .max(COLLECT_BUILD_BYTES);
    DataFrame::new(state, plan)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// Two partitions, a narrow `prev` of 300,000 keys (2.4 MB: above DataFusion's own
    /// thresholds for building one table) and a `model` to join with it.
    fn context() -> SessionContext {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let table = |rows: i64| {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(0..rows))],
            )
            .unwrap();
            Arc::new(
                MemTable::try_new(schema.clone(), vec![vec![batch.clone()], vec![batch]]).unwrap(),
            )
        };
        ctx.register_table("prev", table(150_000)).unwrap();
        ctx.register_table("model", table(1_000_000)).unwrap();
        ctx
    }

    async fn join_mode(df: DataFrame) -> String {
        let plan = df.create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        let line = text.lines().find(|l| l.contains("HashJoinExec")).unwrap();
        line.split("mode=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn the_narrow_side_is_built_once_and_probed_by_every_partition() {
        let ctx = context();
        let sql = "SELECT * FROM prev p FULL JOIN model m ON p.k = m.k";
        let default = ctx.sql(sql).await.unwrap();
        assert_eq!(join_mode(default).await, "Partitioned");
        let diff = with_join_sides(ctx.sql(sql).await.unwrap(), Scope::Whole, false);
        assert_eq!(join_mode(diff.clone()).await, "CollectLeft");
        // Not where the left side is not the state.
        for (scope, foreign) in [(Scope::Part, false), (Scope::Whole, true)] {
            let df = with_join_sides(ctx.sql(sql).await.unwrap(), scope, foreign);
            assert_eq!(join_mode(df).await, "Partitioned");
        }
        // The same rows either way.
        let rows = |df: DataFrame| async move { df.count().await.unwrap() };
        assert_eq!(rows(diff).await, rows(ctx.sql(sql).await.unwrap()).await);
        // The session's own setting is untouched (the hub's plans keep the default).
        assert_eq!(join_mode(ctx.sql(sql).await.unwrap()).await, "Partitioned");
    }
}
