//! DuckDB database files as sources (the `duckdb` feature): files written by DuckDB itself
//! (the duckdb crate the feature brings, a real DuckDB), read into PostgreSQL and SQLite.

use std::path::Path;

use backflow::sync::RunOptions;

use crate::common::db::{pg_rows, pg_schema, postgres, row};
use crate::common::{Fixture, pairs};

/// Run `sql` on the DuckDB file at `path` (created when missing), then close it.
fn duck(path: &Path, sql: &str) {
    let conn = duckdb::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// `backflow COMMAND` in `f`, which must fail: what it printed.
fn failed_run(f: &Fixture, command: &str) -> String {
    let (code, out, err) = f.cli(&[command]);
    assert_ne!(code, 0, "{out}{err}");
    format!("{out}{err}")
}

fn shop_to_pg(f: &Fixture, schema: &str, sync: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.shop]
type = "duckdb"
path = "lake/shop.duckdb"
tables = "*"

[destinations.pg]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"

[syncs.customers]
from = "shop.customers"
to = "pg"
object = "customers"
key = "id"
{sync}
"#
        ),
    );
}

/// Values at the edges of their types arrive exactly in PostgreSQL; a cursor run sends only
/// what changed, its watermark filter written into the SQL DuckDB runs; a mirror deletes what
/// the file deleted.
#[tokio::test]
async fn a_duckdb_file_syncs_exactly_and_reads_past_the_watermark_in_duckdb() {
    let Some(pg) = postgres().await else {
        return;
    };
    let schema = "bf_e2e_duckdb";
    pg_schema(&pg, schema).await;
    let f = Fixture::new();
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
    let file = f.path().join("lake/shop.duckdb");
    duck(
        &file,
        r#"
CREATE TABLE customers (
    id BIGINT PRIMARY KEY, name VARCHAR, amount DECIMAL(38, 10), small SMALLINT, big BIGINT,
    ratio DOUBLE, vip BOOLEAN, born DATE, seen TIMESTAMP, seen_tz TIMESTAMPTZ, note VARCHAR,
    updated_at TIMESTAMP NOT NULL, extra STRUCT(d DECIMAL(38, 10), n BIGINT));
INSERT INTO customers VALUES
 (1, 'Ada', 1.5, -32768, 9223372036854775807, 0.1, true, DATE '2024-02-29',
  TIMESTAMP '2026-01-02 03:04:05.123456', TIMESTAMPTZ '2026-01-02 03:04:05.654321+00',
  'it''s "quoted" \ back', TIMESTAMP '2026-01-01 00:00:00',
  {'d': 1234567890123456789012345678.0123456789, 'n': 9007199254740993}),
 (2, 'Zoë ✓', 1234567890123456789012345678.0123456789, 32767, -9223372036854775808,
  -1e300, false, DATE '0001-01-01', TIMESTAMP '0001-01-01 00:00:00',
  TIMESTAMPTZ '9999-12-31 23:59:59.999999+00', '', TIMESTAMP '2026-01-01 00:00:01', NULL),
 (3, NULL, -0.0000000001, NULL, NULL, NULL, NULL, DATE '9999-12-31',
  TIMESTAMP '9999-12-31 23:59:59.999999', NULL, NULL, TIMESTAMP '2026-01-01 00:00:02', NULL);
CREATE TABLE ignored (x INTEGER);
"#,
    );
    shop_to_pg(&f, schema, "behavior = \"upsert\"\ncursor = \"updated_at\"");
    let r = f.run_ok("customers").await;
    assert_eq!(r.counts.created, 3, "{r:?}");
    let q = format!(
        "SELECT id, name, amount, small, big, ratio, vip, born, seen, seen_tz AT TIME ZONE 'UTC', note, \
         extra::text FROM {schema}.customers"
    );
    let expected = vec![
        row(&[
            "1",
            "Ada",
            "1.5000000000",
            "-32768",
            "9223372036854775807",
            "0.1",
            "t",
            "2024-02-29",
            "2026-01-02 03:04:05.123456",
            "2026-01-02 03:04:05.654321",
            "it's \"quoted\" \\ back",
            // Nested values keep every digit (jsonb).
            r#"{"d": 1234567890123456789012345678.0123456789, "n": 9007199254740993}"#,
        ]),
        row(&[
            "2",
            "Zoë ✓",
            "1234567890123456789012345678.0123456789",
            "32767",
            "-9223372036854775808",
            "-1e+300",
            "f",
            "0001-01-01",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59.999999",
            "",
            "NULL",
        ]),
        row(&[
            "3",
            "NULL",
            "-0.0000000001",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "9999-12-31",
            "9999-12-31 23:59:59.999999",
            "NULL",
            "NULL",
            "NULL",
        ]),
    ];
    assert_eq!(pg_rows(&pg, &q).await, expected);

    // The next run's watermark filter is SQL that DuckDB runs.
    duck(
        &file,
        "UPDATE customers SET name = 'Ada L.', updated_at = TIMESTAMP '2026-02-01' WHERE id = 1;",
    );
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let plan = backflow::sync::explain(&project, &ctx, "customers")
        .await
        .unwrap();
    let sql: Vec<&str> = plan.lines().filter(|l| l.contains("DuckSqlExec")).collect();
    assert!(!sql.is_empty(), "{plan}");
    for q in &sql {
        assert!(
            q.contains("WHERE") && q.contains("\"updated_at\" >="),
            "the watermark filter is not in the SQL sent to DuckDB: {q}"
        );
    }
    drop((ctx, project));
    let r = f.run_ok("customers").await;
    // (The row at the watermark is read again, and found unchanged.)
    assert_eq!((r.counts.read, r.counts.updated), (2, 1), "{r:?}");
    assert_eq!(
        pg_rows(&pg, &format!("SELECT id, name FROM {schema}.customers")).await,
        vec![
            row(&["1", "Ada L."]),
            row(&["2", "Zoë ✓"]),
            row(&["3", "NULL"])
        ]
    );

    // A mirror reading the whole table deletes what the file deleted.
    shop_to_pg(&f, schema, "behavior = \"mirror\"");
    duck(&file, "DELETE FROM customers WHERE id = 2;");
    let r = f.run_ok("customers").await;
    assert_eq!(r.counts.deleted, 1, "{r:?}");
    assert_eq!(
        pg_rows(&pg, &format!("SELECT id FROM {schema}.customers")).await,
        vec![row(&["1"]), row(&["3"])]
    );
}

