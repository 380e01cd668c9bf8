//! Database sources that need no server: SQLite files, joined with file sources in a model.

use crate::common::*;

#[tokio::test]
async fn sqlite_tables_are_source_tables_in_models() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path().join("in")).unwrap();
    let conn = rusqlite::Connection::open(f.path().join("in/app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, mrr REAL);
         INSERT INTO accounts VALUES (1, 'Acme', 10.5), (2, 'Globex', NULL), (3, 'Initech', 3.0);
         CREATE TABLE ignored (x INTEGER);",
    )
    .unwrap();
    drop(conn);
    f.write(
        "backflow.toml",
        r#"
[sources.app]
type = "sqlite"
path = "in/app.db"
tables = "*"

[sources.plans]
type = "csv"
path = "plans.csv"

[destinations.out]
type = "sqlite"
path = "out/crm.db"

[syncs.accounts]
from = "enriched"
to = "out"
object = "accounts"
behavior = "mirror"
key = "id"
"#,
    );
    f.write("plans.csv", "account_id,plan\n1,pro\n3,free\n");
    f.write(
        "models/enriched.sql",
        "SELECT a.id, a.name, a.mrr, p.plan FROM app.accounts a LEFT JOIN plans p ON p.account_id = a.id",
    );
    let r = f.run_ok("accounts").await;
    assert_eq!(r.counts.created, 3);
    let rows = f.sqlite("out/crm.db", "accounts");
    assert_eq!(
        pairs(&rows, "name", "plan"),
        vec![
            ("Acme".into(), "pro".into()),
            ("Globex".into(), "NULL".into()),
            ("Initech".into(), "free".into())
        ]
    );
    // A table the source does not have is named in the error.
    f.write("models/enriched.sql", "SELECT id FROM app.acounts");
    let project = f.load().unwrap();
    let e = match project.session().await {
        Ok(_) => panic!("the model names a missing table"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("acounts"), "{e}");
}

#[tokio::test]
async fn a_database_source_listing_tables_checks_model_references_before_reading() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.app]
type = "sqlite"
path = "in/app.db"
tables = ["accounts"]

[destinations.out]
type = "sqlite"
path = "out/crm.db"

[syncs.accounts]
from = "app.acounts"
to = "out"
object = "accounts"
behavior = "mirror"
key = "id"
"#,
    );
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("app.acounts"), "{e}");
    // `tables` is "*" or a list, and says so.
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &t.replace("tables = [\"accounts\"]", "tables = 5"),
    );
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("tables = \"*\" (every table) or a list"), "{e}");
    f.write(
        "backflow.toml",
        &t.replace("tables = [\"accounts\"]", "tables = \"accounts\""),
    );
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("use \"*\" for every table"), "{e}");
}

#[tokio::test]
async fn plan_explain_shows_the_sql_a_cursor_read_sends_to_the_database() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path().join("in")).unwrap();
    let conn = rusqlite::Connection::open(f.path().join("in/app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT);
         INSERT INTO events VALUES (1, 10, 'a'), (2, 20, 'b');",
    )
    .unwrap();
    f.write(
        "backflow.toml",
        r#"
[sources.app]
type = "sqlite"
path = "in/app.db"
tables = ["events"]

[destinations.out]
type = "sqlite"
path = "out/crm.db"

[syncs.events]
from = "app.events"
to = "out"
object = "events"
behavior = "upsert"
key = "id"
cursor = "seq"
"#,
    );
    f.run_ok("events").await;
    conn.execute_batch("INSERT INTO events VALUES (3, 30, 'c')")
        .unwrap();
    let (code, out, err) = f.cli(&["plan", "events", "--explain"]);
    assert_eq!(code, 0, "{err}");
    let sql: Vec<&str> = out.lines().filter(|l| l.contains("sql=")).collect();
    assert!(!sql.is_empty(), "{out}");
    for q in sql {
        assert!(q.contains("WHERE") && q.contains(">= 20"), "{q}");
    }
    let r = f.run_ok("events").await;
    assert_eq!((r.counts.read, r.counts.created), (2, 1), "{r:?}");
}

/// A source that cannot be read fails only the syncs that read it: `run` and `plan` of
/// another sync open only what that sync reads (through its models), in a project with a hub
/// entity too.
#[test]
fn a_broken_source_fails_only_the_syncs_that_read_it() {
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n2,b\n");
    f.write(
        "models/named.sql",
        "SELECT id, name FROM people WHERE name IS NOT NULL",
    );
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[sources.orders]
type = "csv"
path = "exports/orders.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people]
from = "named"
to = "app"
object = "people"
behavior = "upsert"
key = "id"

[syncs.orders]
from = "orders"
to = "app"
object = "orders"
behavior = "upsert"
key = "id"

[entities.person]
fields = { name = "text" }
match = [["name"]]

[entities.person.sources.csv]
from = "people"
id = "id"
fields = { name = "name" }

[syncs.golden]
from = "person"
to = "app"
object = "golden"
behavior = "mirror"
key = "golden_id"
"#,
    );
    // An entity opens its own sources only, and a sync reading its golden records none.
    let (code, out, err) = f.cli(&["run", "person", "golden"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.sqlite("out/app.db", "golden").len(), 2);
    let (code, out, err) = f.cli(&["run", "people"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
    let (code, out, err) = f.cli(&["plan", "people"]);
    assert_eq!(code, 0, "{out}{err}");
    // The sync that reads it, and a run of everything, name the missing file.
    for args in [&["run", "orders"][..], &["run"]] {
        let (code, out, err) = f.cli(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(format!("{out}{err}").contains("orders.csv"), "{out}{err}");
    }
}
