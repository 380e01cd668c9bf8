//! The mass-delete guard. Before a mirror sends anything, the deletes it would make are
//! counted: the keys in state that the model no longer has. Over the sync's `max_deletes`
//! (default half of the records in sync) the run stops there, having sent nothing and
//! committed nothing, and says how to go on. The apply stage holds its first destination batch
//! back to decide: when the whole diff fits in it (a run with few changes, the usual case) the
//! diff itself has counted the deletes; otherwise [`count`] asks with one query (an anti join
//! that reads only the model's keys) before the first batch goes. The usual
//! cause is upstream: an export that came out empty, a join that lost its rows, a wrong filter;
//! a model that suddenly returns no rows would otherwise delete every record the sync made.

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

use super::read::Scope;
use super::{SyncError, SyncRef, engine};
use crate::behavior::Behavior;
use crate::config::DeleteLimit;
use crate::state::Manifest;

/// The sync's limit, when it has one (mirrors: theirs, or the default).
pub(super) fn limit(sync: &SyncRef<'_>) -> Option<DeleteLimit> {
    (sync.config.behavior == Behavior::Mirror).then(|| {
        sync.config
            .max_deletes
            .unwrap_or(DeleteLimit::MIRROR_DEFAULT)
    })
}

/// Why a run with `deletes` of `in_sync` records to delete would stop, or None when it may go
/// on (within the limit, `--allow-deletes`, or no limit).
pub(super) fn tripped(sync: &SyncRef<'_>, deletes: u64, in_sync: u64) -> Option<SyncError> {
    let limit = limit(sync)?;
    let allowed = limit.allows(in_sync);
    if sync.options.allow_deletes || deletes <= allowed {
        return None;
    }
    let name = sync.name;
    Some(SyncError::Guarded {
        sync: name.to_string(),
        message: format!(
            "this run would delete {deletes} of the {in_sync} records in sync, over its \
             max_deletes of {limit} ({allowed} allowed), so it sent nothing and the state is \
             unchanged. If the model is wrong (an empty export, a lost join, a wrong filter), \
             fix it and run again; if these records really left it, run `backflow run {name} \
             --allow-deletes` once (`backflow plan {name}` lists some of them), or raise \
             max_deletes in [syncs.{name}]"
        ),
    })
}

/// The records in sync (the state's keys, with those of interrupted runs) and how many of
/// them the model no longer has: the deletes a mirror's run would make. One pass over the
/// state and the model's keys; for a run that reads a change feed, the deleted keys the state
/// holds and the changed rows lack.
pub(super) async fn count(sync: &SyncRef<'_>, scope: Scope) -> Result<(u64, u64), SyncError> {
    let df_err = engine(sync.name, "guard");
    let sql = match scope {
        Scope::Changes => {
            "SELECT (SELECT CAST(count(*) AS BIGINT) FROM bf_prev) AS in_sync, \
                    CAST(count(*) AS BIGINT) AS deletes \
             FROM (SELECT DISTINCT __bf_key FROM bf_deleted) d \
             JOIN bf_prev p ON p.__bf_key = d.__bf_key \
             LEFT ANTI JOIN bf_mapped m ON m.__bf_key = d.__bf_key"
        }
        Scope::Whole | Scope::Part => {
            "SELECT CAST(count(*) AS BIGINT) AS in_sync, \
                    CAST(count(*) FILTER (WHERE m.__bf_model_key IS NULL) AS BIGINT) AS deletes \
             FROM bf_prev p \
             LEFT JOIN (SELECT DISTINCT __bf_key AS __bf_model_key FROM bf_mapped) m \
               ON p.__bf_key = m.__bf_model_key"
        }
    };
    let batches = sync
        .ctx
        .sql(sql)
        .await
        .map_err(&df_err)?
        .collect()
        .await
        .map_err(&df_err)?;
    let value = |column: usize| {
        batches
            .first()
            .and_then(|b| b.column(column).as_primitive_opt::<Int64Type>())
            .map_or(0, |a| a.value(0).max(0) as u64)
    };
    Ok((value(0), value(1)))
}

/// Whether the run must be guarded: a mirror with a limit some number of deletes could pass,
/// a state to delete from, and no `--allow-deletes`.
pub(super) fn applies(sync: &SyncRef<'_>, previous: &Manifest) -> bool {
    let unlimited = matches!(limit(sync), None | Some(DeleteLimit::Share(100.0)));
    !unlimited && !sync.options.allow_deletes && previous.rows > 0
}
