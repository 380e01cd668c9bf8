//! Connections to database servers (PostgreSQL, MySQL/MariaDB), shared by sources and
//! destinations. A connection URL always comes from an environment variable named in the project
//! file (`url_env`), is parsed once, and never appears in a message: errors name the variable
//! and the server (host, port, database), never the user's password.

pub mod mysql;
pub mod postgres;

use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("environment variable {var} is not set (it should hold the connection URL)")]
    UrlNotSet { var: String },
    #[error("environment variable {var} does not hold a valid connection URL: {reason}")]
    BadUrl { var: String, reason: String },
    #[error("cannot connect to {server} (URL from {var}): {reason}")]
    Connect {
        var: String,
        server: String,
        reason: String,
    },
    #[error("{server}: {reason}")]
    Query { server: String, reason: String },
}

/// The value of the environment variable holding a connection URL.
pub fn url_from_env(var: &str) -> Result<String, DatabaseError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(DatabaseError::UrlNotSet {
            var: var.to_string(),
        }),
    }
}

static OFFLINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Validate projects without their servers (`check --offline`): a `url_env` must still be
/// named, but need not be set.
pub fn set_offline() {
    OFFLINE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Problems with a `url_env` setting, found without I/O: the variable must be named and (unless
/// validating offline) set.
pub fn validate_url_env(var: &str) -> Vec<String> {
    if var.trim().is_empty() {
        return vec!["url_env is empty (name the environment variable holding the URL)".into()];
    }
    if OFFLINE.load(std::sync::atomic::Ordering::Relaxed) {
        return vec![];
    }
    match url_from_env(var) {
        Ok(_) => vec![],
        Err(e) => vec![e.to_string()],
    }
}

/// How long a destination's statement waits for a lock another session holds, unless its
/// `lock_timeout` says otherwise.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long one statement may run on a PostgreSQL destination unless its `statement_timeout`
/// says otherwise.
pub const DEFAULT_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// A duration setting (`lock_timeout = "30s"`), or `default` when it is not set.
pub fn wait_setting(value: Option<&str>, default: std::time::Duration) -> std::time::Duration {
    value
        .and_then(crate::duration::parse)
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

/// Problems with a duration setting named `key`.
pub fn validate_wait(key: &str, value: Option<&str>) -> Vec<String> {
    match value {
        Some(v) if crate::duration::parse(v).is_none_or(|d| d.is_zero()) => vec![format!(
            "{key} = \"{v}\" is not a duration above zero (e.g. \"30s\", \"5m\")"
        )],
        _ => vec![],
    }
}

/// `text` with every occurrence of each non-empty secret replaced by `***`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 3 {
            out = out.replace(s, "***");
        }
    }
    out
}

/// The outcome of applying rows `range` of a batch: an error either concerns some row of the
/// range (the database refused a value or a constraint), or the connection or statement as a
/// whole.
pub enum Attempt<T> {
    Done(T),
    /// The database refused a row of the range; the message is the database's.
    RowError(String),
}

/// Bisection of a batch whose rows the database may refuse: each range handed out is applied in
/// its own transaction; when the database refuses a row of a range, the range is split in
/// halves and each half tried again, down to single rows, which are then refused with the
/// database's message. One bad row costs O(log n) extra round trips and the rest of the batch
/// still lands.
///
/// ```text
/// let mut b = Bisect::new(rows);
/// while let Some(range) = b.next_range() {
///     match attempt(range.clone()).await? {
///         Attempt::Done(x) => done.push(x),
///         Attempt::RowError(message) => b.refused(range, message),
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Bisect {
    todo: Vec<Range<usize>>,
    refused: Vec<(usize, String)>,
}

impl Bisect {
    pub fn new(rows: usize) -> Bisect {
        Bisect {
            todo: std::iter::once(0..rows).filter(|r| !r.is_empty()).collect(),
            refused: Vec::new(),
        }
    }

    /// The next range to try, lower rows first.
    pub fn next_range(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// The database refused some row of `range` (which was rolled back).
    pub fn refused(&mut self, range: Range<usize>, message: String) {
        if range.len() <= 1 {
            self.refused.push((range.start, message));
        } else {
            let mid = range.start + range.len() / 2;
            self.todo.push(mid..range.end);
            self.todo.push(range.start..mid);
        }
    }

    /// Try `range` again as it is (it was rolled back for a reason other than its rows).
    pub fn again(&mut self, range: Range<usize>) {
        if !range.is_empty() {
            self.todo.push(range);
        }
    }

    /// The rows refused, by index, with the database's message.
    pub fn into_refused(mut self) -> Vec<(usize, String)> {
        self.refused.sort_by_key(|(row, _)| *row);
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_secrets() {
        assert_eq!(
            redact("bad url postgres://u:hunter2@h/db", &["hunter2"]),
            "bad url postgres://u:***@h/db"
        );
        assert_eq!(redact("a", &[""]), "a");
    }

    #[test]
    fn bisect_isolates_bad_rows() {
        let bad = [3usize, 4, 17];
        let mut b = Bisect::new(20);
        let mut calls = 0;
        let mut landed = Vec::new();
        while let Some(r) = b.next_range() {
            calls += 1;
            if bad.iter().any(|x| r.contains(x)) {
                b.refused(r, "refused".into());
            } else {
                landed.extend(r);
            }
        }
        let refused: Vec<usize> = b.into_refused().into_iter().map(|(r, _)| r).collect();
        assert_eq!(refused, vec![3, 4, 17]);
        landed.sort();
        let expected: Vec<usize> = (0..20).filter(|r| !bad.contains(r)).collect();
        assert_eq!(landed, expected);
        assert!(calls < 40, "{calls} attempts");
        assert!(Bisect::new(0).next_range().is_none());
    }
}
