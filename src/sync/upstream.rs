//! The read stage's one hook: a relation that something else makes when the sync runs, instead
//! of a table of the session. The hub's write-backs are such syncs (`hub::writeback`): they
//! read the golden records as of the hub's newest version, and know what each source reported
//! itself, which the diff must not send back to it.
//!
//! The session ([`crate::session`]) installs the hooks as a [`Upstreams`] extension of its
//! DataFusion configuration, by sync name; the cycle asks it for its sync's hook. The generic
//! cycle never needs to know what is behind one.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::project::Project;

/// An error of an upstream, shown as it is.
pub type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the relation a sync reads.
#[async_trait]
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Register the sync's `from` relation in `ctx`, as the upstream is now.
    async fn register(
        &self,
        project: &Project,
        ctx: &SessionContext,
    ) -> Result<Box<dyn UpstreamRead>, UpstreamError>;

    /// Where the ids a destination gives records this sync creates are kept, as each answer
    /// arrives (see [`crate::destinations::WriteTarget::assigned`]). Default: nowhere.
    fn assigned_ids(&self, _project: &Project) -> Option<crate::destinations::AssignedIds> {
        None
    }
}

/// One registration of an upstream relation: the version it was made from, and what the
/// destination itself reported since an earlier version.
#[async_trait]
pub trait UpstreamRead: Send + Sync {
    /// The upstream version the relation was made from (0 when it has none yet). A run
    /// records it; the next run passes it to [`UpstreamRead::reported`].
    fn version(&self) -> u64;

    /// Rows (of the relation's shape) that stand for what the destination holds now, because
    /// the destination itself reported them after upstream version `since` (all of them when
    /// None). The diff compares with them instead of the sync's state, so they are not sent
    /// back. None when what the destination reports cannot stand for what it holds.
    async fn reported(
        &self,
        project: &Project,
        ctx: &SessionContext,
        since: Option<u64>,
    ) -> Result<Option<DataFrame>, UpstreamError>;
}

/// The hooks of a session, by sync name (a DataFusion session-config extension).
#[derive(Debug, Default)]
pub struct Upstreams(HashMap<String, Arc<dyn Upstream>>);

impl Upstreams {
    pub fn new(hooks: impl IntoIterator<Item = (String, Arc<dyn Upstream>)>) -> Self {
        Upstreams(hooks.into_iter().collect())
    }

    /// Make these the hooks of `ctx`.
    pub fn install(self, ctx: &SessionContext) {
        ctx.state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(self));
    }

    /// The hook of `sync` in `ctx`, if it has one.
    pub fn of(ctx: &SessionContext, sync: &str) -> Option<Arc<dyn Upstream>> {
        ctx.state_ref()
            .read()
            .config()
            .get_extension::<Upstreams>()
            .and_then(|u| u.0.get(sync).cloned())
    }
}
