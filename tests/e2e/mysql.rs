//! MySQL/MariaDB as a source and what is particular to it as a destination (unique indexes,
//! statement sizes, required columns), against the real server (see `tests/common/db.rs`);
//! every behavior, rejections, type round trips, hostile names and interrupted runs are the
//! conformance suite's (`tests/conformance/`). Each test uses its own tables in the test
//! database.

use mysql_async::prelude::Queryable;

use crate::common::db::{self, my_rows, row};
use crate::common::*;

const DESTINATION: &str = r#"
[destinations.my]
type = "mysql"
url_env = "BACKFLOW_TEST_MYSQL_URL"
"#;

async fn drop_tables(my: &mut mysql_async::Conn, tables: &[&str]) {
    for t in tables {
        my.query_drop(format!("DROP TABLE IF EXISTS `{}`", t.replace('`', "``")))
            .await
            .unwrap();
    }
}

/// A project that syncs MySQL table `src` (source `shop`) into `copy` (sync `copy`, key `id`)
/// with the sync `settings` (its behavior and more).
fn copy_project(src: &str, copy: &str, settings: &str) -> String {
    format!(
        r#"
[sources.shop]
type = "mysql"
url_env = "BACKFLOW_TEST_MYSQL_URL"
tables = ["{src}"]
{DESTINATION}
[syncs.copy]
from = "shop.{src}"
to = "my"
object = "{copy}"
key = "id"
{settings}
"#
    )
}

fn csv_to_mysql(f: &Fixture, object: &str, behavior: &str) {
    f.write(
        "backflow.toml",
        &format!(
            "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n{DESTINATION}\n\
             [syncs.people]\nfrom = \"people\"\nto = \"my\"\nobject = '{object}'\nbehavior = \"{behavior}\"\nkey = \"id\"\n"
        ),
    );
}

/// A MySQL table read by the source, written to a new MySQL table and to PostgreSQL: values
/// compare equal as text; a cursor re-run reads only what changed.
#[tokio::test]
async fn types_round_trip_and_cursor_reads_are_pushed_down() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    let (src, copy) = ("bf_e2e_my_typed", "bf_e2e_my_typed_copy");
    drop_tables(&mut my, &[src, copy]).await;
    my.query_drop(format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, small SMALLINT, big BIGINT, num DECIMAL(38,18), \
         t TEXT, b BOOLEAN, d DATE, dt DATETIME(6), j JSON, updated_at DATETIME(6) NOT NULL)"
    ))
    .await
    .unwrap();
    my.query_drop(format!(
        "INSERT INTO {src} VALUES \
         (1, -32768, 9007199254740993, 12345678901234567890.123456789012345678, 'quote '' tab \t', TRUE, \
          '2024-02-29', '2024-01-02 03:04:05.123456', '{{\"a\": [1, 2]}}', '2024-01-01 00:00:00'), \
         (2, NULL, -9223372036854775808, -0.000000000000000001, '', FALSE, NULL, NULL, NULL, '2024-01-01 00:00:01')"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &copy_project(src, copy, "behavior = \"upsert\"\ncursor = \"updated_at\""),
    );
    let r = f.run_ok("copy").await;
    assert_eq!(r.counts.created, 2, "{r:?}");
    let cols = "id, small, big, CAST(num AS CHAR), t, b, d, CAST(dt AS CHAR), CAST(j AS CHAR)";
    let q = |t: &str| format!("SELECT {cols} FROM {t}");
    let source = my_rows(&mut my, &q(src)).await;
    assert_eq!(my_rows(&mut my, &q(copy)).await, source);

    my.query_drop(format!(
        "UPDATE {src} SET t = 'changed', updated_at = '2025-01-01' WHERE id = 2"
    ))
    .await
    .unwrap();
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let plan = backflow::sync::explain(&project, &ctx, "copy")
        .await
        .unwrap();
    let sql: Vec<&str> = plan.lines().filter(|l| l.contains("SQLExec")).collect();
    assert!(!sql.is_empty(), "{plan}");
    for q in &sql {
        assert!(
            q.contains("WHERE") && q.contains("`updated_at` >="),
            "the watermark filter is not in the SQL sent to MySQL: {q}"
        );
    }
    let r = f.run_ok("copy").await;
    assert_eq!((r.counts.read, r.counts.updated), (1, 1), "{r:?}");
    assert_eq!(
        my_rows(&mut my, &q(copy)).await,
        my_rows(&mut my, &q(src)).await
    );
    drop_tables(&mut my, &[src, copy]).await;
}

#[tokio::test]
async fn a_second_unique_index_is_refused_for_upserts() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    let table = "bf_e2e_my_unique";
    drop_tables(&mut my, &[table]).await;
    my.query_drop(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, email VARCHAR(100) UNIQUE, name TEXT)"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    csv_to_mysql(&f, table, "upsert");
    f.write("people.csv", "id,email,name\n1,a@x.io,Ada\n");
    let r = f.run_with(&["people"], Default::default()).await.remove(0);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("email") && error.contains("ON DUPLICATE KEY"),
        "{error}"
    );
    assert!(
        my_rows(&mut my, &format!("SELECT * FROM {table}"))
            .await
            .is_empty()
    );
    drop_tables(&mut my, &[table]).await;
}