fn shop_to_sqlite(f: &Fixture, source: &str, sync: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.shop]
type = "duckdb"
path = "shop.duckdb"
{source}

[destinations.app]
type = "sqlite"
path = "out/app.db"

{sync}
"#
        ),
    );
}

/// Tables and columns with spaces, quotes and capitals, in another schema; a model joins two
/// of them.
#[tokio::test]
async fn awkward_names_and_other_schemas_are_read() {
    let f = Fixture::new();
    duck(
        &f.path().join("shop.duckdb"),
        r#"
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order Items" ("Item ID" INTEGER, "it's" VARCHAR, "Qty" INTEGER);
INSERT INTO "Sales Dept"."Order Items" VALUES (1, 'a', 2), (2, 'b', 3);
CREATE TABLE "Sales Dept".prices (item INTEGER, price DECIMAL(10, 2));
INSERT INTO "Sales Dept".prices VALUES (1, 9.99), (2, 0.01);
CREATE VIEW "Sales Dept".big_items AS SELECT * FROM "Sales Dept"."Order Items" WHERE "Qty" > 2;
"#,
    );
    f.write(
        "models/lines.sql",
        r#"SELECT i."Item ID" AS id, i."it's" AS label, i."Qty" * p.price AS total
FROM shop."Order Items" i JOIN shop.prices p ON p.item = i."Item ID""#,
    );
    shop_to_sqlite(
        &f,
        "schema = \"Sales Dept\"\ntables = \"*\"",
        r#"
[syncs.lines]
from = "lines"
to = "app"
object = "lines"
behavior = "upsert"
key = "id"

[syncs.big]
from = "shop.big_items"
to = "app"
object = "big"
behavior = "upsert"
key = "Item ID"
"#,
    );
    let reports = f.run_with(&[], RunOptions::default()).await;
    for r in &reports {
        assert!(r.error.is_none(), "{r:?}");
    }
    let mut got = pairs(&f.sqlite("out/app.db", "lines"), "label", "total");
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), "19.98".to_string()),
            ("b".to_string(), "0.03".to_string())
        ]
    );
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "big"), "Item ID", "it's"),
        vec![("2".to_string(), "b".to_string())]
    );
}

