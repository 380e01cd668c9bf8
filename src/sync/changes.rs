//! The change-feed read. A sync that reads a source which records its changes (a Delta table
//! with Change Data Feed, see `sources::change_feed`) reads, after a first whole read, only the
//! changes made since the version its state is up to date with: the diff then compares just
//! the keys those changes settle with the state ([`Scope::Changes`]), and a mirror learns of a
//! delete from the feed instead of from a full comparison.
//!
//! The feed is read as row counts, not as a story in order: every row a change added (an
//! insert, an update's postimage) counts +1 for its key and row hash, every row it removed (a
//! delete, an update's preimage) −1, and the row the state holds for a touched key +1. What is
//! left with a positive count per key is what the table holds now:
//! - nothing: the key is gone (`bf_deleted`; an update that changed a key leaves its old key
//!   here);
//! - the state's own row: nothing changed for the key (it was changed and changed back);
//! - one row from the feed: the key's row now (`bf_mapped`, mapped like any row).
//!
//! A key left with two rows or more (a table holding a key twice), or a count below zero (a
//! removed row the state never had), is something the feed alone cannot settle: the run reads
//! the whole table instead, which reports duplicates as a whole read does. So does a feed that
//! cannot cover the range (it was off for part of it, log retention removed the versions, a
//! vacuum removed its files), a run after an interrupted one (its intents may name keys the
//! feed does not), and a run that reads everything anyway (a full resync, a new mapping). All
//! of it is plans: two aggregates over the mapped feed and the touched keys' state, one check
//! that reads a count per problem, and a window that keeps one row per key.
//!
//! [`Scope::Changes`]: super::read::Scope::Changes

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::functions_aggregate::expr_fn::first_value;
use datafusion::prelude::{DataFrame, ident, lit};

use super::map::{HASH, KEY};
use super::{SyncError, SyncRef, engine};
use crate::sources::change_feed::{CHANGE_TYPE, ChangeFeed};
use crate::state::{Manifest, SourceVersion};

/// The mapped rows the feed added (with the model's columns), and the key and hash of those it
/// removed.
const ADDED: &str = "bf_feed_added";
const REMOVED: &str = "bf_feed_removed";
/// Per key and row hash: the count left (`__bf_n`) and whether the state holds that row.
const NET: &str = "bf_feed_net";
/// Per touched key: rows left (`__bf_total`), the lowest count, whether the state's row is left.
const KEYS: &str = "bf_feed_keys";
/// The keys the feed touched, and the state's rows of them (what the diff compares with).
const TOUCHED: &str = "bf_feed_touched";
pub(super) const PREV: &str = "bf_prev_touched";
/// Tables this stage registers (cleared with the cycle's).
pub(super) const TABLES: [&str; 7] = [ADDED, REMOVED, NET, KEYS, TOUCHED, PREV, "bf_deleted"];

/// The result of `sql`, computed once and kept in memory (`DataFrame::cache`: a table as
/// large as the changes, not the model), registered as table `name`.
async fn keep(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    sql: &str,
) -> datafusion::error::Result<DataFrame> {
    let kept = ctx.sql(sql).await?.cache().await?;
    let _ = ctx.deregister_table(name);
    ctx.register_table(name, kept.clone().into_view())?;
    Ok(kept)
}

/// What a change feed says changed, as rows of the source (its columns).
pub(super) struct Feed {
    /// The rows changes added (inserts, updates' postimages).
    pub added: DataFrame,
    /// The rows changes removed (deletes, updates' preimages).
    pub removed: DataFrame,
}

/// What a run makes of its source's change feed.
pub(super) struct Opened {
    /// The changes to read (None: the whole table is read).
    pub feed: Option<Feed>,
    /// The source's version the run reads (None without a feed).
    pub source_version: Option<SourceVersion>,
    /// Why the feed was not read when it could have been, for the run's warnings.
    pub notes: Vec<String>,
}

