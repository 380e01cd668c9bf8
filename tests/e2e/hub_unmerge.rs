//! `hub unmerge`: a source record taken out of a golden record into one of its own; the fields
//! of both are decided again, the log says what happened, the change flows out (a mirror
//! creates the new record, a write-back sends the old one's values again), and the two are
//! never merged again. `--dry-run` changes nothing.

use crate::common::Fixture;

const PROJECT: &str = r#"
[sources.a]
type = "csv"
path = "a.csv"

[sources.b]
type = "csv"
path = "b.csv"

[sources.crm]
type = "sqlite"
path = "crm.db"
tables = ["contacts"]

[destinations.crm_db]
type = "sqlite"
path = "crm.db"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[entities.person]
fields = { email = "text", name = "text", phone = "text" }
match = [["email"]]

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email", name = "name" }

[entities.person.sources.b]
from = "b"
id = "id"
fields = { email = "email", name = "name", phone = "phone" }

[entities.person.sources.crm]
from = "crm.contacts"
id = "id"
role = "receive-only"
fields = { email = "email" }
writeback = { to = "crm_db", object = "contacts", fields = { name = "name", phone = "phone" } }

[syncs.people]
from = "person"
to = "app"
object = "people"
behavior = "mirror"
key = "golden_id"
fields = { exclude = ["golden_created_at", "golden_updated_at"] }
"#;

fn run(f: &Fixture) {
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
}

fn people(f: &Fixture) -> Vec<String> {
    f.sqlite_cells(
        "out/app.db",
        "people",
        &["golden_id", "email", "name", "phone"],
    )
}

/// `hub show person --source S --id I --json`: the golden record the source record is in.
fn shown(f: &Fixture, source: &str, id: &str) -> serde_json::Value {
    let (_, show, err) = f.cli(&[
        "hub", "show", "person", "--source", source, "--id", id, "--json",
    ]);
    serde_json::from_str(show.trim()).unwrap_or_else(|_| panic!("{source}:{id}: {err}"))
}

