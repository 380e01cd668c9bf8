//! Bad input gets a clear error, a non-zero exit, and leaves state untouched.

use crate::common::*;

const PEOPLE: &str = "id,email,name,plan\n1,a@x.io,Ada,pro\n";

fn assert_untouched(f: &Fixture) {
    assert!(
        f.manifests().is_empty(),
        "state was written: {:?}",
        f.manifests()
    );
}

#[test]
fn unknown_config_key_names_key_and_line() {
    let f = people_fixture("mirror", "behaviour = \"upsert\"", PEOPLE);
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("behaviour") && err.contains("line 16"),
        "{err}"
    );
    assert_untouched(&f);
}

#[test]
fn unknown_destination_type_is_an_error() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text.replace("type = \"sqlite\"", "type = \"oracle\""),
    );
    let (code, _, err) = f.cli(&["check"]);
    assert_eq!(code, 2);
    assert!(err.contains("oracle") && err.contains("line 7"), "{err}");
}

#[test]
fn unknown_behavior_and_references_are_reported_together() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.a]
from = "peeple"
to = "ap"
object = "people"
behavior = "upsert"
key = "id"
"#,
    );
    let (code, _, err) = f.cli(&["check"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("\"peeple\"") && err.contains("did you mean \"people\""),
        "{err}"
    );
    assert!(
        err.contains("\"ap\"") && err.contains("did you mean \"app\""),
        "{err}"
    );
    assert!(err.contains("line 10"), "{err}");
}

#[test]
fn model_with_a_sql_error_names_the_file() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text.replace("from = \"people\"", "from = \"broken\""),
    );
    f.write("people.csv", PEOPLE);
    f.write("models/broken.sql", "SELECT id, no_such_column FROM people");
    let (code, _, err) = f.cli(&["run"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("broken.sql") && err.contains("no_such_column"),
        "{err}"
    );
    f.write("models/broken.sql", "SELEC id FROM people");
    let (code, _, err) = f.cli(&["check"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("broken.sql") && err.contains("syntax"),
        "{err}"
    );
    f.write("models/broken.sql", "DELETE FROM people");
    let (_, _, err) = f.cli(&["check"]);
    assert!(err.contains("exactly one SELECT"), "{err}");
    assert_untouched(&f);
}

#[test]
fn model_cycles_and_unknown_tables_are_errors() {
    let f = people_fixture("mirror", "", PEOPLE);
    f.write("models/a.sql", "SELECT * FROM b");
    f.write("models/b.sql", "SELECT * FROM a");
    let (code, _, err) = f.cli(&["check"]);
    assert_eq!(code, 2);
    assert!(err.contains("cycle: a → b → a"), "{err}");
    f.write("models/b.sql", "SELECT * FROM peple");
    let (_, _, err) = f.cli(&["check"]);
    assert!(
        err.contains("b.sql")
            && err.contains("\"peple\"")
            && err.contains("did you mean \"people\""),
        "{err}"
    );
}

#[test]
fn missing_source_file_is_named() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("source \"people\"")
            && err.contains("people.csv")
            && err.contains("does not exist"),
        "{err}"
    );
    assert_untouched(&f);
}

#[test]
fn missing_key_column_is_reported_before_anything_is_written() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text.replace("key = \"id\"", "key = \"idd\""),
    );
    f.write("people.csv", PEOPLE);
    // A failed sync's error is on stderr.
    let (code, _, out) = f.cli(&["run"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("key column \"idd\"") && out.contains("did you mean \"id\""),
        "{out}"
    );
    assert!(!f.path().join("out/app.db").exists());
    assert_untouched(&f);
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 1);
    assert!(out.contains("idd"), "{out}");
}