/// What stops a DuckDB source says what to do: a missing file, a table that is not there (with
/// the ones that are), a schema that is not there (with the ones that are), a file another
/// program is writing, a column of a type the provider cannot read, a file that is not DuckDB's.
#[test]
fn a_source_that_cannot_be_read_says_why() {
    let f = Fixture::new();
    let sync = "[syncs.s]\nfrom = \"shop.customers\"\nto = \"app\"\nobject = \"c\"\nbehavior = \"upsert\"\nkey = \"id\"\n";

    shop_to_sqlite(&f, "tables = \"*\"", sync);
    let e = failed_run(&f, "run");
    assert!(
        e.contains("shop.duckdb") && e.contains("does not exist"),
        "{e}"
    );

    let file = f.path().join("shop.duckdb");
    duck(
        &file,
        "CREATE TABLE customers (id INTEGER, tags INTEGER[][]); CREATE TABLE orders (id INTEGER);
         CREATE SCHEMA crm; CREATE TABLE crm.accounts (id INTEGER);",
    );
    shop_to_sqlite(
        &f,
        "tables = [\"customer\"]",
        &sync.replace("shop.customers", "shop.customer"),
    );
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"customer\" does not exist") && e.contains("customers, orders"),
        "{e}"
    );

    shop_to_sqlite(&f, "schema = \"sales\"\ntables = \"*\"", sync);
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"sales\" has no tables") && e.contains("crm, main"),
        "{e}"
    );

    shop_to_sqlite(&f, "tables = [\"customers\"]", sync);
    let e = failed_run(&f, "run");
    assert!(
        e.contains("customers") && e.contains("tags") && e.contains("cast"),
        "{e}"
    );

    // With every table, the one that cannot be read is left out and named by what reads it.
    shop_to_sqlite(
        &f,
        "tables = \"*\"",
        &format!(
            "{sync}{}",
            sync.replace("syncs.s", "syncs.o")
                .replace("customers", "orders")
                .replace("\"c\"", "\"o\"")
        ),
    );
    let (code, out, err) = f.cli(&["check"]);
    assert!(
        out.contains("shop.customers cannot be read") && out.contains("tags"),
        "{code} {out}{err}"
    );
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("shop.customers cannot be read") && out.contains("tags"),
        "{out}{err}"
    );

    // A writer holds the file: the run stops at once and says who to wait for.
    shop_to_sqlite(
        &f,
        "tables = [\"orders\"]",
        &sync.replace("customers", "orders"),
    );
    let writer = duckdb::Connection::open(&file).unwrap();
    writer
        .execute_batch("INSERT INTO orders VALUES (1)")
        .unwrap();
    let e = failed_run(&f, "run");
    assert!(e.contains("lock") && e.contains("copy of the file"), "{e}");
    drop(writer);
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.sqlite("out/app.db", "c").len(), 1);

    f.write("shop.duckdb", "id,name\n1,Ada\n");
    let e = failed_run(&f, "run");
    assert!(e.contains("shop.duckdb") && e.contains("DuckDB"), "{e}");
}

