//! Durations in settings (`"90s"`, `"15m"`, `"2h 30m"`, `"1d"`, `"500ms"`), read by humantime.

use std::time::Duration;

/// Parse a duration written as humantime reads it: one or more `<number><unit>` parts, units
/// from `ns` to `y` (`s`, `m`/`min`, `h`, `d`, `w`, and their long names). `None` when it is
/// not one.
pub fn parse(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_people_write_are_read() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("15min", 900),
            ("2h", 7200),
            ("1d", 86_400),
            ("1w", 604_800),
            (" 3 days ", 259_200),
            ("1h 30m", 5400),
        ] {
            assert_eq!(parse(text), Some(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "15", "m", "-1s", "1 fortnight", "ten minutes"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