fn state_files(f: &Fixture) -> Vec<String> {
    f.files_under(".backflow/hub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmerged_record_gets_its_own_golden_record_and_stays_apart() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    let conn = rusqlite::Connection::open(f.path().join("crm.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, email TEXT, name TEXT, phone TEXT);
         INSERT INTO contacts VALUES ('c1', 'x@e.com', NULL, NULL);",
    )
    .unwrap();
    drop(conn);
    f.write("a.csv", "id,email,name\n1,x@e.com,Ann\n2,y@e.com,Bob\n");
    // b:1 is someone else who gave Ann's email: it joins her golden record, with its phone.
    f.write(
        "b.csv",
        "id,email,name,phone\n1,x@e.com,Imposter,555\n2,y@e.com,Bobby,777\n",
    );
    run(&f);
    assert_eq!(people(&f), ["1|x@e.com|Ann|555", "2|y@e.com|Bob|777"]);
    assert_eq!(
        f.sqlite_cells("crm.db", "contacts", &["id", "name", "phone"]),
        ["c1|Ann|555"]
    );

    // Refusals say why.
    let (code, _, err) = f.cli(&[
        "hub", "unmerge", "person", "9", "--source", "b", "--id", "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no golden record 9"), "{err}");
    let (code, _, err) = f.cli(&[
        "hub", "unmerge", "person", "2", "--source", "b", "--id", "1",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("not linked to golden record 2") && err.contains("b:2"),
        "{err}"
    );
    let (code, _, err) = f.cli(&[
        "hub", "unmerge", "person", "1", "--source", "crm", "--id", "c1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("only receives"), "{err}");

    // A dry run says what would change and changes nothing.
    let before = state_files(&f);
    let (code, out, err) = f.cli(&[
        "hub",
        "unmerge",
        "person",
        "1",
        "--source",
        "b",
        "--id",
        "1",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (plan["created"].as_u64(), plan["updated"].as_u64()),
        (Some(1), Some(1)),
        "{plan}"
    );
    assert_eq!(state_files(&f), before);
    assert_eq!(people(&f), ["1|x@e.com|Ann|555", "2|y@e.com|Bob|777"]);

    // Unmerge: b:1 gets golden record 3 with its own values; Ann's loses the phone it gave;
    // the write-back sends Ann's record again (the phone goes), and the mirror follows.
    let (code, out, err) = f.cli(&[
        "hub", "unmerge", "person", "1", "--source", "b", "--id", "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        f.sqlite_cells("crm.db", "contacts", &["id", "name", "phone"]),
        ["c1|Ann|∅"]
    );
    let (code, out, err) = f.cli(&["run", "people"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        people(&f),
        [
            "1|x@e.com|Ann|∅",
            "2|y@e.com|Bob|777",
            "3|x@e.com|Imposter|555"
        ]
    );
    let show = shown(&f, "b", "1");
    assert_eq!(show["golden_id"], 3, "{show}");
    assert_eq!(
        show["links"][0]["linked_by"], "unmerged (hub unmerge)",
        "{show}"
    );
    let (_, log, _) = f.cli(&["hub", "log", "person", "--json"]);
    assert!(
        log.lines().any(|l| l.contains("\"op\":\"unlink\"")
            && l.contains("\"golden_id\":1")
            && l.contains("hub unmerge")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"op\":\"link\"") && l.contains("\"golden_id\":3")),
        "{log}"
    );

    // Later runs keep them apart: read again, and changed (which makes the merge stage look
    // at golden record 3, which has Ann's email).
    run(&f);
    f.write(
        "b.csv",
        "id,email,name,phone\n1,x@e.com,Imposter Jr,556\n2,y@e.com,Bobby,777\n",
    );
    run(&f);
    run(&f);
    assert_eq!(
        people(&f),
        [
            "1|x@e.com|Ann|∅",
            "2|y@e.com|Bob|777",
            "3|x@e.com|Imposter Jr|556"
        ]
    );
    assert_eq!(
        f.sqlite_cells("crm.db", "contacts", &["id", "name", "phone"]),
        ["c1|Ann|∅"]
    );

    // A record that is the only one of its golden record has nothing to leave.
    let (code, _, err) = f.cli(&[
        "hub", "unmerge", "person", "3", "--source", "b", "--id", "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("the only record"), "{err}");
}

/// Merging is on: two golden records merged by the merge stage are split again, and the
/// merge stage does not merge them on the next cycles although they still share the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_is_undone_and_not_redone() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.a]
type = "csv"
path = "a.csv"

[entities.person]
fields = { email = "text", name = "text" }
match = [["email"]]

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email", name = "name" }
"#,
    );
    f.write("a.csv", "id,email,name\n1,x@e.com,Ann\n2,y@e.com,Bob\n");
    run(&f);
    // Bob's email becomes Ann's: the merge stage merges golden record 2 into 1.
    f.write("a.csv", "id,email,name\n1,x@e.com,Ann\n2,x@e.com,Bob\n");
    run(&f);
    let show = shown(&f, "a", "2");
    assert_eq!(show["golden_id"], 1, "{show}");
    let (code, out, err) = f.cli(&[
        "hub", "unmerge", "person", "1", "--source", "a", "--id", "2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for round in 0..3 {
        // Each round changes Bob, so the merge stage looks at his golden record again.
        f.write(
            "a.csv",
            &format!("id,email,name\n1,x@e.com,Ann\n2,x@e.com,Bob {round}\n"),
        );
        run(&f);
        let show = shown(&f, "a", "2");
        assert_eq!(show["golden_id"], 3, "round {round}: {show}");
        assert!(show["merged_into"].is_null(), "round {round}: {show}");
    }
}

/// Records kept apart are not merged through a third record, nor after one of them is merged
/// into another golden record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_kept_apart_stay_apart_through_a_third() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.a]
type = "csv"
path = "a.csv"

[sources.b]
type = "csv"
path = "b.csv"

[entities.person]
fields = { email = "text", name = "text" }
match = [["email"]]

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email", name = "name" }

[entities.person.sources.b]
from = "b"
id = "id"
fields = { email = "email", name = "name" }
"#,
    );
    let golden_of = |f: &Fixture, source: &str, id: &str| -> i64 {
        shown(f, source, id)["golden_id"].as_i64().unwrap()
    };
    f.write("a.csv", "id,email,name\n1,p@p.com,Pat\n2,q@q.com,Quinn\n");
    f.write("b.csv", "id,email,name\n10,r@r.com,Rob\n");
    run(&f);
    // Rob takes Quinn's email: merged into Quinn's golden record; then taken out again.
    f.write("b.csv", "id,email,name\n10,q@q.com,Rob\n");
    run(&f);
    let quinn = golden_of(&f, "a", "2");
    assert_eq!(golden_of(&f, "b", "10"), quinn);
    let (code, out, err) = f.cli(&[
        "hub",
        "unmerge",
        "person",
        &quinn.to_string(),
        "--source",
        "b",
        "--id",
        "10",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(golden_of(&f, "b", "10"), quinn);
    // Pat takes the email too: Pat and Quinn may merge, Rob stays out.
    f.write("a.csv", "id,email,name\n1,q@q.com,Pat\n2,q@q.com,Quinn\n");
    run(&f);
    run(&f);
    assert_eq!(golden_of(&f, "a", "1"), golden_of(&f, "a", "2"));
    assert_ne!(golden_of(&f, "b", "10"), golden_of(&f, "a", "2"));
    // Rob changes; the merge stage looks at him again, against the merged record.
    f.write("b.csv", "id,email,name\n10,q@q.com,Robert\n");
    run(&f);
    assert_ne!(golden_of(&f, "b", "10"), golden_of(&f, "a", "2"));
}
