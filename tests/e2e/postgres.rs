//! PostgreSQL as a source and what is particular to it as a destination, against the real
//! server (see `tests/common/db.rs`); every behavior, rejections, type round trips, hostile
//! names and interrupted runs are the conformance suite's (`tests/conformance/`). Each test
//! works in its own schema.

use crate::common::db::{self, pg_rows, row};
use crate::common::*;

fn pg_destination(schema: &str) -> String {
    format!(
        r#"
[destinations.pg]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"
"#
    )
}

fn csv_to_pg(f: &Fixture, schema: &str, syncs: &str) {
    f.write(
        "backflow.toml",
        &format!(
            "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n{}\n{syncs}",
            pg_destination(schema)
        ),
    );
}

/// `SELECT a::text, b::text, … FROM schema.table` for `columns` = "a, b, …": values as
/// PostgreSQL prints them, to compare a source table with its copy.
fn as_text(schema: &str, table: &str, columns: &str) -> String {
    let list = columns
        .split(", ")
        .map(|c| format!("{c}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {list} FROM {schema}.{table}")
}

/// A project that mirrors PostgreSQL table `schema.table` (source `wh`) into `table_copy` in
/// the same schema (sync `copy`), plus `extra` TOML.
fn copy_project(schema: &str, table: &str, extra: &str) -> String {
    format!(
        r#"
[sources.wh]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"
tables = ["{table}"]
{}
[syncs.copy]
from = "wh.{table}"
to = "pg"
object = "{table}_copy"
behavior = "mirror"
key = "id"
{extra}"#,
        pg_destination(schema)
    )
}

fn sync(name: &str, object: &str, behavior: &str) -> String {
    format!(
        "[syncs.{name}]\nfrom = \"people\"\nto = \"pg\"\nobject = \"{object}\"\nbehavior = \"{behavior}\"\nkey = \"id\"\n"
    )
}

#[tokio::test]
async fn an_incompatible_table_stops_the_run_before_any_write() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_incompatible";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.accounts (id bigint PRIMARY KEY, mrr integer, seen timestamp)"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            "[sources.accounts]\ntype = \"csv\"\npath = \"accounts.csv\"\n{}\n\
             [syncs.accounts]\nfrom = \"accounts\"\nto = \"pg\"\nobject = \"accounts\"\nbehavior = \"upsert\"\nkey = \"id\"\n",
            pg_destination(schema)
        ),
    );
    f.write("accounts.csv", "id,mrr\n1,10.5\n2,3.25\n");
    let r = f
        .run_with(&["accounts"], Default::default())
        .await
        .remove(0);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("\"mrr\"") && error.contains("integer") && error.contains("rounded"),
        "{error}"
    );
    assert!(f.manifests().is_empty());
    assert!(
        pg_rows(&pg, &format!("SELECT * FROM {schema}.accounts"))
            .await
            .is_empty()
    );
}

/// Every common PostgreSQL type, read by the source and written back by the destination,
/// compares equal as text; a re-run sends nothing; a changed row goes out alone.
#[tokio::test]
async fn types_round_trip_through_source_and_destination() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_types";
    db::pg_schema(&pg, schema).await;
    let columns = "id, small, i, big, num, t, b, d, ts, tstz, j, jb, u";
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.typed (
            id bigint PRIMARY KEY, small smallint, i integer, big bigint, num numeric(38,18),
            t text, b boolean, d date, ts timestamp, tstz timestamptz, j json, jb jsonb, u uuid);
         INSERT INTO {schema}.typed VALUES
           (1, -32768, 2147483647, 9007199254740993, 1234567890.123456789012345678,
            'quote '' backslash \\ tab \t', true, '2024-02-29', '2024-01-02 03:04:05.123456',
            '2024-06-01 12:00:00.5+02', '{{\"a\": [1, 2]}}', '{{\"b\": null}}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
           (2, NULL, NULL, -9223372036854775808, -0.000000000000000001, '', false, '0001-01-01',
            NULL, NULL, NULL, NULL, NULL);"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write("backflow.toml", &copy_project(schema, "typed", ""));
    let r = f.run_ok("copy").await;
    assert_eq!(r.counts.created, 2, "{r:?}");
    let text = |t: &str| as_text(schema, t, columns);
    let source = pg_rows(&pg, &text("typed")).await;
    let copy = pg_rows(&pg, &text("typed_copy")).await;
    assert_eq!(copy, source);
    let r = f.run_ok("copy").await;
    assert_eq!((r.counts.unchanged, r.counts.updated), (2, 0));
    pg.batch_execute(&format!("UPDATE {schema}.typed SET num = 1.5 WHERE id = 2"))
        .await
        .unwrap();
    let r = f.run_ok("copy").await;
    assert_eq!((r.counts.unchanged, r.counts.updated), (1, 1));
    assert_eq!(
        pg_rows(&pg, &text("typed_copy")).await,
        pg_rows(&pg, &text("typed")).await
    );
}

