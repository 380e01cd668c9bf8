//! When a sync or an entity runs by itself under `backflow serve`: its `schedule` (a cron
//! line in a time zone, an interval, or continuously), or `after` other syncs and entities (a
//! sequence). `check` validates them, `plan` and the server's API show each one's next run.
//!
//! A schedule says when a run is *due*; what happens then (a run, or a skip because the last
//! one is still going) is the server's business (see `serve::scheduler`). After downtime a
//! schedule is due once, not once per missed tick: [`Schedule::next_after`] always answers
//! from the time it is asked.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::ProjectConfig;

/// How often a sync or entity runs by itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Only when asked (`backflow run`, the API, the page).
    Manual,
    /// At the times a 5-field cron line names, in a time zone.
    Cron {
        line: String,
        cron: Box<croner::Cron>,
        tz: chrono_tz::Tz,
    },
    /// Every so often, counted from the start of the last tick.
    Every(Duration),
    /// Back to back: the next run starts when the last one ended, and no sooner than
    /// `min_interval` (default 10s) after the last one started.
    Continuous { min_interval: Duration },
}

/// The timing settings of a sync or entity, as written in `backflow.toml`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimingConfig<'a> {
    pub schedule: Option<&'a str>,
    pub schedule_tz: Option<&'a str>,
    pub min_interval: Option<&'a str>,
    pub after: &'a [String],
}

/// A continuous schedule's shortest time between two starts when it sets none: back to back
/// for runs that take longer, and no history file every few milliseconds for runs that find
/// nothing to do (`min_interval = "0s"` asks for that).
pub const CONTINUOUS_DEFAULT: Duration = Duration::from_secs(10);

/// The shortest interval: a schedule that fires more often would be mostly skips.
const SHORTEST: Duration = Duration::from_secs(1);

