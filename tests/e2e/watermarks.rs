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
    // At the value's own line, quoted.
    assert!(
        e.contains("expected a duration") && e.contains("| cursor_lookback = 1.5"),
        "{e}"
    );
    f.write("backflow.toml", &t.replace("\"1h\"", "60"));
    let r = f.run_with(&["s"], Default::default()).await.remove(0);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("cursor_lookback = 60") && e.contains("duration"),
        "{e}"
    );
}

/// Rows of the cursor-delta tests: (id, name, rev).
type RevModel = Vec<(u32, String, u32)>;

/// An upsert sync `name` with cursor `rev` over 400 rows, run once; returns the model.
async fn rev_project(f: &Fixture, name: &str) -> RevModel {
    people_project(
        f,
        "upsert",
        "cursor = \"rev\"\nfields = { exclude = [\"rev\"] }",
    );
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write("backflow.toml", &toml.replace("people_sync", name));
    let model: RevModel = (0..400).map(|i| (i, format!("n{i}"), 0)).collect();
    write_rev(f, &model);
    f.run_ok(name).await;
    model
}

fn write_rev(f: &Fixture, model: &[(u32, String, u32)]) {
    let mut csv = String::from("id,email,name,plan,rev\n");
    for (id, name, rev) in model {
        csv.push_str(&format!("{id},e{id},{name},p,{rev}\n"));
    }
    f.write("people.csv", &csv);
}

/// The destination holds exactly the model.
fn assert_rev(f: &Fixture, model: &[(u32, String, u32)], when: &str) {
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(rows.len(), model.len(), "{when}");
    for (id, name, _) in model {
        assert!(
            rows.iter()
                .any(|r| r["id"] == id.to_string() && &r["name"] == name),
            "{when}: {id} should be {name}"
        );
    }
}

/// A cursor run adds what it accepted to the state as a delta instead of writing every key
/// again; after a few runs (or when the deltas grow) the next run folds them into a new
/// snapshot. Through both, and a crash in between, the destination stays equal to the model.
#[tokio::test]
async fn cursor_runs_keep_deltas_and_fold_them_into_a_snapshot() {
    let f = Fixture::new();
    let mut model = rev_project(&f, "deltas").await;
    let mut rev = 0;
    let mut most = 0;
    for round in 1..=20u32 {
        rev += 1;
        // A few rows change each round (and one is new).
        for i in 0..5 {
            let at = ((round * 37 + i * 11) % 400) as usize;
            model[at].1 = format!("r{round}-{i}");
            model[at].2 = rev;
        }
        model.push((1000 + round, format!("new{round}"), rev));
        write_rev(&f, &model);
        let r = f.run_ok("deltas").await;
        assert!(r.counts.updated + r.counts.created >= 1, "{r:?}");
        let project = f.load().unwrap();
        let state = project.state.latest("deltas").await.unwrap().unwrap();
        assert_eq!(state.rows, model.len() as u64, "round {round}");
        most = most.max(state.deltas.len());
        assert_rev(&f, &model, &format!("round {round}"));
    }
    // Deltas piled up, and were folded back (at most 16, and a quarter of the state).
    assert!(most >= 5, "deltas were used: {most}");
    let project = f.load().unwrap();
    let state = project.state.latest("deltas").await.unwrap().unwrap();
    assert!(
        state.deltas.len() < most,
        "folded: {} then {}",
        most,
        state.deltas.len()
    );
    // Nothing changed: nothing sent, the state as it was.
    let r = f.run_ok("deltas").await;
    assert_eq!(r.counts.updated + r.counts.created, 0, "{r:?}");
}

/// Cursor runs that die (before or after their commit) while the state holds deltas: the
/// rerun ends with the destination equal to the model and the state's key count exact.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_cursor_run_that_dies_with_deltas_in_its_state_loses_nothing() {
    let f = Fixture::new();
    let mut model = rev_project(&f, "deltas_crash").await;
    let points = [
        "after_destination_write",
        "before_commit",
        "after_commit",
        "after_batch",
    ];
    for round in 1..=12u32 {
        for i in 0..4 {
            let at = ((round * 53 + i * 7) % 400) as usize;
            model[at].1 = format!("r{round}-{i}");
            model[at].2 = round;
        }
        model.push((2000 + round, format!("new{round}"), round));
        write_rev(&f, &model);
        let point = points[round as usize % points.len()];
        run_faulted(&f, "deltas_crash", point, round % 3 == 0).await;
        f.run_ok("deltas_crash").await;
        let project = f.load().unwrap();
        let state = project.state.latest("deltas_crash").await.unwrap().unwrap();
        assert_eq!(state.rows, model.len() as u64, "round {round} ({point})");
        assert_rev(&f, &model, &format!("round {round} ({point})"));
    }
}
