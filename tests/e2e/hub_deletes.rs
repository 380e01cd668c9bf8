//! Deletes in hub sources: a record gone from a source read in full, or marked by its
//! `deleted` condition, leaves its golden record, whose fields are decided again from the
//! records that remain; the last one leaving retires the golden record (kept, end-dated, with
//! the reason, in the log), a mirror sync from the entity deletes it, and a cycle that would
//! retire too many commits nothing until allowed.

use backflow::history::RunStatus;
use backflow::hub::HubReport;
use backflow::hub::show::{GoldenRecord, Lookup};
use backflow::project::RunTarget;
use backflow::sync::{NoProgress, RunOptions};

use crate::common::Fixture;
use crate::e2e::hub::lines;

const PROJECT: &str = r#"
[sources.a]
type = "csv"
path = "a.csv"

[sources.b]
type = "csv"
path = "b.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[entities.person]
fields = { email = "text", name = "text", phone = "text" }
match = [["email"]]

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email", name = "name", phone = "phone" }

[entities.person.sources.b]
from = "b"
id = "id"
deleted = "is_deleted"
fields = { email = "email", name = "name", phone = "phone" }

[syncs.people]
from = "person"
to = "app"
object = "people"
behavior = "mirror"
key = "golden_id"
fields = { exclude = ["golden_created_at", "golden_updated_at"] }
"#;

/// Run the entity, then the mirror from it; returns the entity's report.
async fn run(f: &Fixture, allow: bool) -> HubReport {
    let project = f.load().expect("project loads");
    let ctx = project.session().await.expect("session");
    let mut hub = None;
    for target in project.select_targets(&[]).unwrap() {
        match target {
            RunTarget::Entity(name) => {
                let options = backflow::hub::HubOptions {
                    allow_retirements: allow,
                    ..Default::default()
                };
                let r = backflow::hub::run(&project, &ctx, &name, options).await;
                if r.status != RunStatus::Succeeded {
                    return r;
                }
                hub = Some(r);
            }
            RunTarget::Sync(name) => {
                let r = backflow::sync::run(
                    &project,
                    &ctx,
                    &name,
                    RunOptions::default(),
                    std::sync::Arc::new(NoProgress),
                )
                .await;
                assert_eq!(r.status, RunStatus::Succeeded, "{name}: {r:?}");
            }
        }
    }
    hub.expect("the entity ran")
}

