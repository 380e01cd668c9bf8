//! The terminal's progress display during `run`.

use std::sync::Mutex;
use std::time::Duration;

use crate::sync::{self, Progress};

/// retries and ETA once a destination reports delivery (HTTP APIs). Nothing otherwise.
pub(super) struct TerminalProgress {
    bar: Option<Mutex<Option<(indicatif::ProgressBar, bool)>>>,
}

impl TerminalProgress {
    pub(super) fn new(enabled: bool) -> Self {
        TerminalProgress {
            bar: enabled.then(|| Mutex::new(None)),
        }
    }
    pub(super) fn done(&self) {
        if let Some(m) = &self.bar
            && let Ok(mut b) = m.lock()
            && let Some((bar, _)) = b.take()
        {
            bar.finish_and_clear();
        }
    }

    /// The bar, created on first use; `delivering` switches it to the delivery layout.
    fn with_bar(&self, sync: &str, delivering: bool, f: impl FnOnce(&indicatif::ProgressBar)) {
        let Some(m) = &self.bar else { return };
        let Ok(mut b) = m.lock() else { return };
        let (bar, shows_delivery) = b.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_prefix(sync.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            set_template(
                &bar,
                "{spinner} {prefix}: {human_pos} rows diffed ({rate}, {elapsed})",
            );
            (bar, false)
        });
        if delivering && !*shows_delivery {
            *shows_delivery = true;
            bar.reset();
            set_template(
                bar,
                "{spinner} {prefix}: {human_pos}/{human_len} records sent ({rate}, {msg} retries, ETA {eta})",
            );
        }
        f(bar);
    }
}

fn set_template(bar: &indicatif::ProgressBar, template: &str) {
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        ));
    }
}

impl Progress for TerminalProgress {
    fn rows(&self, sync: &str, processed: u64) {
        self.with_bar(sync, false, |bar| {
            if bar.length().is_none() {
                bar.set_position(processed);
            }
        });
    }

    fn delivery(&self, sync: &str, d: sync::Delivery) {
        self.with_bar(sync, true, |bar| {
            bar.set_length(d.queued);
            bar.set_position(d.done);
            bar.set_message(d.retries.to_string());
        });
    }
}
