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

/// A CSV source `payments` (read from `path`) upserted into SQLite by id.
fn payments_project(f: &Fixture, path: &str, settings: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.payments]
type = "csv"
path = "{path}"
{settings}

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.payments]
from = "payments"
to = "app"
object = "payments"
behavior = "upsert"
key = "id"
"#
        ),
    );
}

/// `id,amount,note` rows 1..=n, the amount `id * 100` except where `odd` says otherwise.
fn payments_csv(n: u64, odd: &[(u64, &str)]) -> String {
    let mut csv = String::from("id,amount,note\n");
    for id in 1..=n {
        let amount = odd
            .iter()
            .find(|(i, _)| *i == id)
            .map_or((id * 100).to_string(), |(_, v)| v.to_string());
        csv.push_str(&format!("{id},{amount},n{id}\n"));
    }
    csv
}

/// The samples' reasons of a report as JSON (`--json`).
fn json_reasons(report: &serde_json::Value) -> Vec<String> {
    report["samples"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["reason"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Column types come from the first `infer_schema_rows` rows; a later row whose value its
/// column's type cannot hold is an invalid row of the run, with its file, line and column (in
/// `--json` too), not a failed run, and the other rows arrive with their values.
#[test]
fn a_value_its_inferred_type_cannot_hold_is_an_invalid_row_not_a_failed_run() {
    let f = Fixture::new();
    payments_project(&f, "payments.csv", "infer_schema_rows = 5");
    f.write("payments.csv", &payments_csv(10, &[(8, "abc"), (9, "1.5")]));
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        (report["created"].as_u64(), report["invalid"].as_u64()),
        (Some(8), Some(2)),
        "{report}"
    );
    let reasons = json_reasons(&report);
    for (line, value) in [(9, "abc"), (10, "1.5")] {
        let want = format!(
            "payments.csv line {line}: column \"amount\": \"{value}\" is not an integer (Int64) (the type inferred from the first 5 rows; set infer_schema_rows to infer it from more)"
        );
        assert!(
            reasons.iter().any(|r| r.ends_with(&want)),
            "{want}\n{reasons:#?}"
        );
    }
    // Their keys are readable, and named (rows 8 and 9).
    let mut keys: Vec<&str> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, ["8", "9"], "{report}");
    // The time opening the source took is part of the report.
    assert!(report["sources_ms"].is_i64(), "{report}");
    let expected: Vec<(String, String)> = (1..=10u64)
        .filter(|id| *id != 8 && *id != 9)
        .map(|id| (id.to_string(), (id * 100).to_string()))
        .collect();
    let mut got = pairs(&f.sqlite("out/app.db", "payments"), "id", "amount");
    got.sort_by_key(|(id, _)| id.parse::<u64>().unwrap());
    assert_eq!(got, expected);
    // `-v` logs the check of each file by name.
    let (code, out, err) = f.cli(&["-v", "run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("CSV file checked") && l.contains("payments.csv")),
        "{err}"
    );
    // A file most of whose rows do not fit the types of its first rows is not a file with a
    // few bad rows: the source fails, saying what to set, rather than read as nearly empty.
    payments_project(&f, "payments.csv", "infer_schema_rows = 2");
    f.write(
        "payments.csv",
        &payments_csv(6, &[(3, "3.5"), (4, "4.5"), (5, "5.5"), (6, "6.5")]),
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("4 of 6 rows cannot be read, 4 of them for a value")
            && err.contains("set infer_schema_rows"),
        "{out}{err}"
    );
    assert_eq!(f.sqlite("out/app.db", "payments").len(), 8);
}

/// By default the types come from the first 10,000 rows, not the whole file: a text value in
/// row 10,020 of an integer column is that row's problem, reported with its line.
#[tokio::test]
async fn by_default_types_are_inferred_from_the_first_ten_thousand_rows() {
    let f = Fixture::new();
    payments_project(&f, "payments.csv", "");
    f.write("payments.csv", &payments_csv(10_050, &[(10_020, "abc")]));
    let r = f.run_ok("payments").await;
    assert_eq!((r.counts.created, r.counts.invalid), (10_049, 1), "{r:?}");
    let reasons: Vec<&str> = r.samples.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.ends_with(
            "payments.csv line 10021: column \"amount\": \"abc\" is not an integer (Int64) (the type inferred from the first 10000 rows; set infer_schema_rows to infer it from more)"
        )),
        "{reasons:#?}"
    );
    let rows = f.sqlite("out/app.db", "payments");
    assert_eq!(rows.len(), 10_049);
    assert!(rows.iter().all(|r| r["id"] != "10020"));
    assert!(
        rows.iter()
            .any(|r| r["id"] == "10050" && r["amount"] == "1005000")
    );
    // Raised past the row, the column is text and every row arrives as it is.
    let f = Fixture::new();
    payments_project(&f, "payments.csv", "infer_schema_rows = 20000");
    f.write("payments.csv", &payments_csv(10_050, &[(10_020, "abc")]));
    let r = f.run_ok("payments").await;
    assert_eq!((r.counts.created, r.counts.invalid), (10_050, 0), "{r:?}");
    let rows = f.sqlite("out/app.db", "payments");
    assert!(
        rows.iter()
            .any(|r| r["id"] == "10020" && r["amount"] == "abc")
    );
}