#[test]
fn mapping_an_unknown_column_is_reported() {
    let f = Fixture::new();
    people_project(
        &f,
        "mirror",
        "fields = { rename = { nam = \"full_name\" }, computed = { x = \"no_col + 1\" } }",
    );
    f.write("people.csv", PEOPLE);
    // A failed sync's error is on stderr.
    let (code, _, out) = f.cli(&["run"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("\"nam\"") && out.contains("did you mean \"name\""),
        "{out}"
    );
    assert!(out.contains("computed field \"x\""), "{out}");
    assert_untouched(&f);
}

#[test]
fn unwritable_destination_fails_and_keeps_state() {
    let f = people_fixture("mirror", "", PEOPLE);
    f.write("out", "a file where a folder should be");
    // A failed sync's error is on stderr.
    let (code, _, out) = f.cli(&["run"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("destination \"app\"") && out.contains("cannot write"),
        "{out}"
    );
    assert_untouched(&f);
    let (code, out, _) = f.cli(&["check"]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn segment_filter_cannot_inject_a_statement() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[segments.paying]
model = "people"
filter = "plan <> 'free'; DROP TABLE people"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.s]
from = "paying"
to = "app"
object = "people"
behavior = "upsert"
key = "id"
"#,
    );
    f.write("people.csv", PEOPLE);
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 2);
    assert!(err.contains("segment \"paying\""), "{err}");
    assert_untouched(&f);
}

#[tokio::test]
async fn a_second_run_of_the_same_sync_fails_fast() {
    let f = people_fixture("mirror", "", PEOPLE);
    let project = f.load().unwrap();
    let _held = project.state.lock("people_sync").unwrap();
    // A failed sync's error is on stderr.
    let (code, _, out) = f.cli(&["run"]);
    assert_eq!(code, 1);
    assert!(out.contains("already running"), "{out}");
    assert_untouched(&f);
}

#[tokio::test]
async fn changing_the_key_requires_a_full_resync() {
    let f = people_fixture("mirror", "", PEOPLE);
    f.run_ok("people_sync").await;
    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text
            .replace("key = \"id\"", "key = \"email\"")
            .replace("object = \"people\"", "object = \"people2\""),
    );
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    assert!(
        r.error.as_deref().unwrap_or("").contains("--full-resync"),
        "{r:?}"
    );
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
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(f.sqlite("out/app.db", "people2").len(), 1);
}

#[tokio::test]
async fn changing_the_cursor_column_or_the_destination_is_noticed() {
    let f = people_fixture(
        "upsert",
        "cursor = \"ts\"",
        "id,email,name,plan,ts\n1,a,Ada,p,2026-01-01T00:00:00\n",
    );
    f.run_ok("people_sync").await;
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &t.replace("cursor = \"ts\"", "cursor = \"id\""),
    );
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("cursor is now \"id\"") && e.contains("--full-resync"),
        "{e}"
    );

    f.write(
        "backflow.toml",
        &t.replace("out/app.db", "elsewhere/app.db"),
    );
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("elsewhere/app.db") && e.contains("--full-resync"),
        "{e}"
    );
    assert!(!f.path().join("elsewhere").exists());
}

/// Two syncs writing one table would fight (each diffs against its own state, so a row the
/// other removed stays missing while this one reports it unchanged): `check` and `run` refuse
/// the project, naming both, before anything is written.
#[test]
fn two_syncs_writing_one_object_are_refused_before_anything_runs() {
    let f = people_fixture(
        "mirror",
        "\n[syncs.copy]\nfrom = \"people\"\nto = \"app\"\nobject = \"people\"\nbehavior = \"upsert\"\nkey = \"id\"\n",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n",
    );
    for command in ["check", "run"] {
        let (code, _, err) = f.cli(&[command]);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(
            err.contains("\"people_sync\" (mirror) and \"copy\" (upsert) both write app/people"),
            "{command}: {err}"
        );
    }
    assert!(!f.path().join("out/app.db").exists());
    // A delete sync beside an upsert cannot overlap: accepted.
    f.write(
        "backflow.toml",
        &std::fs::read_to_string(f.path().join("backflow.toml"))
            .unwrap()
            .replace("behavior = \"mirror\"", "behavior = \"delete\""),
    );
    let (code, out, err) = f.cli(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A 0-byte CSV (an export that died before its header) is named as empty, and a mirror over
/// it deletes nothing: the run fails before anything is read or sent.
#[test]
fn a_zero_byte_csv_is_named_as_empty_and_deletes_nothing() {
    let f = people_fixture("mirror", "", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{err}");
    f.write("people.csv", "");
    let (code, out, err) = f.cli(&["run"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("people.csv: the file is empty (0 bytes"),
        "{out}{err}"
    );
    assert!(!err.contains("No field named"), "{err}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 1);
}