/// Values at the edges of their types arrive exactly, in a PostgreSQL destination (compared
/// as PostgreSQL's own text) and in a Parquet file: timestamps from year 1 to 9999 (outside
/// the nanosecond range, before 1970), 38- and 60-digit numerics, an unconstrained numeric
/// (as its text, `NaN` included), and types with no Arrow equivalent (arrays, `inet`,
/// `char(n)`) as PostgreSQL's text.
#[tokio::test]
async fn values_at_the_edges_of_their_types_arrive_exactly() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_edges";
    db::pg_schema(&pg, schema).await;
    // `char(5)` is compared apart: PostgreSQL's cast to text drops the padding the value has.
    let columns = "id, tstz, ts, d, n38, n60, n, tm, arr, addr, big, f";
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.edges (
            id integer PRIMARY KEY, tstz timestamptz, ts timestamp, d date, n38 numeric(38,10),
            n60 numeric(60,20), n numeric, tm time, arr integer[], addr inet, ch char(5),
            big bigint, f double precision);
         INSERT INTO {schema}.edges VALUES
           (1, '9999-12-31 23:59:59.999999+00', '9999-12-31 23:59:59.999999', '9999-12-31',
            9999999999999999999999999999.9999999999,
            1234567890123456789012345678901234567890.12345678901234567890, 123.4500,
            '23:59:59.999999', '{{1,NULL,3}}', '10.0.0.0/8', 'ab', 9223372036854775807, 1e308),
           (2, '0001-01-01 00:00:00+00', '1900-01-01 00:00:00', '0001-01-01',
            -9999999999999999999999999999.9999999999, -0.00000000000000000001,
            -0.000000000000000000000000000001, '00:00:00', '{{}}', '::1', 'abcde',
            -9223372036854775808, -2.2250738585072014e-308),
           (3, '1969-12-31 23:59:59.999999+00', '1969-12-31 23:59:59.999999', '1969-12-31',
            0, 0, 'NaN', '12:00:00', NULL, NULL, '', 0, 0.1),
           (4, '2262-04-12 00:00:00+00', '2262-04-12 00:00:00.000001', '2262-04-12',
            0.0000000001, 1, 1e40, NULL, '{{-2147483648}}', NULL, NULL, NULL, NULL),
           (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &copy_project(
            schema,
            "edges",
            r#"
[destinations.lake]
type = "file"
path = "lake"
format = "parquet"

[syncs.file]
from = "wh.edges"
to = "lake"
object = "edges"
behavior = "mirror"
key = "id"
"#,
        ),
    );
    let r = f.run_ok("copy").await;
    assert_eq!(r.counts.created, 5, "{r:?}");
    let text = |t: &str| as_text(schema, t, columns);
    let source = pg_rows(&pg, &text("edges")).await;
    let copy = pg_rows(&pg, &text("edges_copy")).await;
    assert_eq!(copy, source);
    assert_eq!(
        pg_rows(
            &pg,
            &format!("SELECT id::text, ch FROM {schema}.edges_copy")
        )
        .await,
        vec![
            row(&["1", "ab   "]),
            row(&["2", "abcde"]),
            row(&["3", "     "]),
            row(&["4", "NULL"]),
            row(&["5", "NULL"])
        ]
    );
    assert_eq!(f.run_ok("copy").await.counts.unchanged, 5);

    let r = f.run_ok("file").await;
    assert_eq!(r.counts.created, 5, "{r:?}");
    let bytes = bytes::Bytes::from(std::fs::read(f.path().join("lake/edges.parquet")).unwrap());
    let batches: Vec<_> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    for expected in [
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "2262-04-12T00:00:00.000001",
        "1900-01-01T00:00:00",
        "9999999999999999999999999999.9999999999",
        "-9999999999999999999999999999.9999999999",
        "1234567890123456789012345678901234567890.12345678901234567890",
        "-0.00000000000000000001",
        "123.4500",
        "-0.000000000000000000000000000001",
        "NaN",
        "{1,NULL,3}",
        "10.0.0.0/8",
        "| ab    |",
        "9223372036854775807",
        "-9223372036854775808",
    ] {
        assert!(table.contains(expected), "{expected} is missing:\n{table}");
    }
}