impl Schedule {
    /// Parse the settings of one sync or entity; the error says what to write instead.
    pub fn parse(t: TimingConfig<'_>) -> Result<Schedule, String> {
        let Some(text) = t.schedule.map(str::trim) else {
            for (set, name) in [
                (t.schedule_tz, "schedule_tz"),
                (t.min_interval, "min_interval"),
            ] {
                if set.is_some() {
                    return Err(format!("{name} is set but there is no schedule"));
                }
            }
            return Ok(Schedule::Manual);
        };
        if t.min_interval.is_some() && text != "continuous" {
            return Err(
                "min_interval is for schedule = \"continuous\" (the shortest time between two \
                 starts)"
                    .into(),
            );
        }
        if t.schedule_tz.is_some() && (text == "continuous" || text.starts_with("every ")) {
            return Err("schedule_tz is for a cron schedule (\"0 6 * * *\")".into());
        }
        if text == "continuous" {
            let min_interval = match t.min_interval {
                Some(m) => duration(m, "min_interval")?,
                None => CONTINUOUS_DEFAULT,
            };
            return Ok(Schedule::Continuous { min_interval });
        }
        if let Some(every) = text.strip_prefix("every ") {
            let d = duration(every.trim(), "schedule")?;
            if d < SHORTEST {
                return Err(format!("schedule \"{text}\": the shortest interval is 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "schedule \"{text}\" is not a cron line of 5 fields (minute hour day-of-month \
                 month day-of-week, e.g. \"*/15 * * * *\"), \"every 30s\", or \"continuous\""
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| format!("schedule \"{text}\" is not a valid cron line: {e}"))?;
        let tz = match t.schedule_tz {
            Some(name) => chrono_tz::Tz::from_str(name.trim()).map_err(|_| {
                format!(
                    "schedule_tz \"{name}\" is not a time zone of the IANA database (such as \
                     \"Europe/Berlin\" or \"UTC\")"
                )
            })?,
            None => chrono_tz::Tz::UTC,
        };
        // A line that can never fire (30 February) is a mistake, not a manual schedule.
        cron.find_next_occurrence(&Utc::now().with_timezone(&tz), false)
            .map_err(|e| format!("schedule \"{text}\" never fires: {e}"))?;
        Ok(Schedule::Cron {
            line: text.to_string(),
            cron: Box::new(cron),
            tz,
        })
    }

    /// When the next run is due, asked at `now`, for a target whose last run started at
    /// `last_start` and ended at `last_end` (None: never, or not since this server started).
    /// Missed ticks are not made up: the answer is never before `now` for a cron line, and an
    /// interval overdue by several periods is due once, now.
    pub fn next_after(
        &self,
        now: DateTime<Utc>,
        last_start: Option<DateTime<Utc>>,
        last_end: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Manual => None,
            Schedule::Cron { cron, tz, .. } => cron
                .find_next_occurrence(&now.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(d) => Some(match last_start {
                Some(s) => (s + *d).max(now),
                None => now,
            }),
            Schedule::Continuous { min_interval } => Some(match (last_start, last_end) {
                (Some(s), Some(e)) => (s + *min_interval).max(e).max(now),
                _ => now,
            }),
        }
    }

    /// The schedule as people read it.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Manual => "manual".into(),
            Schedule::Cron { line, tz, .. } => format!("cron \"{line}\" ({tz})"),
            Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
            Schedule::Continuous { min_interval } if min_interval.is_zero() => "continuous".into(),
            Schedule::Continuous { min_interval } => format!(
                "continuous (at most one start every {})",
                humantime::format_duration(*min_interval)
            ),
        }
    }
}

fn duration(text: &str, setting: &str) -> Result<Duration, String> {
    crate::duration::parse(text).ok_or_else(|| {
        format!("{setting} \"{text}\" is not a duration (\"30s\", \"5m\", \"2h\", \"1d\")")
    })
}

/// What can be scheduled: every sync but the write-backs the hub makes (they run with their
/// entity), and every entity; each with its timing settings. Entities first, in file order.
pub fn targets(config: &ProjectConfig) -> Vec<(String, TimingConfig<'_>)> {
    let entities = config.entities.iter().map(|(n, e)| {
        (
            n.clone(),
            TimingConfig {
                schedule: e.schedule.as_deref(),
                schedule_tz: e.schedule_tz.as_deref(),
                min_interval: e.min_interval.as_deref(),
                after: &e.after,
            },
        )
    });
    let syncs = config
        .syncs
        .iter()
        .filter(|(_, s)| s.hub.is_none())
        .map(|(n, s)| {
            (
                n.clone(),
                TimingConfig {
                    schedule: s.schedule.as_deref(),
                    schedule_tz: s.schedule_tz.as_deref(),
                    min_interval: s.min_interval.as_deref(),
                    after: &s.after,
                },
            )
        });
    entities.chain(syncs).collect()
}

/// Every problem with the schedules and sequences of a project: settings that do not parse,
/// `after` naming something unknown, and cycles.
pub fn validate(config: &ProjectConfig) -> Vec<String> {
    let targets = targets(config);
    let known: BTreeMap<&str, &[String]> =
        targets.iter().map(|(n, t)| (n.as_str(), t.after)).collect();
    let kind = |name: &str| {
        if config.entities.contains_key(name) {
            "entity"
        } else {
            "sync"
        }
    };
    let mut problems = Vec::new();
    for (name, t) in &targets {
        let at = format!("{} \"{name}\"", kind(name));
        if let Err(e) = Schedule::parse(*t) {
            problems.push(format!("{at}: {e}"));
        }
        if !t.after.is_empty() && t.schedule.is_some() {
            problems.push(format!(
                "{at}: has both a schedule and `after`; a sync or entity with `after` runs when \
                 those finish, so remove one of the two"
            ));
        }
        for a in t.after {
            if a == name {
                problems.push(format!("{at}: `after` names itself"));
            } else if !known.contains_key(a.as_str()) {
                let writeback = config.syncs.get(a).and_then(|s| s.hub.as_ref());
                problems.push(match writeback {
                    Some(link) => format!(
                        "{at}: `after` names \"{a}\", a write-back of entity \"{}\"; name the \
                         entity instead (its write-backs run with it)",
                        link.entity
                    ),
                    None => format!(
                        "{at}: `after` names \"{a}\", which is no sync or entity{}",
                        crate::names::suggest(a, known.keys().copied())
                    ),
                });
            }
        }
    }
    // A cycle: depth-first search from every target, reporting each cycle once.
    let mut reported: Vec<Vec<&str>> = Vec::new();
    for (name, _) in &targets {
        let mut path: Vec<&str> = vec![name.as_str()];
        if let Some(cycle) = find_cycle(&known, &mut path) {
            // (The same cycle found from each of its members is reported once.)
            let mut sorted = cycle[1..].to_vec();
            sorted.sort();
            if !reported.contains(&sorted) {
                reported.push(sorted);
                problems.push(format!(
                    "`after` makes a cycle: {} (each would wait for the other for ever)",
                    cycle.join(" → ")
                ));
            }
        }
    }
    problems
}

/// A cycle reachable from the end of `path` that returns to an element of it.
fn find_cycle<'a>(
    graph: &BTreeMap<&'a str, &'a [String]>,
    path: &mut Vec<&'a str>,
) -> Option<Vec<&'a str>> {
    let last = *path.last()?;
    for next in graph.get(last).copied().unwrap_or_default() {
        let next = next.as_str();
        if !graph.contains_key(next) || next == last {
            continue;
        }
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut cycle = path[i..].to_vec();
            cycle.push(next);
            return Some(cycle);
        }
        // Paths never grow past the number of targets (a repeat is a cycle, found above).
        path.push(next);
        let found = find_cycle(graph, path);
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn parse(schedule: &str) -> Result<Schedule, String> {
        Schedule::parse(TimingConfig {
            schedule: Some(schedule),
            ..Default::default()
        })
    }

    #[test]
    fn schedules_parse_or_say_why_not() {
        assert_eq!(
            parse("every 30s").unwrap(),
            Schedule::Every(Duration::from_secs(30))
        );
        assert!(matches!(
            parse("continuous").unwrap(),
            Schedule::Continuous { .. }
        ));
        assert!(matches!(
            parse("*/15 * * * *").unwrap(),
            Schedule::Cron { .. }
        ));
        assert!(parse("* * * * * *").unwrap_err().contains("5 fields"));
        assert!(
            parse("61 * * * *")
                .unwrap_err()
                .contains("not a valid cron")
        );
        assert!(parse("every soon").unwrap_err().contains("not a duration"));
        assert!(parse("every 0s").unwrap_err().contains("shortest"));
        assert!(parse("0 0 30 2 *").unwrap_err().contains("never fires"));
        let tz = Schedule::parse(TimingConfig {
            schedule: Some("0 6 * * *"),
            schedule_tz: Some("Mars/Olympus"),
            ..Default::default()
        });
        assert!(tz.unwrap_err().contains("IANA"));
        let lonely = Schedule::parse(TimingConfig {
            min_interval: Some("1m"),
            ..Default::default()
        });
        assert!(lonely.unwrap_err().contains("no schedule"));
    }

    #[test]
    fn cron_lines_follow_their_time_zone() {
        let s = Schedule::parse(TimingConfig {
            schedule: Some("0 6 * * *"),
            schedule_tz: Some("Europe/Berlin"),
            ..Default::default()
        })
        .unwrap();
        // 6:00 in Berlin is 5:00 UTC in winter and 4:00 UTC in summer.
        let winter = Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 3, 0, 0, 0).unwrap();
        assert_eq!(
            s.next_after(winter, None, None).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 3, 5, 0, 0).unwrap()
        );
        assert_eq!(
            s.next_after(summer, None, None).unwrap(),
            Utc.with_ymd_and_hms(2026, 7, 3, 4, 0, 0).unwrap()
        );
    }

    #[test]
    fn missed_ticks_are_due_once_now() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
        let long_ago = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let every = Schedule::Every(Duration::from_secs(30));
        assert_eq!(every.next_after(now, Some(long_ago), None), Some(now));
        let recent = now - chrono::Duration::seconds(10);
        assert_eq!(
            every.next_after(now, Some(recent), None),
            Some(now + chrono::Duration::seconds(20))
        );
        let cont = Schedule::Continuous {
            min_interval: Duration::from_secs(60),
        };
        let ended = now - chrono::Duration::seconds(5);
        assert_eq!(
            cont.next_after(now, Some(ended - chrono::Duration::seconds(1)), Some(ended)),
            Some(now + chrono::Duration::seconds(54))
        );
        assert_eq!(Schedule::Manual.next_after(now, None, None), None);
    }
}
