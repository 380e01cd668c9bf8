//! The change-feed read. A sync that reads a source which records its changes (a Delta table
//! with Change Data Feed, see `sources::change_feed`) reads, after a first whole read, only the
//! changes made since the version its state is up to date with: the diff then compares just
//! the keys those changes touch with the state ([`Scope::Changes`]), and a mirror learns of a
//! delete from the feed instead of from a full comparison.
//!
//! Of a key's changes only its last version's count (a key changed three times is sent once,
//! as it is now), and an update's preimage is left out. What that version inserted or updated
//! is the key's row (`bf_mapped`, through the map stage like any row: two rows one version
//! inserted under one key are a duplicate key, as in a whole read); a key that version only
//! deleted is in `bf_deleted`. As plans (`sql` below): a window `MAX(_commit_version)` per key
//! over the feed, and two filters of it.
//!
//! The whole table is read instead when the feed cannot cover the range (it was off for part of
//! it, or log retention removed the versions), after an interrupted run (its intents name keys
//! the feed may not), and when the run reads everything anyway (a full resync, a new mapping).
//!
//! [`Scope::Changes`]: super::read::Scope::Changes

use datafusion::prelude::{DataFrame, ident, lit};

use super::{SyncError, SyncRef, engine};
use crate::sources::change_feed::{CHANGE_TYPE, COMMIT_VERSION, ChangeFeed};

/// A key's changes in the feed, with the last version that changed it (`__bf_last`).
const LAST_CHANGES: &str = "bf_last_changes";
/// The feed as read.
const FEED: &str = "bf_feed";
/// Tables this stage registers (cleared with the cycle's).
pub(super) const TABLES: [&str; 3] = [FEED, LAST_CHANGES, "bf_deleted"];

/// What changed in the source since the state's version.
pub(super) struct Changes {
    /// The rows inserted or updated (the source's columns): the rows the run reads.
    pub rows: DataFrame,
    /// The deleted rows' key columns (the source's names).
    pub deleted: DataFrame,
}

/// The changes of `feed` after version `since` (with `relation`, the source as it is now, for
/// its columns), or why the feed cannot tell them: the caller then reads the whole table.
pub(super) async fn read(
    sync: &SyncRef<'_>,
    feed: &dyn ChangeFeed,
    since: u64,
    relation: &DataFrame,
) -> Result<Result<Changes, String>, SyncError> {
    let df_err = engine(sync.name, "read changes");
    let ctx = sync.ctx;
    let columns: Vec<String> = relation
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let keys: Vec<String> = sync.config.key.sources().map(str::to_string).collect();
    if since == feed.version() {
        // Nothing changed: no rows, no deletes.
        let none = relation.clone().filter(lit(false)).map_err(&df_err)?;
        let deleted = none
            .clone()
            .select(keys.iter().map(ident).collect::<Vec<_>>())
            .map_err(&df_err)?;
        return Ok(Ok(Changes {
            rows: none,
            deleted,
        }));
    }
    let changes = match feed.changes(ctx, since).await {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    ctx.register_table(FEED, changes.into_view())
        .map_err(&df_err)?;
    let partition = keys
        .iter()
        .map(|k| quoted(k))
        .collect::<Vec<_>>()
        .join(", ");
    let last = ctx
        .sql(&format!(
            "SELECT *, MAX({version}) OVER (PARTITION BY {partition}) AS __bf_last \
             FROM {FEED} WHERE {kind} <> 'update_preimage'",
            version = quoted(COMMIT_VERSION),
            kind = quoted(CHANGE_TYPE),
        ))
        .await
        .map_err(&df_err)?
        .filter(ident(COMMIT_VERSION).eq(ident("__bf_last")))
        .map_err(&df_err)?;
    ctx.register_table(LAST_CHANGES, last.into_view())
        .map_err(&df_err)?;
    let last = ctx.table(LAST_CHANGES).await.map_err(&df_err)?;
    let rows = last
        .clone()
        .filter(ident(CHANGE_TYPE).not_eq(lit("delete")))
        .and_then(|r| r.select(columns.iter().map(ident).collect::<Vec<_>>()))
        .map_err(&df_err)?;
    let deleted = last
        .filter(ident(CHANGE_TYPE).eq(lit("delete")))
        .and_then(|d| d.select(keys.iter().map(ident).collect::<Vec<_>>()))
        .map_err(&df_err)?;
    Ok(Ok(Changes { rows, deleted }))
}

/// The deleted keys as the state holds them (`__bf_key`, of `key_type`), registered as
/// `bf_deleted` for the diff and the delete guard.
pub(super) fn register_deleted(
    sync: &SyncRef<'_>,
    deleted: DataFrame,
    key_type: &arrow::datatypes::DataType,
) -> Result<(), SyncError> {
    use datafusion::logical_expr::cast;
    let df_err = engine(sync.name, "read changes");
    let parts = sync.config.key.parts();
    let named = deleted
        .select(
            parts
                .iter()
                .map(|p| ident(&p.source).alias(&p.destination))
                .collect::<Vec<_>>(),
        )
        .map_err(&df_err)?;
    let key = crate::keys::key_expr(&sync.config.key.destinations());
    let keys = named
        .select(vec![cast(key, key_type.clone()).alias(super::map::KEY)])
        .map_err(&df_err)?;
    sync.ctx
        .register_table("bf_deleted", keys.into_view())
        .map_err(&df_err)?;
    Ok(())
}

/// An SQL identifier for a column name as it is.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn identifiers_keep_their_case_and_quotes() {
        assert_eq!(quoted("Id"), "\"Id\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
    }
}