/// A value that has no exact Arrow equivalent (`infinity`) stops the read with a message
/// naming the table, the column and the row, and nothing is written; never a different value.
#[tokio::test]
async fn an_infinite_timestamp_stops_the_read_naming_the_column() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_infinity";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.contracts (id integer PRIMARY KEY, valid_to timestamptz);
         INSERT INTO {schema}.contracts VALUES (1, '2030-01-01'), (2, 'infinity');"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write("backflow.toml", &copy_project(schema, "contracts", ""));
    let r = f.run_with(&["copy"], Default::default()).await.remove(0);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("\"valid_to\"") && error.contains("infinity") && error.contains("row 2"),
        "{error}"
    );
    assert!(f.manifests().is_empty());
    let copied = pg
        .query_opt(
            &format!("SELECT to_regclass('{schema}.contracts_copy')::text"),
            &[],
        )
        .await
        .unwrap()
        .and_then(|r| r.get::<_, Option<String>>(0));
    if copied.is_some() {
        assert!(
            pg_rows(&pg, &format!("SELECT * FROM {schema}.contracts_copy"))
                .await
                .is_empty()
        );
    }
}

/// A cursor sync on a PostgreSQL table: the watermark filter reaches the database as SQL, and
/// a re-run reads only the new rows.
#[tokio::test]
async fn cursor_reads_push_the_watermark_filter_down_to_postgres() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_cursor";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.events (id bigint PRIMARY KEY, kind text, updated_at timestamptz NOT NULL);
         INSERT INTO {schema}.events SELECT g, 'k' || g, timestamptz '2024-01-01' + g * interval '1 minute'
         FROM generate_series(1, 1000) g;"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.wh]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"
tables = "*"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.events]
from = "recent"
to = "app"
object = "events"
behavior = "upsert"
key = "id"
cursor = "updated_at"
"#
        ),
    );
    f.write(
        "models/recent.sql",
        "SELECT id, kind, updated_at FROM wh.events WHERE kind <> 'skip'",
    );
    let r = f.run_ok("events").await;
    assert_eq!(r.counts.created, 1000);
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.events VALUES (1001, 'new', timestamptz '2025-01-01'); \
         UPDATE {schema}.events SET kind = 'changed', updated_at = timestamptz '2025-01-02' WHERE id = 5;"
    ))
    .await
    .unwrap();
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let plan = backflow::sync::explain(&project, &ctx, "events")
        .await
        .unwrap();
    let sql: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("PostgresScan"))
        .collect();
    // Every query sent to the server (the read and the duplicate-key check) carries the
    // watermark filter.
    assert!(!sql.is_empty(), "{plan}");
    for q in &sql {
        assert!(
            q.contains("WHERE") && q.contains("\"updated_at\" >="),
            "the watermark filter is not in the SQL sent to PostgreSQL: {q}"
        );
    }
    let r = f.run_ok("events").await;
    assert_eq!(
        (r.counts.read, r.counts.created, r.counts.updated),
        (3, 1, 1),
        "only the rows at or past the watermark are read: {r:?}"
    );
    let rows = f.sqlite("out/app.db", "events");
    assert_eq!(rows.len(), 1001);
}

