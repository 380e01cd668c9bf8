//! Invalid rows never reach the destination; rejected rows are recorded and retried.

use crate::common::*;
use backflow::history::{self, RecordKind};

#[tokio::test]
async fn null_and_duplicate_keys_are_invalid_and_sampled_in_history() {
    let f = people_fixture(
        "mirror",
        "",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n,n@x.io,NoKey,pro\n2,b@x.io,Bob,free\n2,b2@x.io,Bob2,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.read, r.counts.invalid, r.counts.created),
        (5, 3, 2)
    );
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        vec![("1".into(), "Ada".into()), ("3".into(), "Cy".into())]
    );

    let project = f.load().unwrap();
    let runs = history::runs(&project.state, "people_sync", 10)
        .await
        .unwrap();
    assert_eq!(runs[0].counts.invalid, 3);
    let samples = history::samples(&project.state, "people_sync", &runs[0])
        .await
        .unwrap();
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.kind == RecordKind::Invalid)
            .count(),
        3
    );
    assert!(
        samples
            .iter()
            .any(|s| s.key.is_none() && s.reason.contains("NULL") && s.record.contains("NoKey"))
    );
    assert!(
        samples
            .iter()
            .any(|s| s.key.as_deref() == Some("2") && s.reason.contains("more than once"))
    );

    // A duplicated key that was synced before is not deleted by a mirror: it is still in the
    // model, only ambiguous.
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n1,a2@x.io,Ada2,pro\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.invalid, r.counts.deleted, r.counts.unchanged),
        (2, 0, 1)
    );
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
}

#[tokio::test]
async fn rejected_rows_are_recorded_with_the_reason_and_retried() {
    let f = Fixture::new();
    people_project(&f, "upsert", "");
    std::fs::create_dir_all(f.path().join("out")).unwrap();
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, name TEXT CHECK (length(name) <= 5), plan TEXT)",
    )
    .unwrap();
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bartholomew,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 1));
    let s = r
        .samples
        .iter()
        .find(|s| s.kind == RecordKind::Rejected)
        .unwrap();
    assert_eq!(s.key.as_deref(), Some("2"));
    assert!(s.reason.contains("CHECK constraint failed"), "{}", s.reason);
    assert!(s.record.contains("Bartholomew"));
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);

    // Not marked synced: retried next run, and accepted once the data is fixed.
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.rejected, r.counts.unchanged), (1, 2));
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bart,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.rejected), (1, 0));
    assert_eq!(f.sqlite("out/app.db", "people").len(), 3);
}

#[tokio::test]
async fn a_rejected_row_holds_the_watermark_back() {
    let f = Fixture::new();
    people_project(&f, "upsert", "cursor = \"ts\"");
    std::fs::create_dir_all(f.path().join("out")).unwrap();
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, name TEXT CHECK (name <> 'bad'), plan TEXT, ts INTEGER)",
    )
    .unwrap();
    f.write(
        "people.csv",
        "id,email,name,plan,ts\n1,a,ok,p,10\n2,b,bad,p,20\n3,c,ok,p,30\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 1));
    assert_eq!(r.watermark.as_deref(), Some("20"));
    f.write(
        "people.csv",
        "id,email,name,plan,ts\n1,a,ok,p,10\n2,b,fixed,p,20\n3,c,ok,p,30\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.read, r.counts.created, r.counts.unchanged),
        (2, 1, 1)
    );
    assert_eq!(r.watermark.as_deref(), Some("30"));
    assert_eq!(f.sqlite("out/app.db", "people").len(), 3);
}

#[tokio::test]
async fn invalid_rows_hold_the_watermark_until_fixed() {
    let f = people_fixture(
        "upsert",
        "cursor = \"ts\"",
        "id,email,name,plan,ts\n1,a,Ada,p,10\n2,b,Bob,p,20\n2,b,Bob2,p,30\n3,c,Cy,p,40\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.invalid), (2, 2));
    assert_eq!(r.watermark.as_deref(), Some("20"));
    // Nothing changed: the duplicate is read and reported again, never half-sent.
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.created, r.counts.invalid, r.counts.unchanged),
        (0, 2, 1),
        "{r:?}"
    );
    // Fixed upstream: the row goes out and the watermark moves on.
    f.write(
        "people.csv",
        "id,email,name,plan,ts\n1,a,Ada,p,10\n2,b,Bob2,p,30\n3,c,Cy,p,40\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.invalid), (1, 0));
    assert_eq!(r.watermark.as_deref(), Some("40"));
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name")[1],
        ("2".into(), "Bob2".into())
    );
}
