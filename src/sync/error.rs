//! What can stop a sync's run, each naming the sync; and the failpoints tests stop it at.

use datafusion::error::DataFusionError;

use crate::destinations::DestinationError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync \"{sync}\": {}", problems.join("; "))]
    Mapping { sync: String, problems: Vec<String> },
    #[error("sync \"{sync}\": {stage}: {source}")]
    Engine {
        sync: String,
        stage: &'static str,
        source: DataFusionError,
    },
    #[error("sync \"{sync}\": {message}")]
    StateMismatch { sync: String, message: String },
    #[error("sync \"{sync}\": {message}")]
    Settings { sync: String, message: String },
    #[error("sync \"{sync}\": {source}")]
    Destination {
        sync: String,
        source: DestinationError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    /// The relation a sync reads from elsewhere (a hub write-back's) could not be made.
    #[error("sync \"{sync}\": {source}")]
    Upstream {
        sync: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The mass-delete guard stopped the run before it sent anything (see `guard`).
    #[error("sync \"{sync}\": {message}")]
    Guarded { sync: String, message: String },
    #[error("sync \"{sync}\": {}", crate::interrupt::MESSAGE)]
    Interrupted { sync: String },
    #[error("sync \"{sync}\": injected failure at {point}")]
    Failpoint { sync: String, point: &'static str },
}

/// A DataFusion error in `stage` of `sync`.
pub(crate) fn engine(sync: &str, stage: &'static str) -> impl Fn(DataFusionError) -> SyncError {
    let sync = sync.to_string();
    move |source| SyncError::Engine {
        sync: sync.clone(),
        stage,
        source,
    }
}

/// Stop here when the failpoint `point` is configured with this sync's name (or `*`). The
/// failpoint `point:sync` is evaluated too, for actions meant for one sync only (a test pausing
/// one run while other tests' syncs pass the same point). Compiled in only with the
/// `failpoints` feature (tests).
macro_rules! failpoint {
    ($point:expr, $sync:expr) => {
        #[cfg(not(feature = "failpoints"))]
        let _ = &$sync;
        #[cfg(feature = "failpoints")]
        {
            fail::eval(&format!("{}:{}", $point, $sync), |_| ());
            // `return(<sync>)` fails this sync here; `return(panic:<sync>)` panics.
            if let Some(Some(target)) = fail::eval($point, |arg| arg) {
                if target == format!("panic:{}", $sync) {
                    panic!("failpoint {} for sync {}", $point, $sync);
                }
                if target == $sync || target == "*" {
                    return Err($crate::sync::SyncError::Failpoint {
                        sync: $sync.to_string(),
                        point: $point,
                    });
                }
            }
        }
    };
}
pub(crate) use failpoint;
