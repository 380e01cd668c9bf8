//! Each sync behaviour against a real SQLite database, including records that were in the
//! destination before backflow arrived.

use crate::common::*;

fn seed_destination(f: &Fixture, rows: &[(i64, &str)]) {
    std::fs::create_dir_all(f.path().join("out")).unwrap();
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, name TEXT, plan TEXT, note TEXT)",
    )
    .unwrap();
    for (id, name) in rows {
        conn.execute(
            "INSERT INTO people (id, email, name, plan, note) VALUES (?1, 'old', ?2, 'old', 'kept')",
            rusqlite::params![id, name],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn upsert_updates_matches_creates_the_rest_and_never_deletes() {
    let f = Fixture::new();
    people_project(&f, "upsert", "");
    seed_destination(&f, &[(1, "before")]);
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let r = f.run_ok("people_sync").await;
    // Key 1 was not in backflow's state, so it counts as created, but the upsert matched it.
    assert_eq!(r.counts.created, 2);
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        vec![("1".into(), "Ada".into()), ("2".into(), "Bob".into())]
    );
    // Columns the sync does not send are left alone.
    assert_eq!(rows[0]["note"], "kept");
    f.write("people.csv", "id,email,name,plan\n2,b@x.io,Bob,free\n");
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.deleted, r.counts.unchanged), (0, 1));
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
}

#[tokio::test]
async fn update_only_rejects_missing_records_and_retries_them() {
    let f = Fixture::new();
    people_project(&f, "update-only", "");
    seed_destination(&f, &[(1, "one"), (2, "two")]);
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.updated, r.counts.rejected, r.counts.created),
        (2, 1, 0),
        "{r:?}"
    );
    assert!(
        r.samples
            .iter()
            .any(|s| s.key.as_deref() == Some("3") && s.reason.contains("no record"))
    );
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        vec![("1".into(), "Ada".into()), ("2".into(), "Bob".into())]
    );
    // The rejected row is not marked synced: the next run tries it again…
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.updated, r.counts.rejected, r.counts.unchanged),
        (0, 1, 2)
    );
    // …and once the record exists in the destination, it is updated.
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute("INSERT INTO people (id, name) VALUES (3, 'three')", [])
        .unwrap();
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.updated, r.counts.rejected), (1, 0));
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name")[2],
        ("3".into(), "Cy".into())
    );
}

#[tokio::test]
async fn create_only_creates_and_never_updates() {
    let f = Fixture::new();
    people_project(&f, "create-only", "");
    seed_destination(&f, &[(1, "existing")]);
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.skipped), (1, 1), "{r:?}");
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bobby,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.updated), (1, 0));
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name"),
        vec![
            ("1".into(), "existing".into()),
            ("2".into(), "Bob".into()),
            ("3".into(), "Cy".into())
        ]
    );
}

#[tokio::test]
async fn append_only_appends_every_new_or_changed_row() {
    let f = Fixture::new();
    people_project(&f, "append-only", "");
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    f.run_ok("people_sync").await;
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,team\n2,b@x.io,Bob,free\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.created, r.counts.unchanged), (1, 1));
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "plan"),
        vec![
            ("1".into(), "pro".into()),
            ("1".into(), "team".into()),
            ("2".into(), "free".into())
        ]
    );
}

#[tokio::test]
async fn delete_removes_listed_keys_once() {
    let f = Fixture::new();
    people_project(&f, "delete", "");
    seed_destination(&f, &[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
    f.write("people.csv", "id,email,name,plan\n2,,,\n3,,,\n9,,,\n");
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.deleted, 3);
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name"),
        vec![("1".into(), "a".into()), ("4".into(), "d".into())]
    );
    // Already deleted keys are not sent again; a new key is.
    f.write("people.csv", "id,email,name,plan\n2,,,\n3,,,\n4,,,\n");
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.deleted, r.counts.unchanged), (1, 2));
    assert_eq!(f.sqlite("out/app.db", "people").len(), 1);
}

#[tokio::test]
async fn full_resync_recreates_records_a_create_only_sync_lost() {
    let f = Fixture::new();
    people_project(&f, "create-only", "");
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a,Ada,pro\n2,b,Bob,free\n",
    );
    f.run_ok("people_sync").await;
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute("DELETE FROM people WHERE id = 1", []).unwrap();
    let r = f
        .run_with(&["people_sync"], backflow::RunOptions { full_resync: true })
        .await
        .remove(0);
    assert_eq!((r.counts.created, r.counts.skipped), (1, 1), "{r:?}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
}

#[tokio::test]
async fn existing_tables_match_columns_without_regard_to_case() {
    let f = Fixture::new();
    people_project(&f, "upsert", "");
    std::fs::create_dir_all(f.path().join("out")).unwrap();
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE people (ID INTEGER PRIMARY KEY, Email TEXT, Name TEXT, Plan TEXT)",
    )
    .unwrap();
    f.write("people.csv", "id,email,name,plan\n1,a,Ada,pro\n");
    f.run_ok("people_sync").await;
    f.write("people.csv", "id,email,name,plan\n1,a,Ada2,pro\n");
    f.run_ok("people_sync").await;
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "ID", "Name"),
        vec![("1".into(), "Ada2".into())]
    );
}