#[tokio::test]
async fn connection_errors_name_the_variable_and_never_the_password() {
    let Some(_pg) = db::postgres().await else {
        return;
    };
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.pg]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_BAD_URL"

[syncs.people]
from = "people"
to = "pg"
object = "people"
behavior = "upsert"
key = "id"
"#,
    );
    f.write("people.csv", "id,name\n1,a\n");
    let r = f.run_with(&["people"], Default::default()).await.remove(0);
    let error = r.error.unwrap_or_default();
    assert!(error.contains("BACKFLOW_TEST_POSTGRES_BAD_URL"), "{error}");
    assert!(error.contains("no_such_db"), "{error}");
    assert!(!error.contains("canary-5ecret"), "{error}");
    let (code, out, err) = f.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("canary-5ecret") && !err.contains("canary-5ecret"));

    // An unset variable is named before anything is read or written.
    f.write(
        "backflow.toml",
        &std::fs::read_to_string(f.path().join("backflow.toml"))
            .unwrap()
            .replace(
                "BACKFLOW_TEST_POSTGRES_BAD_URL",
                "BACKFLOW_TEST_UNSET_VARIABLE",
            ),
    );
    let e = f.load().unwrap_err().to_string();
    assert!(
        e.contains("BACKFLOW_TEST_UNSET_VARIABLE") && e.contains("not set"),
        "{e}"
    );
}

/// Types with no Arrow equivalent (ranges, enums, arrays) arrive as PostgreSQL's own text for
/// them, a domain as its base type; a table that does not exist is named.
#[tokio::test]
async fn types_without_an_arrow_equivalent_arrive_as_their_postgresql_text() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_unmappable";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TYPE {schema}.mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN {schema}.money2 AS numeric(10,2);
         CREATE TABLE {schema}.spans (id bigint PRIMARY KEY, span int8range, m {schema}.mood,
             tags text[], amount {schema}.money2);
         INSERT INTO {schema}.spans VALUES (1, '[1,10)', 'happy', '{{\"a b\",c}}', 12.50),
             (2, 'empty', NULL, NULL, -0.01);"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.wh]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"
