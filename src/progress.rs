//! Reporting a run's progress to whoever watches: a bar on a terminal, or nobody.
//!
//! The sync cycle reports rows diffed; destinations that deliver slowly (HTTP APIs) also report
//! what they have queued, delivered and retried, so a long run can show a rate and an ETA.

/// What a destination has done so far in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Records handed to the destination so far.
    pub queued: u64,
    /// Records the destination is done with (accepted or refused).
    pub done: u64,
    /// Requests sent again after a failure, a timeout or a rate limit.
    pub retries: u64,
}

/// Receives progress reports; every method may be called from any task.
pub trait Progress: Send + Sync {
    /// Rows of the diff processed so far.
    fn rows(&self, sync: &str, processed: u64);

    /// Delivery progress of a destination that reports it.
    fn delivery(&self, _sync: &str, _delivery: Delivery) {}
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn rows(&self, _: &str, _: u64) {}
}
