//! The real database servers the end-to-end tests use: PostgreSQL and MariaDB/MySQL, at the
//! URLs in `BACKFLOW_TEST_POSTGRES_URL` / `BACKFLOW_TEST_MYSQL_URL` (defaults in
//! `.cargo/config.toml`: the servers on this machine). When a server is unreachable a test is
//! skipped with a message, except under `CI=true`, where it fails.

use mysql_async::prelude::Queryable;

pub const PG_ENV: &str = "BACKFLOW_TEST_POSTGRES_URL";
pub const MY_ENV: &str = "BACKFLOW_TEST_MYSQL_URL";

fn unreachable(what: &str, var: &str, e: String) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (URL in {var}) is unreachable and CI=true: {e}");
    }
    eprintln!("SKIPPED: {what} (URL in {var}) is unreachable: {e}");
}

/// A connection to the test PostgreSQL, or None (skipped) when there is none.
pub async fn postgres() -> Option<tokio_postgres::Client> {
    let url = std::env::var(PG_ENV).unwrap_or_default();
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) => {
            unreachable("PostgreSQL", PG_ENV, e.to_string());
            None
        }
    }
}

/// A fresh, empty schema named `name` (dropped first if a previous run left it).
pub async fn pg_schema(pg: &tokio_postgres::Client, name: &str) {
    pg.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS \"{name}\" CASCADE; CREATE SCHEMA \"{name}\""
    ))
    .await
    .unwrap();
}

/// Rows of `sql` with every column as text (NULL as "NULL"), sorted.
pub async fn pg_rows(pg: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    let rows = pg.simple_query(sql).await.unwrap();
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A connection to the test MySQL/MariaDB, or None (skipped).
pub async fn mysql() -> Option<mysql_async::Conn> {
    let raw = std::env::var(MY_ENV).unwrap_or_default();
    let url = raw
        .replace("?sslmode=disabled", "")
        .replace("&sslmode=disabled", "");
    let opts = match mysql_async::Opts::from_url(&url) {
        Ok(o) => o,
        Err(e) => {
            unreachable("MySQL", MY_ENV, e.to_string());
            return None;
        }
    };
    match mysql_async::Conn::new(opts).await {
        Ok(mut c) => {
            c.query_drop("SET time_zone = '+00:00'").await.unwrap();
            Some(c)
        }
        Err(e) => {
            unreachable("MySQL", MY_ENV, e.to_string());
            None
        }
    }
}

/// Rows of `sql`, every column as text (NULL as "NULL"), sorted.
pub async fn my_rows(my: &mut mysql_async::Conn, sql: &str) -> Vec<Vec<String>> {
    let rows: Vec<mysql_async::Row> = my.query(sql).await.unwrap();
    let mut out: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            (0..r.len())
                .map(|i| match r.as_ref(i) {
                    Some(mysql_async::Value::NULL) | None => "NULL".to_string(),
                    Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(v) => v.as_sql(true).trim_matches('\'').to_string(),
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}

/// Strings of a row literal, for comparisons: `row(&["1", "a"])`.
pub fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}