/// Rows far bigger than one statement may carry (`max_allowed_packet` is 16 MiB by default):
/// statements are sized by bytes as well as rows.
#[tokio::test]
async fn large_values_are_split_into_statements_that_fit_the_server() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    let table = "bf_e2e_my_large";
    drop_tables(&mut my, &[table]).await;
    let f = Fixture::new();
    csv_to_mysql(&f, table, "upsert");
    let big = "x".repeat(200_000);
    let mut csv = String::from("id,body\n");
    for i in 0..200 {
        csv.push_str(&format!("{i},{big}{i}\n"));
    }
    f.write("people.csv", &csv);
    let r = f.run_ok("people").await;
    assert_eq!((r.counts.created, r.counts.rejected), (200, 0), "{r:?}");
    assert_eq!(
        my_rows(
            &mut my,
            &format!("SELECT count(*), sum(length(body)) FROM {table}")
        )
        .await,
        vec![row(&[
            "200",
            &(200 * 200_000 + 10 + 90 * 2 + 100 * 3).to_string()
        ])]
    );
    drop_tables(&mut my, &[table]).await;
}

#[tokio::test]
async fn a_required_column_the_sync_does_not_send_is_named_before_any_write() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    let table = "bf_e2e_my_required";
    drop_tables(&mut my, &[table]).await;
    my.query_drop(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT, tenant VARCHAR(10) NOT NULL, \
         n INT NOT NULL DEFAULT 0, seq BIGINT NOT NULL AUTO_INCREMENT, UNIQUE KEY (seq))"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    csv_to_mysql(&f, table, "create-only");
    f.write("people.csv", "id,name\n1,Ada\n");
    let r = f.run_with(&["people"], Default::default()).await.remove(0);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("\"tenant\"") && !e.contains("\"n\"") && !e.contains("\"seq\""),
        "{e}"
    );
    drop_tables(&mut my, &[table]).await;
}

#[tokio::test]
async fn every_table_of_a_database_and_an_unmappable_column_named() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    // A database of its own, so that "*" lists only these tables.
    my.query_drop("DROP DATABASE IF EXISTS bf_e2e_my_star")
        .await
        .unwrap();
    my.query_drop("CREATE DATABASE bf_e2e_my_star")
        .await
        .unwrap();
    my.query_drop("CREATE TABLE bf_e2e_my_star.shapes (id BIGINT PRIMARY KEY, area GEOMETRY)")
        .await
        .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        "[sources.shop]\ntype = \"mysql\"\nurl_env = \"BACKFLOW_TEST_MYSQL_STAR_URL\"\ntables = \"*\"\n",
    );
    let project = f.load().unwrap();
    let e = match project.session().await {
        Ok(_) => panic!("GEOMETRY has no Arrow type"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("\"shapes\"") && e.contains("area"), "{e}");
    my.query_drop("DROP DATABASE bf_e2e_my_star").await.unwrap();
}

/// Values at the edges of MySQL's types arrive exactly in a MySQL copy (compared as MySQL's
/// own text): DATETIME and DATE from year 1000 to 9999, DECIMAL(65,30), unsigned BIGINT's
/// maximum, doubles at their limits. (TIME beyond a day and YEAR are the reader's limits: see
/// the README.)
#[tokio::test]
async fn values_at_the_edges_of_their_types_arrive_exactly() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    let (src, copy) = ("bf_e2e_my_edges", "bf_e2e_my_edges_copy");
    drop_tables(&mut my, &[src, copy]).await;
    my.query_drop(format!(
        "CREATE TABLE {src} (id INT PRIMARY KEY, dt DATETIME(6), d DATE, ts TIMESTAMP(6) NULL, \
         n DECIMAL(65,30), u BIGINT UNSIGNED, big BIGINT, tm TIME(6), f DOUBLE, \
         e ENUM('a','b'))"
    ))
    .await
    .unwrap();
    my.query_drop(format!(
        "INSERT INTO {src} VALUES \
         (1, '9999-12-31 23:59:59.999999', '9999-12-31', '2038-01-19 03:14:07.999999', \
          99999999999999999999999999999999999.999999999999999999999999999999, \
          18446744073709551615, 9223372036854775807, '23:59:59.999999', 1.7976931348623157e308, 'b'), \
         (2, '1000-01-01 00:00:00', '1000-01-01', '1970-01-01 00:00:01', \
          -0.000000000000000000000000000001, 0, -9223372036854775808, '00:00:00.000001', -2.2250738585072014e-308, 'a'), \
         (3, '1969-12-31 23:59:59.999999', '1969-12-31', NULL, 0, NULL, 0, '00:00:00', 0.1, NULL), \
         (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &copy_project(src, copy, "behavior = \"mirror\""),
    );
    let r = f.run_ok("copy").await;
    assert_eq!((r.counts.created, r.counts.invalid), (4, 0), "{r:?}");
    let columns = "id, dt, d, ts, n, u, big, tm, f, e";
    let text = |t: &str| {
        let list = columns
            .split(", ")
            .map(|c| format!("CAST({c} AS CHAR)"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("SELECT {list} FROM {t}")
    };
    let source = my_rows(&mut my, &text(src)).await;
    assert_eq!(my_rows(&mut my, &text(copy)).await, source);
}