/// The live golden records as `email|name|phone`.
async fn live(f: &Fixture) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    lines(
        &ctx.sql("SELECT email, name, phone FROM person ORDER BY email")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

/// The mirror's rows as `email|name|phone`.
fn mirrored(f: &Fixture) -> Vec<String> {
    f.sqlite_cells("out/app.db", "people", &["email", "name", "phone"])
}

async fn show(f: &Fixture, golden_id: i64) -> GoldenRecord {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    backflow::hub::show::golden_record(&project, &ctx, "person", &Lookup::Golden(golden_id))
        .await
        .unwrap()
}

async fn golden_id_of(f: &Fixture, source: &str, id: &str) -> i64 {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let lookup = Lookup::SourceRecord {
        source: source.into(),
        id: id.into(),
    };
    backflow::hub::show::golden_record(&project, &ctx, "person", &lookup)
        .await
        .unwrap()
        .golden_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_records_leave_their_golden_records_and_the_last_one_retires_it() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    f.write(
        "a.csv",
        "id,email,name,phone\n1,p@x.io,A1,111\n2,q@x.io,A2,\n3,r@x.io,A3,333\n4,s@x.io,A4,444\n5,u@x.io,A5,555\n6,v@x.io,A6,666\n",
    );
    f.write(
        "b.csv",
        "id,email,name,phone,is_deleted\n1,p@x.io,B1,999,false\n2,q@x.io,B2,222,false\n3,t@x.io,B3,,false\n",
    );
    let r = run(&f, false).await;
    assert_eq!(r.created, 7, "{r:?}");
    let before = vec![
        "p@x.io|A1|111",
        "q@x.io|A2|222",
        "r@x.io|A3|333",
        "s@x.io|A4|444",
        "t@x.io|B3|∅",
        "u@x.io|A5|555",
        "v@x.io|A6|666",
    ];
    assert_eq!(live(&f).await, before);
    assert_eq!(mirrored(&f), before);
    let s = golden_id_of(&f, "a", "4").await;

    // p and s are deleted in a: p keeps b's record (its values now: a had priority), s has
    // no record left and is retired; the mirror deletes it.
    f.write(
        "a.csv",
        "id,email,name,phone\n2,q@x.io,A2,\n3,r@x.io,A3,333\n5,u@x.io,A5,555\n6,v@x.io,A6,666\n",
    );
    let r = run(&f, false).await;
    assert_eq!(r.sources["a"].deleted, 2, "{r:?}");
    assert_eq!(r.retired, 1, "{r:?}");
    assert_eq!(r.updated, 1, "{r:?}");
    let after = vec![
        "p@x.io|B1|999",
        "q@x.io|A2|222",
        "r@x.io|A3|333",
        "t@x.io|B3|∅",
        "u@x.io|A5|555",
        "v@x.io|A6|666",
    ];
    assert_eq!(live(&f).await, after);
    assert_eq!(mirrored(&f), after);
    // The retired record is kept, with when and why, and the log says what happened.
    let gone = show(&f, s).await;
    assert!(gone.retired_at.is_some(), "{gone:?}");
    let reason = gone.retired_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("a record 4") && reason.contains("no longer in the source"),
        "{reason}"
    );
    let mut last: Vec<&str> = gone.history[gone.history.len() - 2..]
        .iter()
        .map(|e| e.op.as_str())
        .collect();
    last.sort();
    assert_eq!(last, ["retire", "unlink"], "{:?}", gone.history);
    assert!(gone.links.is_empty(), "{gone:?}");
    // Nothing changed since: a run retires nothing more, and sends nothing.
    let r = run(&f, false).await;
    assert_eq!((r.retired, r.updated, r.created), (0, 0, 0), "{r:?}");

    // b marks t deleted (a soft delete): t is retired too.
    f.write(
        "b.csv",
        "id,email,name,phone,is_deleted\n1,p@x.io,B1,999,false\n2,q@x.io,B2,222,false\n3,t@x.io,B3,,true\n",
    );
    let r = run(&f, false).await;
    assert_eq!(r.sources["b"].deleted, 1, "{r:?}");
    assert_eq!(r.retired, 1, "{r:?}");
    let after: Vec<&str> = after.into_iter().filter(|l| !l.starts_with("t@")).collect();
    assert_eq!(live(&f).await, after);
    assert_eq!(mirrored(&f), after);

    // A record deleted and then back is a new record: it starts a golden record of its own
    // (the retired one stays retired).
    f.write(
        "a.csv",
        "id,email,name,phone\n2,q@x.io,A2,\n3,r@x.io,A3,333\n4,s@x.io,A4 again,444\n5,u@x.io,A5,555\n6,v@x.io,A6,666\n",
    );
    let r = run(&f, false).await;
    assert_eq!(r.created, 1, "{r:?}");
    assert_ne!(golden_id_of(&f, "a", "4").await, s);
    assert!(show(&f, s).await.retired_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_lost_its_records_retires_nothing_until_allowed() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    f.write(
        "a.csv",
        "id,email,name,phone\n1,p@x.io,A1,1\n2,q@x.io,A2,2\n3,r@x.io,A3,3\n4,s@x.io,A4,4\n",
    );
    f.write(
        "b.csv",
        "id,email,name,phone,is_deleted\n1,z@x.io,Z,,false\n",
    );
    run(&f, false).await;
    let before = live(&f).await;
    assert_eq!(before.len(), 5);
    let manifests = f.manifests();

    // An empty export: every golden record would be retired.
    f.write("a.csv", "id,email,name,phone\n");
    let (code, out, err) = f.cli(&["run", "person", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim().lines().next().unwrap()).unwrap();
    assert_eq!(v["status"], "guarded", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("retire 4 of its 5 live golden records") && e.contains("--allow-deletes"),
        "{e}"
    );
    // Nothing committed: the same state, the same golden records; history says guarded.
    assert_eq!(f.manifests(), manifests);
    assert_eq!(live(&f).await, before);
    let (_, history, _) = f.cli(&["history", "--json"]);
    assert!(history.contains("\"guarded\""), "{history}");

    // Up to half of them (the default limit) go through.
    f.write(
        "a.csv",
        "id,email,name,phone\n1,p@x.io,A1,1\n2,q@x.io,A2,2\n",
    );
    let r = run(&f, false).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.retired, 2, "{r:?}");

    // When the deletes are real: --allow-deletes, once.
    f.write("a.csv", "id,email,name,phone\n");
    let (code, out, err) = f.cli(&["run", "person", "--allow-deletes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retired 2"), "{out}");
    assert_eq!(live(&f).await, ["z@x.io|Z|∅"]);
}

/// A one-source entity over `a.csv` (`id,email,gone`), read two records per cycle.
const WALKED: &str = r#"
[sources.a]
type = "csv"
path = "a.csv"

[entities.person]
fields = { email = "text" }
batch_size = 2

[entities.person.sources.a]
from = "a"
id = "id"
deleted = "gone"
fields = { email = "email" }
"#;

async fn person_run(f: &Fixture, allow: bool) -> HubReport {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let options = backflow::hub::HubOptions {
        allow_retirements: allow,
        ..Default::default()
    };
    backflow::hub::run(&project, &ctx, "person", options).await
}

async fn live_emails(f: &Fixture) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    lines(
        &ctx.sql("SELECT email FROM person ORDER BY email")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

fn people(gone: impl Fn(u32) -> bool) -> String {
    let mut csv = String::from("id,email,gone\n");
    for i in 1..=10 {
        csv.push_str(&format!("{i},p{i:02}@x.io,{}\n", gone(i)));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_marked_deleted_over_several_cycles_are_guarded_together() {
    let f = Fixture::new();
    f.write("backflow.toml", WALKED);
    f.write("a.csv", &people(|_| false));
    assert_eq!(person_run(&f, false).await.created, 10);

    // A wrong `deleted` condition marks every record: each cycle retires 2 of them, but the
    // run stops before it has retired more than half of the 10 it started with.
    f.write("a.csv", &people(|_| true));
    let r = person_run(&f, false).await;
    assert_eq!(r.status, RunStatus::Guarded, "{r:?}");
    assert!(r.retired <= 5, "{r:?}");
    let error = r.error.clone().unwrap_or_default();
    assert!(error.contains("of its 10 live golden records"), "{error}");
    assert!(live_emails(&f).await.len() >= 5);
    let r = person_run(&f, true).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert!(live_emails(&f).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_rows_empty_columns_and_drifting_id_types_are_not_deletes() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &WALKED.replace("batch_size = 2", "batch_size = 100"),
    );
    // Ids read as text (x3 among them); the `gone` column is empty in every row.
    f.write("a.csv", "id,email,gone\n1,a@x.io,\n2,b@x.io,\nx3,c@x.io,\n");
    let r = person_run(&f, false).await;
    assert_eq!(
        (r.status.clone(), r.created),
        (RunStatus::Succeeded, 3),
        "{r:?}"
    );

    // A row that cannot be read (too many fields) is not a deleted record.
    f.write(
        "a.csv",
        "id,email,gone\n1,a@x.io,\n2,b@x.io,,extra,fields\nx3,c@x.io,\n",
    );
    let r = person_run(&f, false).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!((r.retired, r.sources["a"].deleted), (0, 0), "{r:?}");
    assert_eq!(live_emails(&f).await, ["a@x.io", "b@x.io", "c@x.io"]);

    // x3 deleted: the ids left read as numbers now, and are the same ids.
    f.write("a.csv", "id,email,gone\n1,a@x.io,\n2,b@x.io,\n");
    let r = person_run(&f, false).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!((r.retired, r.sources["a"].deleted), (1, 1), "{r:?}");
    assert_eq!(live_emails(&f).await, ["a@x.io", "b@x.io"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_golden_record_follows_each_write_back_on_delete_policy() {
    let f = Fixture::new();
    let conn = rusqlite::Connection::open(f.path().join("crm.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, email TEXT, status TEXT);
         INSERT INTO contacts VALUES ('c1', 'p@x.io', 'active'), ('c2', 'q@x.io', 'active');",
    )
    .unwrap();
    drop(conn);
    let conn = rusqlite::Connection::open(f.path().join("support.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT);
         INSERT INTO users VALUES ('u1', 'p@x.io'), ('u2', 'q@x.io');",
    )
    .unwrap();
    drop(conn);
    f.write(
        "backflow.toml",
        r#"
[sources.a]
type = "csv"
path = "a.csv"

[sources.crm]
type = "sqlite"
path = "crm.db"
tables = ["contacts"]

[sources.support]
type = "sqlite"
path = "support.db"
tables = ["users"]

[destinations.crm_db]
type = "sqlite"
path = "crm.db"

[destinations.support_db]
type = "sqlite"
path = "support.db"

[entities.person]
fields = { email = "text" }
match = [["email"]]

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email" }

[entities.person.sources.crm]
from = "crm.contacts"
id = "id"
role = "receive-only"
fields = { email = "email" }
writeback = { to = "crm_db", object = "contacts", on_delete = { update = { status = "'inactive'" } } }

[entities.person.sources.support]
from = "support.users"
id = "id"
role = "receive-only"
fields = { email = "email" }
writeback = { to = "support_db", object = "users", on_delete = "delete" }
"#,
    );
    f.write(
        "a.csv",
        "id,email\n1,p@x.io\n2,q@x.io\n3,r@x.io\n4,s@x.io\n5,t@x.io\n",
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let contacts = || f.sqlite_cells("crm.db", "contacts", &["id", "email", "status"]);
    let users = || f.sqlite_cells("support.db", "users", &["id", "email"]);
    assert_eq!(contacts(), ["c1|p@x.io|active", "c2|q@x.io|active"]);
    assert_eq!(users(), ["u1|p@x.io", "u2|q@x.io"]);

    // p is deleted in the only system that contributes it: its golden record is retired, the
    // CRM marks its contact inactive, the support tool deletes its user; q is untouched.
    f.write(
        "a.csv",
        "id,email\n2,q@x.io\n3,r@x.io\n4,s@x.io\n5,t@x.io\n",
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retired 1"), "{out}");
    assert!(out.contains("person-to-crm-retired"), "{out}");
    assert_eq!(contacts(), ["c1|p@x.io|inactive", "c2|q@x.io|active"]);
    assert_eq!(users(), ["u2|q@x.io"]);

    // Nothing more the next time.
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for k in ["created", "updated", "deleted"] {
            assert_eq!(v[k].as_u64().unwrap_or(0), 0, "{line}");
        }
    }
    assert_eq!(contacts(), ["c1|p@x.io|inactive", "c2|q@x.io|active"]);

    // A policy that is not one is named by check.
    f.write(
        "backflow.toml",
        &std::fs::read_to_string(f.path().join("backflow.toml"))
            .unwrap()
            .replace("on_delete = \"delete\"", "on_delete = \"purge\""),
    );
    let (code, out, err) = f.cli(&["check"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("on_delete = \"purge\""),
        "{out}{err}"
    );
}
