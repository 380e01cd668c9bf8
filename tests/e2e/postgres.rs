//! PostgreSQL as a destination and as a source, against the real server (see
//! `tests/common/db.rs`). Each test works in its own schema.

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

fn sync(name: &str, object: &str, behavior: &str) -> String {
    format!(
        "[syncs.{name}]\nfrom = \"people\"\nto = \"pg\"\nobject = \"{object}\"\nbehavior = \"{behavior}\"\nkey = \"id\"\n"
    )
}

#[tokio::test]
async fn mirror_creates_the_table_and_sends_only_changes() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_mirror";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    csv_to_pg(&f, schema, &sync("people", "people", "mirror"));
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n",
    );
    let r = f.run_ok("people").await;
    assert_eq!(r.counts.created, 3);
    let q = format!("SELECT id, email, name, plan FROM {schema}.people");
    assert_eq!(
        pg_rows(&pg, &q).await,
        vec![
            row(&["1", "a@x.io", "Ada", "pro"]),
            row(&["2", "b@x.io", "Bob", "free"]),
            row(&["3", "c@x.io", "Cy", "pro"]),
        ]
    );
    // The key is the primary key and the id column a bigint.
    let pk = pg_rows(
        &pg,
        &format!(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = '{schema}.people'::regclass AND i.indisprimary"
        ),
    )
    .await;
    assert_eq!(pk, vec![row(&["id", "bigint"])]);

    // Someone edits a row the model does not change: the next run leaves it alone.
    pg.batch_execute(&format!(
        "UPDATE {schema}.people SET name = 'edited' WHERE id = 1"
    ))
    .await
    .unwrap();
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bobby,free\n4,d@x.io,Di,free\n",
    );
    let r = f.run_ok("people").await;
    assert_eq!(
        (
            r.counts.created,
            r.counts.updated,
            r.counts.deleted,
            r.counts.unchanged
        ),
        (1, 1, 1, 1),
        "{r:?}"
    );
    assert_eq!(
        pg_rows(&pg, &q).await,
        vec![
            row(&["1", "a@x.io", "edited", "pro"]),
            row(&["2", "b@x.io", "Bobby", "free"]),
            row(&["4", "d@x.io", "Di", "free"]),
        ]
    );
    let r = f.run_ok("people").await;
    assert_eq!(
        (r.counts.unchanged, r.counts.created + r.counts.updated),
        (3, 0)
    );
}

#[tokio::test]
async fn every_behavior_against_existing_records() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_behaviors";
    db::pg_schema(&pg, schema).await;
    for t in ["up", "upd", "cre", "app", "del"] {
        pg.batch_execute(&format!(
            "CREATE TABLE {schema}.{t} (id bigint{pk}, email text, name text, plan text, note text DEFAULT 'kept');
             INSERT INTO {schema}.{t} (id, email, name, plan) VALUES (1, 'old', 'one', 'old'), (9, 'old', 'nine', 'old');",
            pk = if t == "app" { "" } else { " PRIMARY KEY" }
        ))
        .await
        .unwrap();
    }
    let f = Fixture::new();
    let syncs = [
        sync("up", "up", "upsert"),
        sync("upd", "upd", "update-only"),
        sync("cre", "cre", "create-only"),
        sync("app", "app", "append-only"),
        sync("del", "del", "delete"),
    ]
    .join("\n");
    csv_to_pg(&f, schema, &syncs);
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let names = |t: &str| format!("SELECT id, name, note FROM {schema}.{t}");

    let r = f.run_ok("up").await;
    assert_eq!(r.counts.created, 2);
    assert_eq!(
        pg_rows(&pg, &names("up")).await,
        vec![
            row(&["1", "Ada", "kept"]),
            row(&["2", "Bob", "kept"]),
            row(&["9", "nine", "kept"])
        ]
    );

    let r = f.run_ok("upd").await;
    assert_eq!((r.counts.updated, r.counts.rejected), (1, 1), "{r:?}");
    assert!(
        r.samples
            .iter()
            .any(|s| s.reason.contains("no record with this key"))
    );
    assert_eq!(
        pg_rows(&pg, &names("upd")).await,
        vec![row(&["1", "Ada", "kept"]), row(&["9", "nine", "kept"])]
    );

    let r = f.run_ok("cre").await;
    assert_eq!((r.counts.created, r.counts.skipped), (1, 1), "{r:?}");
    assert_eq!(
        pg_rows(&pg, &names("cre")).await,
        vec![
            row(&["1", "one", "kept"]),
            row(&["2", "Bob", "kept"]),
            row(&["9", "nine", "kept"])
        ]
    );

    let r = f.run_ok("app").await;
    assert_eq!(r.counts.created, 2);
    assert_eq!(pg_rows(&pg, &names("app")).await.len(), 4);

    let r = f.run_ok("del").await;
    assert_eq!(r.counts.deleted, 2, "{r:?}");
    assert_eq!(
        pg_rows(&pg, &names("del")).await,
        vec![row(&["9", "nine", "kept"])]
    );
}