/// A CSV read through an object-store URL (`http://`, from a server on this machine) is
/// quarantined exactly like the same file on disk: the same rows arrive and the same bad rows
/// are reported on the same lines (a ragged row, and a value its inferred type cannot hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_behind_an_http_url_is_quarantined_like_the_same_file_on_disk() {
    let mut csv = payments_csv(12, &[(9, "x9")]);
    csv = csv.replace("5,500,n5\n", "5,500,n5,extra\n");
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("payments.csv"), &csv).unwrap();
    let server = files_http::FileServer::start(served.path());

    let on_disk = Fixture::new();
    payments_project(&on_disk, "payments.csv", "infer_schema_rows = 4");
    on_disk.write("payments.csv", &csv);
    let over_http = Fixture::new();
    payments_project(
        &over_http,
        &server.url("payments.csv"),
        "infer_schema_rows = 4",
    );

    let mut outcomes = Vec::new();
    for (f, file) in [
        (
            &on_disk,
            on_disk.path().join("payments.csv").display().to_string(),
        ),
        (&over_http, server.url("payments.csv")),
    ] {
        let r = f.run_ok("payments").await;
        let mut reasons: Vec<String> = r
            .samples
            .iter()
            .map(|s| {
                // The file as the source names it (a path, a URL); the rest is the same.
                let prefix = format!("source payments {file} line ");
                s.reason
                    .strip_prefix(&prefix)
                    .unwrap_or_else(|| panic!("{:?} does not start with {prefix:?}", s.reason))
                    .to_string()
            })
            .collect();
        reasons.sort();
        let rows = f.sqlite("out/app.db", "payments");
        outcomes.push((r.counts.created, r.counts.invalid, reasons, rows));
    }
    let (created, invalid, reasons, rows) = &outcomes[0];
    assert_eq!((*created, *invalid), (10, 2));
    assert_eq!(
        reasons,
        &vec![
            "10: column \"amount\": \"x9\" is not an integer (Int64) (the type inferred from the first 4 rows; set infer_schema_rows to infer it from more)".to_string(),
            "6: the row has 4 field(s), the header has 3".to_string(),
        ]
    );
    assert_eq!(rows.len(), 10);
    assert_eq!(outcomes[1], outcomes[0]);
    assert!(
        server.requests().iter().any(|r| r == "GET /payments.csv"),
        "{:?}",
        server.requests()
    );
    // The copy fetched from the server is gone with the run.
    let leftovers: Vec<_> = std::fs::read_dir(over_http.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".backflow-clean")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A URL that names nothing is a missing file, named.
    payments_project(&over_http, &server.url("nothing.csv"), "");
    let project = over_http.load().unwrap();
    let Err(e) = project.session().await else {
        panic!("a missing object was read");
    };
    let e = e.to_string();
    assert!(
        e.contains("nothing.csv") && e.contains("does not exist"),
        "{e}"
    );
}