tables = "*"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.spans]
from = "wh.spans"
to = "app"
object = "spans"
behavior = "mirror"
key = "id"
"#
        ),
    );
    let r = f.run_ok("spans").await;
    assert_eq!(r.counts.created, 2, "{r:?}");
    let rows = f.sqlite("out/app.db", "spans");
    let get = |id: &str, c: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .map(|r| r[c].clone())
            .unwrap()
    };
    assert_eq!(get("1", "span"), "[1,10)");
    assert_eq!(get("2", "span"), "empty");
    assert_eq!(get("1", "m"), "happy");
    assert_eq!(get("1", "tags"), "{\"a b\",c}");
    assert_eq!(get("1", "amount"), "12.50");
    assert_eq!(get("2", "amount"), "-0.01");

    f.write(
        "backflow.toml",
        &std::fs::read_to_string(f.path().join("backflow.toml"))
            .unwrap()
            .replace("tables = \"*\"", "tables = [\"spans\", \"nope\"]"),
    );
    let project = f.load().unwrap();
    let e = match project.session().await {
        Ok(_) => panic!("a missing table is an error"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("\"nope\"") && e.contains("does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn a_required_column_the_sync_does_not_send_is_named_before_any_write() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_required";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.up (id bigint PRIMARY KEY, name text, tenant text NOT NULL);
         CREATE TABLE {schema}.upd (id bigint PRIMARY KEY, name text, tenant text NOT NULL);
         INSERT INTO {schema}.upd VALUES (1, 'old', 't1');"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    csv_to_pg(
        &f,
        schema,
        &[
            sync("up", "up", "upsert"),
            sync("upd", "upd", "update-only"),
        ]
        .join("\n"),
    );
    f.write("people.csv", "id,name\n1,Ada\n");
    let r = f.run_with(&["up"], Default::default()).await.remove(0);
    let e = r.error.unwrap_or_default();
    assert!(e.contains("\"tenant\"") && e.contains("NOT NULL"), "{e}");
    // An update never needs it.
    let r = f.run_ok("upd").await;
    assert_eq!(r.counts.updated, 1);
    assert_eq!(
        pg_rows(&pg, &format!("SELECT id, name, tenant FROM {schema}.upd")).await,
        vec![row(&["1", "Ada", "t1"])]
    );
}

#[tokio::test]
async fn the_postgres_example_runs_end_to_end() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_example";
    db::pg_schema(&pg, schema).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let f = Fixture::new();
    let toml = std::fs::read_to_string(root.join("example-postgres/backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml
            .replace("../example/people.csv", "people.csv")
            .replace("BACKFLOW_EXAMPLE_PG_URL", "BACKFLOW_TEST_POSTGRES_URL")
            .replace("\"backflow_example\"", &format!("\"{schema}\"")),
    );
    std::fs::copy(root.join("example/people.csv"), f.path().join("people.csv")).unwrap();
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let people = std::fs::read_to_string(f.path().join("people.csv")).unwrap();
    let rows = pg_rows(&pg, &format!("SELECT count(*) FROM {schema}.customers")).await;
    assert_eq!(
        rows,
        vec![row(&[&(people.lines().count() - 1).to_string()])]
    );
    let (code, out, _) = f.cli(&["run"]);
    assert_eq!(code, 0);
    assert!(out.contains("created 0  updated 0  deleted 0"), "{out}");
}

/// A destination batch is one transaction of at most 16,384 rows, as the README says, also when
/// the last diff batch gathered takes the buffer past that (a diff batch is up to 32,768 rows).
#[tokio::test]
async fn no_transaction_holds_more_than_one_destination_batch() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_batches";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    csv_to_pg(&f, schema, &sync("people", "people", "mirror"));
    let csv = |name: &str| {
        let mut s = String::from("id,email,name,plan\n");
        for i in 0..40_000 {
            s.push_str(&format!("{i},p{i}@x.io,{name}{i},pro\n"));
        }
        s
    };
    let per_transaction = format!(
        "SELECT count(*)::text FROM {schema}.people GROUP BY xmin::text ORDER BY 1::int DESC"
    );
    for name in ["Ada", "Bob"] {
        f.write("people.csv", &csv(name));
        let r = f.run_ok("people").await;
        assert_eq!(r.counts.created + r.counts.updated, 40_000, "{r:?}");
        let sizes: Vec<usize> = pg_rows(&pg, &per_transaction)
            .await
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 40_000);
        assert!(
            sizes[0] <= 16_384,
            "a transaction wrote {} rows: {sizes:?}",
            sizes[0]
        );
        assert!(sizes.len() >= 3, "{sizes:?}");
    }
}