#[tokio::test]
async fn refused_rows_are_rejected_with_the_server_message_and_the_rest_lands() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_rejects";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.people (id bigint PRIMARY KEY, email text UNIQUE, name varchar(5), \
         plan text CHECK (plan <> 'bad'))"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    csv_to_pg(&f, schema, &sync("people", "people", "upsert"));
    let mut csv = String::from("id,email,name,plan\n");
    for i in 1..=200 {
        let name = if i == 17 { "Toolongname" } else { "Ok" };
        let plan = if i == 150 { "bad" } else { "pro" };
        // Rows 60 and 61 share an e-mail: the second is refused by the unique index.
        let email = if i == 61 {
            "u60@x.io".to_string()
        } else {
            format!("u{i}@x.io")
        };
        csv.push_str(&format!("{i},{email},{name},{plan}\n"));
    }
    f.write("people.csv", &csv);
    let r = f.run_ok("people").await;
    assert_eq!((r.counts.created, r.counts.rejected), (197, 3), "{r:?}");
    let reasons: Vec<(String, String)> = r
        .samples
        .iter()
        .map(|s| (s.key.clone().unwrap_or_default(), s.reason.clone()))
        .collect();
    let reason = |k: &str| {
        reasons
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(reason("17").contains("too long"), "{reasons:?}");
    assert!(reason("150").contains("check constraint"), "{reasons:?}");
    assert!(
        reason("60").contains("duplicate key") || reason("61").contains("duplicate key"),
        "{reasons:?}"
    );
    let count = pg_rows(&pg, &format!("SELECT count(*) FROM {schema}.people")).await;
    assert_eq!(count, vec![row(&["197"])]);

    // Fixed at the source: the refused rows go out on the next run, nothing else does.
    f.write(
        "people.csv",
        &csv.replace("Toolongname", "Fixed")
            .replace(",bad\n", ",pro\n")
            .replace("61,u60@x.io", "61,u61@x.io"),
    );
    let r = f.run_ok("people").await;
    assert_eq!(
        (r.counts.created, r.counts.rejected, r.counts.unchanged),
        (3, 0, 197),
        "{r:?}"
    );
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

#[tokio::test]
async fn hostile_identifiers_and_values_are_quoted_and_bound() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_hostile";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.x (v int); INSERT INTO {schema}.x VALUES (1)"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n{}\n\
             [syncs.people]\nfrom = \"people\"\nto = \"pg\"\nobject = 'we\"ird; drop table x; --'\nbehavior = \"mirror\"\nkey = \"id\"\n",
            pg_destination(schema)
        ),
    );
    f.write(
        "people.csv",
        "id,select,\"\"\"; drop table x; --\"\n\
         1,\"it's \"\"quoted\"\"\",\"back\\slash\ttab\"\n\
         2,\"new\nline\",'); DROP TABLE x; --\n\
         3,\\N,ünïcødé ✓\n",
    );
    let r = f.run_ok("people").await;
    assert_eq!(r.counts.created, 3, "{r:?}");
    let rows = pg_rows(
        &pg,
        &format!(
            "SELECT id, \"select\", \"\"\"; drop table x; --\" FROM {schema}.\"we\"\"ird; drop table x; --\""
        ),
    )
    .await;
    assert_eq!(
        rows,
        vec![
            row(&["1", "it's \"quoted\"", "back\\slash\ttab"]),
            row(&["2", "new\nline", "'); DROP TABLE x; --"]),
            row(&["3", "\\N", "ünïcødé ✓"]),
        ]
    );
    assert_eq!(
        pg_rows(&pg, &format!("SELECT v FROM {schema}.x")).await,
        vec![row(&["1"])]
    );
}

