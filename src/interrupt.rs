//! SIGINT and SIGTERM during `backflow run`: the first asks the run to stop at the next safe
//! point (before the next batch of the diff, before the next HTTP request), so that the sync
//! in progress ends as a failed run would (nothing committed that was not sent; what was sent
//! is in the intent log and checked by the next run), is recorded in history as `interrupted`,
//! and the syncs not yet started are not started. A second signal ends the process at once
//! (exit 130), as a kill would; state stays readable either way.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Whether the lines below go out as JSON (`--log-format json`).
static JSON: AtomicBool = AtomicBool::new(false);
static STOPPED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Say what a signal did as JSON log lines (`--log-format json`) instead of text.
pub fn json_lines(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// A line to stderr, whatever the log level: a stop is always worth saying.
fn say(message: &str) {
    let line = if JSON.load(Ordering::Relaxed) {
        serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "WARN",
            "fields": { "message": message },
            "target": "backflow::interrupt",
        })
        .to_string()
    } else {
        message.to_string()
    };
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// Wait until a stop is asked for (at once when it was).
pub async fn stopped() {
    loop {
        let notified = STOPPED.notified();
        if requested() {
            return;
        }
        notified.await;
    }
}

/// Ask for a stop, as the first signal does.
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
    STOPPED.notify_waiters();
}

/// The message of a run that stopped because of it.
pub const MESSAGE: &str = "interrupted (SIGINT or SIGTERM): stopped before the next batch; nothing was committed that \
     was not sent, and the next run picks up from the last commit";

/// Listen for SIGINT and SIGTERM on the current runtime.
pub fn listen() {
    tokio::spawn(async {
        let mut signals = 0;
        loop {
            if !wait().await {
                return;
            }
            signals += 1;
            if signals > 1 {
                say("second signal: exiting now");
                std::process::exit(130);
            }
            request();
            say("stopping at the next safe point (send the signal again to exit at once)");
        }
    });
}

/// The next SIGINT or SIGTERM; false when signals cannot be listened for.
async fn wait() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return false;
        };
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