/// Keys (from `--keys`, or pushed to `backflow serve`) reach a DuckDB source as values, never
/// as SQL: a filter holding a quote or a backslash is applied after the scan.
#[test]
fn keys_with_quotes_and_backslashes_are_values_never_sql() {
    let f = Fixture::new();
    duck(
        &f.path().join("shop.duckdb"),
        r#"
CREATE TABLE accounts (code VARCHAR PRIMARY KEY, name VARCHAR);
INSERT INTO accounts VALUES ('it''s', 'Quote'), ('a''''b', 'Two quotes'), ('a''b', 'One quote'),
                            ('C:\temp', 'Backslash'), ('plain', 'Plain');
CREATE TABLE secrets (k VARCHAR, v VARCHAR);
INSERT INTO secrets VALUES ('api_key', 'hunter2');
"#,
    );
    shop_to_sqlite(
        &f,
        "tables = [\"accounts\"]",
        "[syncs.accounts]\nfrom = \"shop.accounts\"\nto = \"app\"\nobject = \"accounts\"\nbehavior = \"upsert\"\nkey = \"code\"\n",
    );
    let sent = |f: &Fixture| -> Vec<(String, String)> {
        if !f.path().join("out/app.db").exists() {
            return vec![];
        }
        let mut rows = pairs(&f.sqlite("out/app.db", "accounts"), "code", "name");
        rows.sort();
        rows
    };
    for attack in [
        "\\') OR 1=1 --",
        "x' OR '1'='1",
        "') UNION SELECT k, v FROM secrets --",
    ] {
        let (code, out, err) = f.cli(&["run", "accounts", "--keys", attack]);
        assert_eq!(code, 0, "{attack}: {out}{err}");
        assert!(sent(&f).is_empty(), "{attack}: {:?}", sent(&f));
    }
    for (key, name) in [
        ("it's", "Quote"),
        ("a''b", "Two quotes"),
        ("C:\\temp", "Backslash"),
        ("plain", "Plain"),
    ] {
        let (code, out, err) = f.cli(&["run", "accounts", "--keys", key]);
        assert_eq!(code, 0, "{key}: {out}{err}");
        assert!(
            sent(&f).contains(&(key.to_string(), name.to_string())),
            "{key}: {:?}",
            sent(&f)
        );
    }
    assert_eq!(sent(&f).len(), 4);
}

/// An empty table is read as no rows (a first mirror run creates nothing), and a table of a
/// million rows streams through without being held whole.
#[tokio::test]
async fn empty_and_large_tables() {
    let f = Fixture::new();
    let file = f.path().join("shop.duckdb");
    duck(
        &file,
        "CREATE TABLE events (id BIGINT, kind VARCHAR, happened TIMESTAMP);",
    );
    shop_to_sqlite(
        &f,
        "tables = \"*\"",
        "[syncs.events]\nfrom = \"shop.events\"\nto = \"app\"\nobject = \"events\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
    );
    let r = f.run_ok("events").await;
    assert_eq!((r.counts.read, r.counts.created), (0, 0), "{r:?}");
    duck(
        &file,
        "INSERT INTO events SELECT i, 'k' || (i % 7), TIMESTAMP '2026-01-01' + INTERVAL (i) SECOND \
         FROM range(1000000) t(i);",
    );
    let r = f.run_ok("events").await;
    assert_eq!(
        (r.counts.read, r.counts.created),
        (1_000_000, 1_000_000),
        "{r:?}"
    );
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    let (n, sum): (i64, i64) = conn
        .query_row("SELECT count(*), sum(id) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, sum), (1_000_000, 999_999 * 1_000_000 / 2));
}

/// Values DuckDB's Arrow form would change never arrive changed: an infinite date or timestamp
/// stops the read naming its column and row; a column of a type whose Arrow form is not its
/// value (`TIME WITH TIME ZONE` loses its offset, `UHUGEINT` wraps) is refused before anything
/// is read. A HUGEINT (what DuckDB's `sum` gives) arrives whole up to 38 digits, the most an
/// Arrow decimal holds; one of 39 stops the read.
#[test]
fn values_duckdb_cannot_hand_over_exactly_are_never_sent_changed() {
    let f = Fixture::new();
    let file = f.path().join("shop.duckdb");
    duck(
        &file,
        "CREATE TABLE plans (id INTEGER, valid_to DATE, ends TIMESTAMP);
         INSERT INTO plans VALUES (1, DATE '2030-01-01', TIMESTAMP '2030-01-01'),
                                  (2, 'infinity', TIMESTAMP '2031-01-01');
         CREATE TABLE meetings (id INTEGER, starts TIMETZ);
         CREATE TABLE totals (id INTEGER, total HUGEINT);
         INSERT INTO totals VALUES (1, 170141183460469231731687303715884105727),
                                   (2, -99999999999999999999999999999999999999);",
    );
    let sync = |table: &str| {
        format!(
            "[syncs.s]\nfrom = \"shop.{table}\"\nto = \"app\"\nobject = \"{table}\"\nbehavior = \"upsert\"\nkey = \"id\"\n"
        )
    };
    shop_to_sqlite(&f, "tables = [\"plans\"]", &sync("plans"));
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"valid_to\"") && e.contains("row 2") && e.contains("infinity"),
        "{e}"
    );
    assert!(!f.path().join("out/app.db").exists() || f.sqlite("out/app.db", "plans").is_empty());

    duck(
        &file,
        "UPDATE plans SET valid_to = DATE '2040-01-01', ends = '-infinity' WHERE id = 2;",
    );
    let e = failed_run(&f, "run");
    assert!(e.contains("\"ends\"") && e.contains("-infinity"), "{e}");

    // Inside lists, structs and maps too; and dates past the years a date can be written in.
    duck(
        &file,
        "CREATE TABLE nested (id INTEGER, s STRUCT(h HUGEINT), l TIMESTAMP[], m MAP(VARCHAR, DATE));
         INSERT INTO nested VALUES (1, {'h': 1}, [TIMESTAMP '2026-01-01'], MAP {'k': DATE '2026-01-01'}),
                                   (2, {'h': 2}, [TIMESTAMP '2026-01-01', '-infinity'], MAP {'k': DATE '2026-01-01'});
         CREATE TABLE far (id INTEGER, d DATE);
         INSERT INTO far VALUES (1, DATE '2026-01-01'), (2, DATE '262143-01-01');",
    );
    shop_to_sqlite(&f, "tables = [\"nested\"]", &sync("nested"));
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"l\"") && e.contains("row 2") && e.contains("-infinity"),
        "{e}"
    );
    duck(
        &file,
        "UPDATE nested SET l = [], s = {'h': 170141183460469231731687303715884105727} WHERE id = 2;",
    );
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"s\"") && e.contains("row 2") && e.contains("digits"),
        "{e}"
    );
    duck(
        &file,
        "UPDATE nested SET m = MAP {'k': 'infinity'::DATE}, s = {'h': 2} WHERE id = 2;",
    );
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"m\"") && e.contains("row 2") && e.contains("infinity"),
        "{e}"
    );
    shop_to_sqlite(&f, "tables = [\"far\"]", &sync("far"));
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"d\"") && e.contains("row 2") && e.contains("262142"),
        "{e}"
    );

    shop_to_sqlite(&f, "tables = [\"meetings\"]", &sync("meetings"));
    let e = failed_run(&f, "check");
    assert!(e.contains("\"starts\"") && e.contains("offset"), "{e}");
    for (table, ddl) in [
        (
            "moods",
            "CREATE TABLE moods (id INTEGER, mood ENUM('ok', 'BIT'))",
        ),
        (
            "tagged",
            "CREATE TABLE tagged (id INTEGER, v UNION(n INTEGER, s VARCHAR))",
        ),
    ] {
        duck(&file, ddl);
        shop_to_sqlite(&f, &format!("tables = [\"{table}\"]"), &sync(table));
        let e = failed_run(&f, "check");
        assert!(e.contains(table) && e.contains("VARCHAR"), "{e}");
    }

    shop_to_sqlite(&f, "tables = [\"totals\"]", &sync("totals"));
    let e = failed_run(&f, "run");
    assert!(
        e.contains("\"total\"")
            && e.contains("row 1")
            && e.contains("170141183460469231731687303715884105727"),
        "{e}"
    );
    duck(
        &file,
        "UPDATE totals SET total = 99999999999999999999999999999999999999 WHERE id = 1;",
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut got = pairs(&f.sqlite("out/app.db", "totals"), "id", "total");
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "1".to_string(),
                "99999999999999999999999999999999999999".to_string()
            ),
            (
                "2".to_string(),
                "-99999999999999999999999999999999999999".to_string()
            )
        ]
    );
}

/// A float cursor that reaches an infinity keeps working: the filter comparing with it stays
/// out of the SQL (it would print as a column named `inf`).
#[tokio::test]
async fn a_float_cursor_at_infinity_keeps_reading() {
    let f = Fixture::new();
    let file = f.path().join("shop.duckdb");
    duck(
        &file,
        "CREATE TABLE scores (id INTEGER, score DOUBLE);
         INSERT INTO scores VALUES (1, 1.5), (2, 'inf');",
    );
    shop_to_sqlite(
        &f,
        "tables = \"*\"",
        "[syncs.scores]\nfrom = \"shop.scores\"\nto = \"app\"\nobject = \"scores\"\nbehavior = \"upsert\"\nkey = \"id\"\ncursor = \"score\"\n",
    );
    let r = f.run_ok("scores").await;
    assert_eq!(r.counts.created, 2, "{r:?}");
    duck(&file, "UPDATE scores SET id = 3 WHERE id = 2;");
    let r = f.run_ok("scores").await;
    assert_eq!((r.counts.read, r.counts.created), (1, 1), "{r:?}");
}