/// Rows go in COPY's binary format where the table's column types match the fields' (here:
/// every column), into the empty table and through the staging table: a value the column
/// refuses (too long for its `varchar(3)`) rejects only its row, with the server's message,
/// and every other value arrives exactly (compared as PostgreSQL's own text), NaN, infinities,
/// negative zero, year 1 and 9999, the smallest and largest integers included.
#[tokio::test]
async fn binary_copies_reject_only_the_rows_the_table_refuses() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_binary";
    db::pg_schema(&pg, schema).await;
    let types = "code varchar(3), n numeric(12,4), f double precision, r real, b boolean, \
                 d date, ts timestamp, tstz timestamptz, tm time, raw bytea, small smallint, \
                 i integer, big bigint, t text";
    let code = |len: &str| types.replace("varchar(3)", len);
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.src (id bigint PRIMARY KEY, {});
         CREATE TABLE {schema}.dst (id bigint PRIMARY KEY, {types});
         INSERT INTO {schema}.src VALUES
           (1, 'ok', 12345678.1234, 'NaN', '-Infinity', true, '0001-01-01',
            '0001-01-01 00:00:00', '9999-12-31 23:59:59.999999+00', '23:59:59.999999',
            '\\x00ff', -32768, 2147483647, -9223372036854775808, 'tab\there'),
           (2, 'toolong', -0.0001, '-0', 'Infinity', false, '9999-12-31',
            '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', '00:00:00', '', 32767,
            -2147483648, 9223372036854775807, 'ünïcode ✓ \\ back'),
           (3, 'a\tb', 0, 1.5e-300, 3.4e38, NULL, '1970-01-01', '2262-04-12 00:00:00.000001',
            '1969-12-31 23:59:59.999999+00', NULL, NULL, 0, 0, 0, ''),
           (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
        code("varchar(10)")
    ))
    .await
    .unwrap();
    let columns = "id, code, n, f, r, b, d, ts, tstz, tm, raw, small, i, big, t";
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &copy_project(schema, "src", "").replace("object = \"src_copy\"", "object = \"dst\""),
    );
    let r = f.run_with(&["copy"], Default::default()).await.remove(0);
    assert_eq!((r.counts.created, r.counts.rejected), (3, 1), "{r:?}");
    let refused: Vec<_> = r
        .samples
        .iter()
        .map(|s| (s.key.clone(), s.reason.clone()))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0.as_deref(), Some("2"));
    assert!(refused[0].1.contains("too long"), "{refused:?}");
    let text =
        |t: &str, filter: &str| format!("{} {filter} ORDER BY id", as_text(schema, t, columns));
    assert_eq!(
        pg_rows(&pg, &text("dst", "")).await,
        pg_rows(&pg, &text("src", "WHERE id <> 2")).await
    );

    // Through the staging table: the refused row fixed, another changed.
    pg.batch_execute(&format!(
        "UPDATE {schema}.src SET code = 'abc' WHERE id = 2;
         UPDATE {schema}.src SET n = -99999999.9999, t = 'x\\y', tm = '12:34:56.5' WHERE id = 3;"
    ))
    .await
    .unwrap();
    let r = f.run_ok("copy").await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (1, 1, 0),
        "{r:?}"
    );
    assert_eq!(
        pg_rows(&pg, &text("dst", "")).await,
        pg_rows(&pg, &text("src", "")).await
    );
}

/// An initial load goes in as two COPY streams at once (two connections, each half of a batch
/// in its own transaction). A value the table refuses rejects only its row, in either half.
/// Two pairs of rows share an email the table holds unique, one of each pair in each half and
/// crossing, so that the two streams may wait on each other until PostgreSQL breaks the
/// deadlock: the run still succeeds, and only one row of each pair is refused.
#[tokio::test]
async fn an_initial_load_in_two_streams_rejects_only_refused_rows() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_two_streams";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.people (id text PRIMARY KEY, email text UNIQUE, \
           name varchar(8), plan text);"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    csv_to_pg(&f, schema, &sync("people", "people", "mirror"));
    let rows = 12_000;
    let mut csv = String::from("id,email,name,plan\n");
    for i in 0..rows {
        // Rows 100 and 9,000 hold a name too long for varchar(8).
        let name = if i == 100 || i == 9_000 {
            "much too long"
        } else {
            "Ada"
        };
        let email = match i {
            1 | 11_999 => "dup1@x.io".to_string(),
            5_999 | 6_001 => "dup2@x.io".to_string(),
            _ => format!("p{i}@x.io"),
        };
        csv.push_str(&format!("r{i:05},{email},{name},pro\n"));
    }
    f.write("people.csv", &csv);
    let r = f.run_ok("people").await;
    assert_eq!(
        (r.counts.created, r.counts.rejected),
        (rows - 4, 4),
        "{r:?}"
    );
    let refused: Vec<String> = r.samples.iter().filter_map(|s| s.key.clone()).collect();
    for key in ["r00100", "r09000"] {
        assert!(refused.iter().any(|k| k == key), "{refused:?}");
    }
    let one_of = |a: &str, b: &str| refused.iter().filter(|k| *k == a || *k == b).count();
    assert_eq!(
        (one_of("r00001", "r11999"), one_of("r05999", "r06001")),
        (1, 1)
    );
    let one = |sql: String| {
        let pg = &pg;
        async move { pg_rows(pg, &sql).await[0][0].clone() }
    };
    assert_eq!(
        one(format!(
            "SELECT count(*) FROM {schema}.people WHERE name = 'Ada' AND plan = 'pro'"
        ))
        .await,
        (rows - 4).to_string()
    );
    // The next run has nothing new to send (the refused rows are refused again).
    let r = f.run_ok("people").await;
    assert_eq!((r.counts.created, r.counts.rejected), (0, 4), "{r:?}");

    // Without refused rows: each destination batch is two transactions of half its rows.
    let clean = Fixture::new();
    csv_to_pg(&clean, schema, &sync("people", "clean", "mirror"));
    let mut csv = String::from("id,email,name,plan\n");
    for i in 0..rows {
        csv.push_str(&format!("r{i:05},p{i}@x.io,Ada,pro\n"));
    }
    clean.write("people.csv", &csv);
    let r = clean.run_ok("people").await;
    assert_eq!((r.counts.created, r.counts.rejected), (rows, 0), "{r:?}");
    let sizes: Vec<u64> = pg_rows(
        &pg,
        &format!("SELECT count(*)::text FROM {schema}.clean GROUP BY xmin::text"),
    )
    .await
    .iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    // (One stream would have written the 12,000 rows, one destination batch, at once.)
    assert_eq!(sizes.iter().sum::<u64>(), rows, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= rows / 2), "{sizes:?}");
}

