//! Initial sync, changes, deletes and no-change runs: only what changed moves.

use crate::common::*;
use backflow::RunOptions;

const V1: &str = "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n";

#[tokio::test]
async fn mirror_sends_only_changes_and_deletes_what_left() {
    let f = people_fixture("mirror", "", V1);

    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (
            r.counts.read,
            r.counts.created,
            r.counts.updated,
            r.counts.deleted
        ),
        (3, 3, 0, 0)
    );
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        vec![
            ("1".into(), "Ada".into()),
            ("2".into(), "Bob".into()),
            ("3".into(), "Cy".into())
        ]
    );

    // No change: nothing is sent.
    let r = f.run_ok("people_sync").await;
    assert_eq!(cudu(&r), (0, 0, 0, 3));

    // One update, one delete, one insert.
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada L.,pro\n3,c@x.io,Cy,pro\n4,d@x.io,Di,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(cudu(&r), (1, 1, 1, 1));
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        vec![
            ("1".into(), "Ada L.".into()),
            ("3".into(), "Cy".into()),
            ("4".into(), "Di".into())
        ]
    );

    // Only the changed row moves: a row edited behind backflow's back stays as it is.
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute("UPDATE people SET name = 'edited' WHERE id = 3", [])
        .unwrap();
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada L.,team\n3,c@x.io,Cy,pro\n4,d@x.io,Di,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.updated, r.counts.unchanged), (1, 2));
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(pairs(&rows, "id", "name")[1], ("3".into(), "edited".into()));
    assert_eq!(pairs(&rows, "id", "plan")[0], ("1".into(), "team".into()));

    // Four commits: only the two newest versions and their files are kept.
    assert_eq!(f.manifests().len(), 2);
    let data = std::fs::read_dir(f.path().join(".backflow/syncs/people_sync/data")).unwrap();
    assert_eq!(data.count(), 2);
}

#[tokio::test]
async fn full_resync_sends_everything_again_and_still_deletes() {
    let f = people_fixture("mirror", "", V1);
    f.run_ok("people_sync").await;
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let r = f
        .run_with(
            &["people_sync"],
            RunOptions {
                full_resync: true,
                ..Default::default()
            },
        )
        .await
        .remove(0);
    assert_eq!(
        (r.counts.updated, r.counts.deleted, r.counts.unchanged),
        (2, 1, 0),
        "{r:?}"
    );
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
}

#[tokio::test]
async fn cursor_reads_only_rows_past_the_watermark() {
    let f = people_fixture(
        "upsert",
        "cursor = \"updated_at\"",
        "id,email,name,plan,updated_at\n1,a@x.io,Ada,pro,2026-01-01T00:00:00\n2,b@x.io,Bob,free,2026-01-02T00:00:00\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.read, r.counts.created), (2, 2));
    assert_eq!(r.watermark.as_deref(), Some("2026-01-02T00:00:00"));

    // Row 1 changes without moving its cursor: a cursor sync does not see it (by design);
    // row 3 is new and past the watermark; row 2 ties the watermark and is re-read, unchanged.
    f.write(
        "people.csv",
        "id,email,name,plan,updated_at\n1,a@x.io,CHANGED,pro,2026-01-01T00:00:00\n2,b@x.io,Bob,free,2026-01-02T00:00:00\n3,c@x.io,Cy,pro,2026-01-03T00:00:00\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.read, r.counts.created, r.counts.unchanged),
        (2, 1, 1),
        "{r:?}"
    );
    assert_eq!(r.watermark.as_deref(), Some("2026-01-03T00:00:00"));
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(pairs(&rows, "id", "name")[0], ("1".into(), "Ada".into()));
    assert_eq!(rows.len(), 3);
    // A run with no new rows keeps the watermark.
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.read, r.counts.created), (1, 0));
    assert_eq!(r.watermark.as_deref(), Some("2026-01-03T00:00:00"));
}

#[tokio::test]
async fn removing_a_field_stops_updating_it_and_keeps_its_values() {
    let f = people_fixture("upsert", "", V1);
    f.run_ok("people_sync").await;
    people_project(&f, "upsert", "fields = { exclude = [\"plan\"] }");
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada2,team\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people_sync").await;
    // The mapping changed, so every row is re-sent once (without `plan`).
    assert_eq!(r.counts.updated, 3);
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "plan"),
        vec![
            ("1".into(), "pro".into()),
            ("2".into(), "free".into()),
            ("3".into(), "pro".into())
        ]
    );
    assert_eq!(pairs(&rows, "id", "name")[0], ("1".into(), "Ada2".into()));
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.unchanged, 3);
}

#[tokio::test]
async fn models_segments_renames_and_computed_fields() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[segments.paying]
model = "customers"          # models/customers.sql
filter = "plan <> 'free'"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.paying_to_app]
from = "paying"
to = "app"
object = "customers"
behavior = "mirror"
key = { source = "email", destination = "Email" }
fields = { auto = true, rename = { name = "full_name" }, exclude = ["id"], computed = { domain = "split_part(email, '@', 2)" } }
"#,
    );
    f.write(
        "models/customers.sql",
        "SELECT id, lower(email) AS email, name, plan FROM upper_people",
    );
    f.write(
        "models/upper_people.sql",
        "SELECT * FROM people WHERE id < 100",
    );
    f.write(
        "people.csv",
        "id,email,name,plan\n1,A@X.io,Ada,pro\n2,b@y.io,Bob,free\n3,c@z.io,Cy,team\n",
    );
    let r = f.run_ok("paying_to_app").await;
    assert_eq!(r.counts.created, 2);
    let rows = f.sqlite("out/app.db", "customers");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["Email"], "a@x.io");
    assert_eq!(rows[0]["full_name"], "Ada");
    assert_eq!(rows[0]["domain"], "x.io");
    assert!(!rows[0].contains_key("id") && !rows[0].contains_key("name"));
    // Bob becomes paying, Ada leaves the segment.
    f.write(
        "people.csv",
        "id,email,name,plan\n1,A@X.io,Ada,free\n2,b@y.io,Bob,pro\n3,c@z.io,Cy,team\n",
    );
    let r = f.run_ok("paying_to_app").await;
    assert_eq!(
        (r.counts.created, r.counts.deleted, r.counts.unchanged),
        (1, 1, 1)
    );
    let emails: Vec<_> = f
        .sqlite("out/app.db", "customers")
        .iter()
        .map(|r| r["Email"].clone())
        .collect();
    assert_eq!(emails, vec!["b@y.io", "c@z.io"]);
}