/// Every common PostgreSQL type, read by the source and written back by the destination,
/// compares equal as text; a re-run sends nothing; a changed row goes out alone. (The reader
/// holds numerics in 28 significant digits: see the README.)
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
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.wh]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"
tables = ["typed"]
{}
[syncs.copy]
from = "wh.typed"
to = "pg"
object = "typed_copy"
behavior = "mirror"
key = "id"
"#,
            pg_destination(schema)
        ),
    );
    let r = f.run_ok("copy").await;
    assert_eq!(r.counts.created, 2, "{r:?}");
    let text = |t: &str| {
        format!(
            "SELECT {} FROM {schema}.{t}",
            columns
                .split(", ")
                .map(|c| format!("{c}::text"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
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
    let sql: Vec<&str> = plan.lines().filter(|l| l.contains("SqlExec")).collect();
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

#[tokio::test]
async fn a_column_type_without_an_arrow_equivalent_is_named() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_unmappable";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.spans (id bigint PRIMARY KEY, span int8range)"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            "[sources.wh]\ntype = \"postgres\"\nurl_env = \"BACKFLOW_TEST_POSTGRES_URL\"\nschema = \"{schema}\"\ntables = \"*\"\n"
        ),
    );
    let project = f.load().unwrap();
    let e = match project.session().await {
        Ok(_) => panic!("int8range has no Arrow type"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("\"spans\"") && e.contains("span") && e.contains("int8range"),
        "{e}"
    );
}

/// Runs that die after a destination batch or before the commit (as errors and as panics):
/// the next run sends again what was not committed and the table ends equal to the model.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn interrupted_runs_lose_nothing() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_crash";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    csv_to_pg(&f, schema, &sync("pg_crash", "people", "mirror"));
    let model = |version: usize| {
        // 40,000 rows: three destination batches. Each version renames a third of the rows
        // and drops and adds a few.
        let mut csv = String::from("id,email,name,plan\n");
        for i in 0..40_000 {
            if (i + version).is_multiple_of(97) {
                continue;
            }
            let name = if i % 3 == version % 3 {
                format!("v{version}")
            } else {
                "same".into()
            };
            csv.push_str(&format!("{i},u{i}@x.io,{name},pro\n"));
        }
        csv
    };
    let expected = |version: usize| {
        let mut rows: Vec<Vec<String>> = model(version)
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                vec![c[0].to_string(), c[2].to_string()]
            })
            .collect();
        rows.sort();
        rows
    };
    let q = format!("SELECT id::text, name FROM {schema}.people");
    f.write("people.csv", &model(0));
    f.run_ok("pg_crash").await;
    let mut version = 0;
    for (point, panic) in [
        ("after_batch", false),
        ("after_batch", true),
        ("before_commit", false),
        ("before_commit", true),
    ] {
        version += 1;
        f.write("people.csv", &model(version));
        run_faulted(&f, "pg_crash", point, panic).await;
        let r = f.run_ok("pg_crash").await;
        assert!(r.counts.created + r.counts.updated + r.counts.deleted > 0);
        assert_eq!(pg_rows(&pg, &q).await, expected(version), "after {point}");
        let r = f.run_ok("pg_crash").await;
        assert_eq!(
            r.counts.created + r.counts.updated + r.counts.deleted,
            0,
            "{r:?}"
        );
    }
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
