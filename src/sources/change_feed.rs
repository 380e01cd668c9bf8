//! Sources that can say what changed: a table that records its changes between versions (a
//! Delta table with Change Data Feed) offers a [`ChangeFeed`], and a sync that reads that
//! source directly reads only the changes since the version its last run read (see
//! `sync::changes`). The session keeps the feeds as a [`ChangeFeeds`] extension, by source name.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};

/// The column a change feed names each change's kind in: `insert`, `update_preimage`,
/// `update_postimage` or `delete`.
pub const CHANGE_TYPE: &str = "_change_type";

/// A table whose changes between two of its versions can be read.
#[async_trait]
pub trait ChangeFeed: Send + Sync + std::fmt::Debug {
    /// The version the session reads (the table as a run sees it).
    fn version(&self) -> u64;

    /// What tells this table from another one later put at the same place (a Delta table's
    /// id): versions of different tables are not comparable.
    fn table_id(&self) -> String;

    /// The rows that changed after version `since`, up to [`ChangeFeed::version`]: the table's
    /// columns plus [`CHANGE_TYPE`] (others may follow). `Err` says why
    /// the table cannot tell (its feed was off for part of that range, or the log of those
    /// versions is gone): the caller reads the whole table instead.
    async fn changes(&self, ctx: &SessionContext, since: u64) -> Result<DataFrame, String>;
}

/// The change feeds of a session's sources, by source name.
#[derive(Debug, Default, Clone)]
pub struct ChangeFeeds(HashMap<String, Arc<dyn ChangeFeed>>);

impl ChangeFeeds {
    pub fn insert(&mut self, source: &str, feed: Arc<dyn ChangeFeed>) {
        self.0.insert(source.to_string(), feed);
    }

    /// Make the feeds known to `ctx`.
    pub fn install(self, ctx: &SessionContext) {
        ctx.state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(self));
    }

    /// The feed of the table `name` in `ctx` (a source's own name), if it has one.
    pub fn of(ctx: &SessionContext, name: &str) -> Option<Arc<dyn ChangeFeed>> {
        ctx.state_ref()
            .read()
            .config()
            .get_extension::<ChangeFeeds>()
            .and_then(|f| f.0.get(name).cloned())
    }
}
