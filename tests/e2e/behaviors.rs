//! Behaviour details on SQLite beyond the destination conformance suite (`tests/conformance/`,
//! which runs every behaviour against every destination): a full resync after records were lost
//! in the destination, and existing columns matched without regard to case.

use crate::common::*;

#[tokio::test]
async fn full_resync_recreates_records_a_create_only_sync_lost() {
    let f = people_fixture(
        "create-only",
        "",
        "id,email,name,plan\n1,a,Ada,pro\n2,b,Bob,free\n",
    );
    f.run_ok("people_sync").await;
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute("DELETE FROM people WHERE id = 1", []).unwrap();
    let r = f
        .run_with(
            &["people_sync"],
            backflow::RunOptions {
                full_resync: true,
                ..Default::default()
            },
        )
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