/// The changes of `feed` since the version the state `previous` is up to date with, unless
/// the run reads the whole table anyway (`whole`: a full resync, a new mapping, a cursor, an
/// interrupted run's intents) or the feed cannot tell them.
pub(super) async fn open(
    sync: &SyncRef<'_>,
    feed: Option<&dyn ChangeFeed>,
    relation: &DataFrame,
    previous: Option<&Manifest>,
    whole: bool,
) -> Result<Opened, SyncError> {
    let mut opened = Opened {
        feed: None,
        source_version: None,
        notes: Vec::new(),
    };
    let Some(feed) = feed else {
        return Ok(opened);
    };
    let now = SourceVersion {
        table: feed.table_id(),
        version: feed.version(),
    };
    opened.source_version = Some(now.clone());
    if whole {
        return Ok(opened);
    }
    let Some(previous) = previous else {
        return Ok(opened);
    };
    let Some(before) = previous.source_version.clone() else {
        opened.notes.push(
            "the last run read part of the table, or left invalid or rejected rows (they are \
             read again until fixed): the whole table was read"
                .into(),
        );
        return Ok(opened);
    };
    if before.table != now.table {
        opened.notes.push(
            "the table was replaced by another under the same path: it was read whole".into(),
        );
        return Ok(opened);
    }
    if before.version > now.version {
        opened.notes.push(format!(
            "the state is up to date with version {} of the table, which is now at version {} \
             (pinned with `version` or `timestamp` to an older one): it was read whole",
            before.version, now.version
        ));
        return Ok(opened);
    }
    match read(sync, feed, before.version, relation).await? {
        Ok(f) => opened.feed = Some(f),
        Err(why) => opened
            .notes
            .push(format!("{why}: the whole table was read")),
    }
    Ok(opened)
}