#[tokio::test]
async fn parquet_sources_and_globs() {
    let f = Fixture::new();
    f.write("in/a.csv", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    f.write("in/b.csv", "id,email,name,plan\n2,b@x.io,Bob,pro\n");
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "in/*.csv"

[destinations.lake]
type = "file"
path = "lake"
format = "parquet"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.to_lake]
from = "people"
to = "lake"
object = "people"
behavior = "mirror"
key = "id"
"#,
    );
    f.run_ok("to_lake").await;
    // Now read the Parquet the first sync wrote as a source of a second project.
    let g = Fixture::new();
    std::fs::copy(
        f.path().join("lake/people.parquet"),
        g.path().join("people.parquet"),
    )
    .unwrap();
    g.write(
        "backflow.toml",
        r#"
[sources.people]
type = "parquet"
path = "people.parquet"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.back]
from = "people"
to = "app"
object = "people"
behavior = "upsert"
key = "id"
"#,
    );
    let r = g.run_ok("back").await;
    assert_eq!(r.counts.created, 2);
    assert_eq!(
        pairs(&g.sqlite("out/app.db", "people"), "id", "name"),
        vec![("1".into(), "Ada".into()), ("2".into(), "Bob".into())]
    );
}

#[tokio::test]
async fn a_mapping_change_reaches_rows_behind_the_watermark() {
    let f = Fixture::new();
    people_project(
        &f,
        "upsert",
        "cursor = \"ts\"\nfields = { exclude = [\"plan\"] }",
    );
    f.write(
        "people.csv",
        "id,email,name,plan,ts\n1,a,Ada,pro,1\n2,b,Bob,free,2\n",
    );
    f.run_ok("people_sync").await;
    people_project(&f, "upsert", "cursor = \"ts\"");
    let r = f.run_ok("people_sync").await;
    assert_eq!((r.counts.read, r.counts.updated), (2, 2), "{r:?}");
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "plan"),
        vec![("1".into(), "pro".into()), ("2".into(), "free".into())]
    );
    // Back to incremental reads.
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.read, 1);
}

#[tokio::test]
async fn runs_under_a_memory_limit_with_sort_merge_joins() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[engine]
memory_limit = "24MiB"
spill_dir = "spill"

[sources.people]
type = "csv"
path = "people.csv"

[destinations.lake]
type = "file"
path = "lake"
format = "parquet"

[syncs.big]
from = "people"
to = "lake"
object = "people"
behavior = "mirror"
key = "id"
"#,
    );
    std::fs::create_dir_all(f.path().join("spill")).unwrap();
    let rows = |changed: u64| {
        let mut s = String::from("id,name,note\n");
        for i in 0..60_000u64 {
            if i % 1000 == 7 {
                continue; // deleted in both versions' eyes once `changed` > 0
            }
            let name = if changed > 0 && i % 100 == 3 {
                format!("changed {i}")
            } else {
                format!("name {i}")
            };
            s.push_str(&format!("{i},{name},{}\n", "x".repeat(40)));
        }
        if changed == 0 {
            for i in (7..60_000u64).step_by(1000) {
                s.push_str(&format!("{i},name {i},gone\n"));
            }
        }
        s
    };
    f.write("people.csv", &rows(0));
    let r = f.run_ok("big").await;
    assert_eq!(r.counts.created, 60_000);
    f.write("people.csv", &rows(1));
    let r = f.run_ok("big").await;
    assert_eq!(
        (r.counts.updated, r.counts.deleted, r.counts.unchanged),
        (600, 60, 59_340),
        "{r:?}"
    );
}

/// Each committed manifest records the run that made it (its id and counts, as delta-rs
/// records operation metrics in a commit): state and history can be checked against each other.
#[tokio::test]
async fn each_manifest_records_the_run_that_committed_it() {
    let f = people_fixture(
        "mirror",
        "",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n,nokey@x.io,No Key,free\n2,b@x.io,Bob,free\n",
    );
    let first = f.run_ok("people_sync").await;
    f.write("people.csv", "id,email,name,plan\n1,a@x.io,Ada L.,pro\n");
    let second = f.run_ok("people_sync").await;

    let project = f.load().unwrap();
    let manifest = project.state.latest("people_sync").await.unwrap().unwrap();
    assert_eq!(manifest.run_id, second.run_id);
    assert_eq!(manifest.counts.as_ref(), Some(&second.counts));
    assert_eq!(
        (manifest.counts.as_ref().map(|c| (c.updated, c.deleted))),
        Some((1, 1))
    );
    let history = backflow::history::runs(&project.state, "people_sync", 10)
        .await
        .unwrap();
    let recorded = history
        .iter()
        .find(|r| r.run_id == manifest.run_id)
        .expect("the committing run is in history");
    assert_eq!(recorded.counts, second.counts);
    assert_eq!(recorded.state_version, Some(manifest.version));
    assert_eq!(first.counts.invalid, 1);
}
