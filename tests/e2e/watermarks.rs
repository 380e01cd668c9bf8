//! Watermark edge cases: rows tied at the watermark, late rows with an old cursor value (seen
//! with a lookback, never sent twice), a cursor that moves backwards.

use crate::common::*;

fn events(rows: &[(i64, i64, &str)]) -> String {
    let mut csv = String::from("id,seq,name\n");
    for (id, seq, name) in rows {
        csv.push_str(&format!("{id},{seq},{name}\n"));
    }
    csv
}

fn project(f: &Fixture, lookback: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.events]
type = "csv"
path = "events.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.plain]
from = "events"
to = "app"
object = "plain"
behavior = "upsert"
key = "id"
cursor = "seq"

[syncs.lookback]
from = "events"
to = "app"
object = "lookback"
behavior = "upsert"
key = "id"
cursor = "seq"
{lookback}
"#
        ),
    );
}

#[tokio::test]
async fn ties_late_rows_and_a_lookback() {
    let f = Fixture::new();
    project(&f, "cursor_lookback = 5");
    let mut rows: Vec<(i64, i64, &str)> = (1..=10).map(|i| (i, i, "v1")).collect();
    f.write("events.csv", &events(&rows));
    for s in ["plain", "lookback"] {
        let r = f.run_ok(s).await;
        assert_eq!((r.counts.created, r.watermark.as_deref()), (10, Some("10")));
    }
    // A row tied at the watermark, a late row inside the lookback window, one outside it.
    rows.push((11, 10, "tie"));
    rows.push((12, 7, "late"));
    rows.push((13, 2, "very late"));
    f.write("events.csv", &events(&rows));

    let r = f.run_ok("plain").await;
    // Without a lookback: the tie is seen (>=), the late rows are not.
    assert_eq!(
        (r.counts.read, r.counts.created, r.counts.unchanged),
        (2, 1, 1),
        "{r:?}"
    );
    let r = f.run_ok("lookback").await;
    // seq >= 10 - 5: rows 5..10 again (unchanged, not sent), the tie and the late row.
    assert_eq!(
        (r.counts.read, r.counts.created, r.counts.unchanged),
        (8, 2, 6),
        "{r:?}"
    );
    let names = pairs(&f.sqlite("out/app.db", "lookback"), "id", "name");
    assert!(names.contains(&("12".into(), "late".into())));
    assert!(!names.iter().any(|(id, _)| id == "13"));
    // Nothing is sent twice: a re-run reads the window again and sends nothing.
    let r = f.run_ok("lookback").await;
    assert_eq!(r.counts.created + r.counts.updated, 0, "{r:?}");
    assert_eq!(r.watermark.as_deref(), Some("10"));

    // The cursor moves backwards for a row that changes: the row is read only within the
    // window, and the watermark never goes back.
    rows[9] = (10, 6, "moved back");
    f.write("events.csv", &events(&rows));
    let r = f.run_ok("lookback").await;
    assert_eq!(r.counts.updated, 1, "{r:?}");
    assert_eq!(r.watermark.as_deref(), Some("10"));
}

#[tokio::test]
async fn a_timestamp_cursor_takes_a_duration() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.events]
type = "csv"
path = "events.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.s]
from = "events"
to = "app"
object = "events"
behavior = "upsert"
key = "id"
cursor = "at"
cursor_lookback = "1h"
"#,
    );
    f.write(
        "events.csv",
        "id,at\n1,2026-01-01T10:00:00\n2,2026-01-01T12:00:00\n",
    );
    f.run_ok("s").await;
    f.write(
        "events.csv",
        "id,at\n1,2026-01-01T10:00:00\n2,2026-01-01T12:00:00\n3,2026-01-01T11:30:00\n4,2026-01-01T10:30:00\n",
    );
    let r = f.run_ok("s").await;
    assert_eq!((r.counts.read, r.counts.created), (2, 1), "{r:?}");

    // A number is not a duration: named before anything is read.
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write("backflow.toml", &t.replace("\"1h\"", "\"1 fortnight\""));
    let e = f.load().unwrap_err().to_string();
    assert!(
        e.contains("cursor_lookback") && e.contains("1 fortnight"),
        "{e}"
    );
    f.write("backflow.toml", &t.replace("\"1h\"", "1.5"));
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("cursor_lookback must be a duration"), "{e}");
    f.write("backflow.toml", &t.replace("\"1h\"", "60"));
    let r = f.run_with(&["s"], Default::default()).await.remove(0);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("cursor_lookback = 60") && e.contains("duration"),
        "{e}"
    );
}