/// A random row of the property test below: each value may be NULL.
#[derive(Debug, Clone)]
struct RandomRow {
    ts: Option<i64>,
    d: Option<i32>,
    n: Option<String>,
    t: Option<String>,
    big: Option<i64>,
    f: Option<f64>,
}

fn random_row() -> impl proptest::strategy::Strategy<Value = RandomRow> {
    use proptest::prelude::*;
    // Years 1 to 9999, in microseconds and in days since 1970.
    let micros = -62_135_596_800_000_000i64..=253_402_300_799_999_999i64;
    let days = -719_162i32..=2_932_896i32;
    let numeric = ("-?", "[0-9]{1,28}", "[0-9]{10}").prop_map(|(s, i, f)| format!("{s}{i}.{f}"));
    let floats = proptest::num::f64::NORMAL
        | proptest::num::f64::SUBNORMAL
        | proptest::num::f64::ZERO
        | proptest::num::f64::NEGATIVE
        | proptest::num::f64::POSITIVE;
    (
        proptest::option::of(micros),
        proptest::option::of(days),
        proptest::option::of(numeric),
        proptest::option::of("[^\u{0}]{0,12}"),
        proptest::option::of(any::<i64>()),
        proptest::option::of(floats),
    )
        .prop_map(|(ts, d, n, t, big, f)| RandomRow {
            ts,
            d,
            n,
            t,
            big,
            f,
        })
}