/// Keys (from `--keys`, or pushed to `backflow serve`) reach an SQLite source as values,
/// never as SQL: the unparser the providers use leaves `\'` and `''` as they are, so a filter
/// holding such text is applied after the scan.
#[test]
fn keys_with_quotes_and_backslashes_are_values_never_sql() {
    let f = Fixture::new();
    accounts_into_sqlite(
        &f,
        "CREATE TABLE accounts (code TEXT PRIMARY KEY, name TEXT);
         INSERT INTO accounts VALUES ('it''s', 'Quote'), ('a''''b', 'Two quotes'), ('a''b', 'One quote'),
                                     ('C:\\temp', 'Backslash'), ('plain', 'Plain');
         CREATE TABLE secrets (k TEXT, v TEXT);
         INSERT INTO secrets VALUES ('api_key', 'hunter2');",
        "behavior = \"upsert\"\nkey = \"code\"",
    );
    let sent = |f: &Fixture| -> Vec<(String, String)> {
        let mut rows = pairs(&f.sqlite("out/crm.db", "accounts"), "code", "name");
        rows.sort();
        rows
    };
    for attack in [
        "\\') OR 1=1 --",
        "\\') UNION SELECT k, v FROM secrets --",
        "x' OR '1'='1",
    ] {
        let (code, out, err) = f.cli(&["run", "accounts", "--keys", attack]);
        assert_eq!(code, 0, "{attack}: {out}{err}");
        assert!(
            !f.path().join("out/crm.db").exists() || sent(&f).is_empty(),
            "{attack}: {:?}",
            sent(&f)
        );
    }
    // Keys with quotes and backslashes find exactly their own record.
    for (key, name) in [
        ("it's", "Quote"),
        ("a''b", "Two quotes"),
        ("C:\\temp", "Backslash"),
    ] {
        let (code, out, err) = f.cli(&["run", "accounts", "--keys", key]);
        assert_eq!(code, 0, "{key}: {out}{err}");
        assert!(
            sent(&f).contains(&(key.to_string(), name.to_string())),
            "{key}: {:?}",
            sent(&f)
        );
    }
    assert_eq!(
        sent(&f),
        vec![
            ("C:\\temp".to_string(), "Backslash".to_string()),
            ("a''b".to_string(), "Two quotes".to_string()),
            ("it's".to_string(), "Quote".to_string()),
        ]
    );
}

/// An entity reads an SQLite table a batch at a time (a `COUNT(*)` over the table, with no
/// column, once failed inside DataFusion: the providers answer such a scan with a column).
#[test]
fn an_entity_reads_an_sqlite_table_in_batches() {
    let f = Fixture::new();
    let conn = rusqlite::Connection::open(f.path().join("crm.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT);",
    )
    .unwrap();
    for i in 0..11 {
        conn.execute(
            "INSERT INTO accounts VALUES (?1, ?2, ?3)",
            rusqlite::params![i, format!("n{i}"), format!("2026-01-{:02}", i + 1)],
        )
        .unwrap();
    }
    drop(conn);
    f.write(
        "backflow.toml",
        r#"
[sources.crm]
type = "sqlite"
path = "crm.db"
tables = ["accounts"]

[entities.account]
fields = { name = "text" }
batch_size = 4

[entities.account.sources.crm]
from = "crm.accounts"
id = "id"
watermark = "updated_at"
fields = { name = "name" }
"#,
    );
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["created"], 11, "{v}");
    assert_eq!(v["cycles"], 3, "{v}");
}

/// SQLite columns have the types they are declared with: a NULL in the first row does not make
/// every value of its column NULL, and an emptied table still has its columns.
#[test]
fn sqlite_columns_have_their_declared_types() {
    let f = Fixture::new();
    accounts_into_sqlite(
        &f,
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, mrr REAL, note VARCHAR(20));
         INSERT INTO accounts VALUES (1, NULL, NULL, NULL), (2, 'Globex', 2.5, 'n2'), (3, 'Initech', 3, NULL);",
        "behavior = \"mirror\"\nkey = \"id\"\nmax_deletes = \"100%\"",
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut rows: Vec<String> = f
        .sqlite("out/crm.db", "accounts")
        .iter()
        .map(|r| format!("{}|{}|{}|{}", r["id"], r["name"], r["mrr"], r["note"]))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        ["1|NULL|NULL|NULL", "2|Globex|2.5|n2", "3|Initech|3|NULL"]
    );
    // Emptied: the table keeps its columns, and the mirror empties the object.
    let conn = rusqlite::Connection::open(f.path().join("in/app.db")).unwrap();
    conn.execute_batch("DELETE FROM accounts").unwrap();
    drop(conn);
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(f.sqlite("out/crm.db", "accounts").is_empty());
}

/// A project whose sync `accounts` reads table `accounts` of `in/app.db` (made by `sql`) into
/// `out/crm.db`, with `settings` (its behavior and key).
fn accounts_into_sqlite(f: &Fixture, sql: &str, settings: &str) {
    std::fs::create_dir_all(f.path().join("in")).unwrap();
    rusqlite::Connection::open(f.path().join("in/app.db"))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.app]
type = "sqlite"
path = "in/app.db"
tables = ["accounts"]

[destinations.out]
type = "sqlite"
path = "out/crm.db"

[syncs.accounts]
from = "app.accounts"
to = "out"
object = "accounts"
{settings}
"#
        ),
    );
}

/// A glob names the files directly in its folder whose names match, `=` in a name or not; the
/// files whose rows were checked are the files read; a glob before the last part is refused.
#[test]
fn a_glob_reads_exactly_the_files_it_names() {
    let f = Fixture::new();
    f.write("lc/a.csv", "id,name\n1,Ada\n");
    f.write("lc/k=v.csv", "id,name\n2,Kay\n");
    // Not in `lc/*.csv`: a row here that cannot be read must not matter.
    f.write("lc/date=1/p.csv", "id,name\nabc,bad\n");
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "lc/*.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people]
from = "people"
to = "app"
object = "people"
behavior = "mirror"
key = "id"
"#,
    );
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&report["created"], &report["invalid"]),
        (&2.into(), &0.into()),
        "{report}"
    );
    let mut names = f.sqlite_cells("out/app.db", "people", &["name"]);
    names.sort();
    assert_eq!(names, vec!["Ada", "Kay"]);

    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("lc/*.csv", "lc/date=*/p.csv"),
    );
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_ne!(code, 0);
    assert!(
        (out.clone() + &err).contains("a glob works in the last part of the path only"),
        "{out}\n{err}"
    );
}
