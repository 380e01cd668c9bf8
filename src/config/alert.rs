//! `[alerts.NAME]`: who is told when a sync or entity under `backflow serve` fails, recovers,
//! rejects or leaves out too many records, or has not succeeded for too long (see
//! `serve::alerts`).

use indexmap::IndexMap;
use serde::Deserialize;

/// `[alerts.NAME]`, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AlertConfig {
    /// A JSON POST to a URL (Slack-compatible: the body has a `text` field).
    Webhook(WebhookAlert),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAlert {
    /// The environment variable holding the URL (it often carries a secret).
    pub url_env: String,
    /// The syncs and entities it watches (default: all).
    #[serde(default)]
    pub on: Vec<String>,
    /// When a run fails (or a mirror's run is stopped by the delete guard) after one that did
    /// not (default true).
    #[serde(default = "yes")]
    pub on_failure: bool,
    /// When a run succeeds after a failure that was alerted (default true).
    #[serde(default = "yes")]
    pub on_recovery: bool,
    /// When a run has more rejected records than this: a count, or a share of the rows read
    /// (`"5%"`).
    pub rejected_over: Option<Threshold>,
    /// When a run has more invalid records than this (a count or a share).
    pub invalid_over: Option<Threshold>,
    /// When no run has succeeded for this long (`"2h"`), counted from the last success or,
    /// for one that never succeeded, from the server's start.
    pub no_success_for: Option<String>,
    /// How long one delivery may take (default `"10s"`).
    pub timeout: Option<String>,
}

fn yes() -> bool {
    true
}

impl AlertConfig {
    pub fn webhook(&self) -> &WebhookAlert {
        match self {
            AlertConfig::Webhook(w) => w,
        }
    }
}

/// A count of records, or a share of the rows a run read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Count(u64),
    /// Percent, 0 to 100.
    Share(f64),
}

impl Threshold {
    /// Whether `n` of `read` rows is over it.
    pub fn exceeded(&self, n: u64, read: u64) -> bool {
        match *self {
            Threshold::Count(c) => n > c,
            Threshold::Share(p) => read > 0 && (n as f64) * 100.0 > p * (read as f64),
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Share(p) => write!(f, "{p}% of the rows read"),
            Threshold::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Threshold;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count such as 10, or a share of the rows read such as \"5%\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Threshold, E> {
                u64::try_from(v)
                    .map(Threshold::Count)
                    .map_err(|_| E::custom("a threshold must not be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Threshold, E> {
                Ok(Threshold::Count(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Threshold, E> {
                v.trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .map(Threshold::Share)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "\"{v}\": use a share from \"0%\" to \"100%\", or a count such as 10"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

/// Problems with the alerts, found without I/O (the URL's variable is checked by `serve`).
pub fn validate(alerts: &IndexMap<String, AlertConfig>, targets: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, alert) in alerts {
        let w = alert.webhook();
        let at = format!("[alerts.{name}]");
        if w.url_env.trim().is_empty() {
            problems.push(format!(
                "{at}: url_env names the environment variable holding the webhook's URL"
            ));
        }
        for t in &w.on {
            if !targets.contains(t) {
                problems.push(format!(
                    "{at}: `on` names \"{t}\", which is no sync or entity{}",
                    crate::names::suggest(t, targets.iter().map(String::as_str))
                ));
            }
        }
        for (setting, value) in [
            ("no_success_for", &w.no_success_for),
            ("timeout", &w.timeout),
        ] {
            if let Some(v) = value
                && crate::duration::parse(v).is_none_or(|d| d.is_zero())
            {
                problems.push(format!(
                    "{at}: {setting} = \"{v}\" is not a duration (\"30s\", \"2h\")"
                ));
            }
        }
        let nothing = !w.on_failure
            && !w.on_recovery
            && w.rejected_over.is_none()
            && w.invalid_over.is_none()
            && w.no_success_for.is_none();
        if nothing {
            problems.push(format!(
                "{at}: it watches for nothing (on_failure and on_recovery are off, and no \
                 rejected_over, invalid_over or no_success_for)"
            ));
        }
    }
    problems
}