async fn random_rows_round_trip(
    rows: Vec<RandomRow>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let Some(pg) = db::postgres().await else {
        return Ok(());
    };
    let schema = "bf_e2e_pg_random";
    db::pg_schema(&pg, schema).await;
    let lit = |v: Option<String>| {
        v.map_or("NULL".to_string(), |v| {
            format!("'{}'", v.replace('\'', "''"))
        })
    };
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ts = r.ts.map(|us| {
                chrono::DateTime::from_timestamp_micros(us)
                    .unwrap()
                    .format("%Y-%m-%d %H:%M:%S%.6f+00")
                    .to_string()
            });
            let d = r.d.map(|d| {
                (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                    + chrono::Duration::days(d as i64))
                .format("%Y-%m-%d")
                .to_string()
            });
            format!(
                "({}, {}, {}, {}, {}, {}, {})",
                i + 1,
                lit(ts),
                lit(d),
                lit(r.n.clone()),
                lit(r.t.clone()),
                lit(r.big.map(|b| b.to_string())),
                lit(r.f.map(|f| format!("{f:?}"))),
            )
        })
        .collect();
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.random (id integer PRIMARY KEY, ts timestamptz, d date,
             n numeric(38,10), t text, big bigint, f double precision);
         INSERT INTO {schema}.random VALUES {};",
        values.join(", ")
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    let to_parquet = "\n[destinations.files]\ntype = \"file\"\npath = \"out\"\nformat = \"parquet\"\n\n[syncs.to_parquet]\nfrom = \"wh.random\"\nto = \"files\"\nobject = \"random\"\nbehavior = \"mirror\"\nkey = \"id\"\n";
    f.write("backflow.toml", &copy_project(schema, "random", to_parquet));
    let r = f.run_ok("copy").await;
    proptest::prop_assert_eq!(r.counts.created, rows.len() as u64);
    let columns = "id, ts, d, n, t, big, f";
    proptest::prop_assert_eq!(
        pg_rows(&pg, &as_text(schema, "random_copy", columns)).await,
        pg_rows(&pg, &as_text(schema, "random", columns)).await
    );
    // The same values in a Parquet file: instants as microseconds, dates as days, numbers as
    // PostgreSQL prints them, doubles bit for bit.
    let r = f.run_ok("to_parquet").await;
    proptest::prop_assert_eq!(r.counts.created, rows.len() as u64);
    let float_bits = |v: &str| {
        if v == "NULL" {
            v.to_string()
        } else {
            v.parse::<f64>().unwrap().to_bits().to_string()
        }
    };
    let expected: Vec<Vec<String>> = pg_rows(
        &pg,
        &format!(
            "SELECT id::text, (extract(epoch FROM ts) * 1000000)::bigint::text,
                    (d - date '1970-01-01')::text, n::text, t, big::text, f::text
             FROM {schema}.random ORDER BY id"
        ),
    )
    .await
    .into_iter()
    .map(|mut r| {
        r[6] = float_bits(&r[6]);
        r
    })
    .collect();
    let bytes = bytes::Bytes::from(std::fs::read(f.path().join("out/random.parquet")).unwrap());
    let mut got: Vec<Vec<String>> = Vec::new();
    for batch in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
    {
        let batch = batch.unwrap();
        for i in 0..batch.num_rows() {
            let cell = |name: &str| {
                use arrow::array::Array;
                let c = batch.column_by_name(name).unwrap();
                if c.is_null(i) {
                    return "NULL".to_string();
                }
                match c.data_type() {
                    arrow::datatypes::DataType::Timestamp(_, _) => {
                        let c =
                            arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap();
                        arrow::util::display::array_value_to_string(&c, i).unwrap()
                    }
                    arrow::datatypes::DataType::Date32 => {
                        let c =
                            arrow::compute::cast(c, &arrow::datatypes::DataType::Int32).unwrap();
                        arrow::util::display::array_value_to_string(&c, i).unwrap()
                    }
                    arrow::datatypes::DataType::Float64 => {
                        let v = c
                            .as_any()
                            .downcast_ref::<arrow::array::Float64Array>()
                            .unwrap()
                            .value(i);
                        v.to_bits().to_string()
                    }
                    _ => arrow::util::display::array_value_to_string(c, i).unwrap(),
                }
            };
            got.push(["id", "ts", "d", "n", "t", "big", "f"].map(cell).to_vec());
        }
    }
    got.sort_by_key(|r| r[0].parse::<i64>().unwrap());
    let mut expected = expected;
    expected.sort_by_key(|r| r[0].parse::<i64>().unwrap());
    proptest::prop_assert_eq!(got, expected);
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

    /// Random values of the types a PostgreSQL source reads (timestamps from year 1 to 9999,
    /// dates, numeric(38,10) with all its digits, any text, any bigint, any finite double, and
    /// NULLs) arrive in a PostgreSQL destination equal as PostgreSQL's own text, and in a
    /// Parquet file with the same microseconds, days, digits and bits.
    #[test]
    fn random_values_arrive_exactly(rows in proptest::collection::vec(random_row(), 1..12)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(random_rows_round_trip(rows))?;
    }
}