/// The changes of `feed` after version `since` (with `relation`, the source as it is now, for
/// its columns), or why the feed cannot tell them: the caller then reads the whole table.
async fn read(
    sync: &SyncRef<'_>,
    feed: &dyn ChangeFeed,
    since: u64,
    relation: &DataFrame,
) -> Result<Result<Feed, String>, SyncError> {
    let df_err = engine(sync.name, "read changes");
    let columns: Vec<_> = relation
        .schema()
        .fields()
        .iter()
        .map(|f| ident(f.name()))
        .collect();
    if since == feed.version() {
        // Nothing changed.
        let none = relation.clone().filter(lit(false)).map_err(&df_err)?;
        return Ok(Ok(Feed {
            added: none.clone(),
            removed: none,
        }));
    }
    let changes = match feed.changes(sync.ctx, since).await {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    let kind = |kinds: [&str; 2]| ident(CHANGE_TYPE).in_list(kinds.map(lit).to_vec(), false);
    let added = changes
        .clone()
        .filter(kind(["insert", "update_postimage"]))
        .and_then(|a| a.select(columns.clone()))
        .map_err(&df_err)?;
    let removed = changes
        .filter(kind(["delete", "update_preimage"]))
        .and_then(|r| r.select(columns))
        .map_err(&df_err)?;
    Ok(Ok(Feed { added, removed }))
}

/// Register the key and row hash of the rows the feed removed (`removed`, mapped, its key of
/// the state's type).
pub(super) fn register_removed(sync: &SyncRef<'_>, removed: DataFrame) -> Result<(), SyncError> {
    let df_err = engine(sync.name, "read changes");
    let keyed = removed
        .select(vec![ident(KEY), ident(HASH)])
        .map_err(&df_err)?;
    sync.ctx
        .register_table(REMOVED, keyed.into_view())
        .map_err(&df_err)?;
    Ok(())
}

/// With `bf_mapped` holding the mapped rows the feed added and `bf_prev` the state: count what
/// is left per key, and replace `bf_mapped` with the rows that settle a key and register
/// `bf_deleted` (keys left with no row). `Err` says why the feed cannot settle every key (the
/// caller reads the whole table instead); nothing is replaced then.
pub(super) async fn settle(
    sync: &SyncRef<'_>,
    state_rows: u64,
) -> Result<Result<(), String>, SyncError> {
    let df_err = engine(sync.name, "read changes");
    let ctx = sync.ctx;
    let added = ctx.table("bf_mapped").await.map_err(&df_err)?;
    let columns: Vec<_> = added
        .schema()
        .fields()
        .iter()
        .map(|f| ident(f.name()))
        .collect();
    ctx.register_table(ADDED, added.into_view())
        .map_err(&df_err)?;
    // The keys the feed touched, and their rows in the state, are read once and kept (as
    // many as the changes): every later step, the diff too, joins with them rather than with
    // the whole state. Reading the keys reads the feed: a file it names that is gone (a
    // vacuum) shows up here, and the run reads the whole table instead.
    let touched = match keep(
        ctx,
        TOUCHED,
        &format!(
            "SELECT DISTINCT __bf_key FROM ( \
               SELECT __bf_key FROM {ADDED} UNION ALL SELECT __bf_key FROM {REMOVED}) k \
             WHERE __bf_key IS NOT NULL"
        ),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("the change data feed cannot be read: {e}"))),
    };
    let touched_rows = touched.count().await.map_err(&df_err)?;
    if touched_rows as u64 > state_rows / 2 && touched_rows > 10_000 {
        return Ok(Err(format!(
            "the change data feed touches {touched_rows} keys, more than half of the {state_rows} \
             in sync (reading the whole table costs less)"
        )));
    }
    keep(
        ctx,
        PREV,
        &format!("SELECT p.* FROM {TOUCHED} t JOIN bf_prev p ON p.__bf_key = t.__bf_key"),
    )
    .await
    .map_err(&df_err)?;
    let net = ctx
        .sql(&format!(
            "WITH counted AS ( \
               SELECT __bf_key, __bf_hash, CAST(1 AS BIGINT) AS w, CAST(0 AS BIGINT) AS st \
               FROM {ADDED} WHERE __bf_key IS NOT NULL \
               UNION ALL \
               SELECT __bf_key, __bf_hash, CAST(-1 AS BIGINT), CAST(0 AS BIGINT) \
               FROM {REMOVED} WHERE __bf_key IS NOT NULL \
               UNION ALL \
               SELECT __bf_key, __bf_hash, CAST(1 AS BIGINT), CAST(1 AS BIGINT) FROM {PREV}) \
             SELECT __bf_key, __bf_hash, SUM(w) AS __bf_n, MAX(st) AS __bf_st \
             FROM counted GROUP BY __bf_key, __bf_hash"
        ))
        .await
        .map_err(&df_err)?;
    ctx.register_table(NET, net.into_view()).map_err(&df_err)?;
    let keys = ctx
        .sql(&format!(
            "SELECT __bf_key, \
                    SUM(CASE WHEN __bf_n > 0 THEN __bf_n ELSE 0 END) AS __bf_total, \
                    MIN(__bf_n) AS __bf_least, \
                    MAX(CASE WHEN __bf_n > 0 THEN __bf_st ELSE 0 END) AS __bf_kept \
             FROM {NET} GROUP BY __bf_key"
        ))
        .await
        .map_err(&df_err)?;
    ctx.register_table(KEYS, keys.into_view())
        .map_err(&df_err)?;
    // The check reads the feed: a file it names that is gone (a vacuum) shows up here, and
    // the run reads the whole table instead.
    let check = ctx
        .sql(&format!(
            "SELECT CAST(count(*) FILTER (WHERE __bf_total > 1) AS BIGINT), \
                    CAST(count(*) FILTER (WHERE __bf_least < 0) AS BIGINT) \
             FROM {KEYS}"
        ))
        .await
        .map_err(&df_err)?;
    let counts = match check.collect().await {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("the change data feed cannot be read: {e}"))),
    };
    let count = |column: usize| {
        counts
            .first()
            .and_then(|b| b.column(column).as_primitive_opt::<Int64Type>())
            .map_or(0, |a| a.value(0))
    };
    let (twice, unknown) = (count(0), count(1));
    if twice > 0 {
        return Ok(Err(format!(
            "the change data feed and the state leave {twice} key(s) with more than one row \
             (the table holds a key twice, or the state keeps a record the table deleted, as \
             upsert, create-only and append-only syncs do)"
        )));
    }
    if unknown > 0 {
        return Ok(Err(format!(
            "the change data feed removes rows of {unknown} key(s) that the state does not \
             hold as they were (a create-only sync keeps the first row it sent)"
        )));
    }
    // One row per key left with a row from the feed: the rows added under that key and hash
    // are the same mapped values (a row added twice and removed once), so any one of them is it.
    // (Rows with a NULL key are kept: they are invalid, as in a whole read.)
    let candidates = ctx
        .sql(&format!(
            "SELECT a.* FROM {ADDED} a \
             JOIN {NET} n ON n.__bf_key = a.__bf_key AND n.__bf_hash = a.__bf_hash \
             JOIN {KEYS} k ON k.__bf_key = a.__bf_key \
             WHERE n.__bf_n > 0 AND k.__bf_total = 1 AND k.__bf_kept = 0"
        ))
        .await
        .map_err(&df_err)?;
    let values = candidates
        .schema()
        .fields()
        .iter()
        .filter(|f| f.name() != KEY)
        .map(|f| first_value(ident(f.name()), vec![]).alias(f.name()))
        .collect::<Vec<_>>();
    let settled = candidates
        .aggregate(vec![ident(KEY)], values)
        .and_then(|s| s.select(columns.clone()))
        .map_err(&df_err)?;
    let invalid = ctx
        .table(ADDED)
        .await
        .and_then(|a| a.filter(ident(KEY).is_null()))
        .map_err(&df_err)?;
    let rows = settled.union(invalid).map_err(&df_err)?;
    let deleted = ctx
        .sql(&format!("SELECT __bf_key FROM {KEYS} WHERE __bf_total = 0"))
        .await
        .map_err(&df_err)?;
    let _ = ctx.deregister_table("bf_mapped");
    ctx.register_table("bf_mapped", rows.into_view())
        .map_err(&df_err)?;
    ctx.register_table("bf_deleted", deleted.into_view())
        .map_err(&df_err)?;
    Ok(Ok(()))
}
