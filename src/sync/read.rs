//! The read stage: the relation a sync reads (a table of the session, or what its upstream
//! hook makes), and the incremental read of a cursor sync: the rows at or past its watermark,
//! a filter DataFusion pushes through the mapping down to the scan (for a database source, into
//! the SQL the server runs).

use arrow::datatypes::DataType;
use datafusion::prelude::{DataFrame, ident, lit};

use super::map::CURSOR;
use super::upstream::{UpstreamRead, Upstreams};
use super::{SyncError, SyncRef, engine, watermark};
use crate::state::Manifest;

/// How much of the model a run reads, which decides what the diff can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every row: a key in state that the model lacks is gone.
    Whole,
    /// Some rows (those past a cursor's watermark, or a test run's sample): no key is gone.
    Part,
    /// The rows a source's change feed says changed since the state's version, and the keys it
    /// says were deleted (`bf_deleted`, see `changes`): only those keys are compared.
    Changes,
}

/// What a run reads.
pub(super) struct Read {
    pub relation: DataFrame,
    /// The cursor column's type (None without a cursor, or when the column is missing: the
    /// map stage names it).
    pub cursor_type: Option<DataType>,
    /// The upstream registration, for a sync whose relation is made by a hook.
    pub upstream: Option<Box<dyn UpstreamRead>>,
    /// The change feed of the source the sync reads, when it reads one that records its
    /// changes (see `changes`).
    pub feed: Option<std::sync::Arc<dyn crate::sources::change_feed::ChangeFeed>>,
}

/// The sync's `from`, registered by its upstream hook first when it has one.
pub(super) async fn relation(sync: &SyncRef<'_>) -> Result<Read, SyncError> {
    let upstream = match Upstreams::of(sync.ctx, sync.name) {
        Some(hook) => Some(
            hook.register(sync.project, sync.ctx)
                .await
                .map_err(|source| SyncError::Upstream {
                    sync: sync.name.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let from = sync.config.from.as_str();
    let relation = match sync.ctx.table(from).await {
        Ok(r) => r,
        Err(e) => {
            return Err(match missing_table(sync, from) {
                Some((source, message)) => SyncError::Settings {
                    sync: sync.name.to_string(),
                    message: format!("source \"{source}\": {message}"),
                },
                None => engine(sync.name, "read")(e),
            });
        }
    };
    let cursor_type = sync.config.cursor.as_ref().and_then(|c| {
        relation
            .schema()
            .field_with_unqualified_name(c)
            .ok()
            .map(|f| f.data_type().clone())
    });
    let feed = crate::sources::change_feed::ChangeFeeds::of(sync.ctx, from);
    Ok(Read {
        relation,
        cursor_type,
        upstream,
        feed,
    })
}

/// Why `SOURCE.table` is not a table, when its source knows: the source's own warning (a dbt
/// model not built yet), or a dbt manifest without that name. The source's name and the reason.
fn missing_table<'a>(sync: &SyncRef<'_>, from: &'a str) -> Option<(&'a str, String)> {
    let (source, table) = from.split_once('.')?;
    let needle = format!("{} cannot be read", from.to_lowercase());
    let warned = sync
        .project
        .source_warnings
        .lock()
        .ok()
        .and_then(|w| w.get(source)?.iter().find(|w| w.contains(&needle)).cloned());
    if let Some(w) = warned {
        return Some((source, w));
    }
    match sync.project.config.sources.get(source)? {
        crate::sources::SourceConfig::Dbt(c) => Some((
            source,
            format!(
                "dbt manifest {} has no model, seed or snapshot named {table} (dbt names are \
                 read in lower case); run `dbt compile` after adding it",
                c.manifest
            ),
        )),
        _ => None,
    }
}

/// The mapped rows a run reads: those at or past the stored watermark (moved back by
/// `cursor_lookback`) for a cursor sync that does not read everything again (`rescan`); all
/// of them otherwise. Ties at the watermark are read again and dropped by the diff when
/// unchanged.
pub(super) fn incremental(
    sync: &SyncRef<'_>,
    mapped: DataFrame,
    cursor_type: Option<&DataType>,
    previous: Option<&Manifest>,
    rescan: bool,
) -> Result<DataFrame, SyncError> {
    let (Some(cursor_type), Some(wm), false) = (
        cursor_type,
        previous.and_then(|p| p.watermark.as_ref()),
        rescan,
    ) else {
        return Ok(mapped);
    };
    let mut value = watermark::stored(sync.name, wm, cursor_type)?;
    if let Some(lookback) = &sync.config.cursor_lookback {
        value = watermark::behind(value, lookback).map_err(|message| SyncError::Settings {
            sync: sync.name.to_string(),
            message,
        })?;
    }
    mapped
        .filter(ident(CURSOR).gt_eq(lit(value)))
        .map_err(engine(sync.name, "read"))
}
