//! Nothing waits for ever: a database server that accepts the connection and never answers,
//! and a destination table another session keeps locked, fail the run with a message naming
//! the setting to change, and nothing is committed. Each command runs as a child process that
//! is killed (and the test failed) if it is still running after two minutes: a hang, not a
//! slow run.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::common::db;
use crate::common::*;

/// A TCP server on 127.0.0.1 that accepts every connection and never sends a byte.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Run `cmd` to its end, or kill it and fail after two minutes. (exit code, stdout + stderr)
fn bounded(mut cmd: Command) -> (i32, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(120), &format!("{cmd:?}"));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.code().unwrap_or(-1), out)
}

#[test]
fn a_silent_database_server_fails_check_and_run_naming_connect_timeout() {
    let port = silent_server();
    let urls = [
        (
            "postgres",
            format!("postgres://u:pw-5ecret@127.0.0.1:{port}/db?sslmode=disable&connect_timeout=1"),
        ),
        (
            "mysql",
            format!("mysql://u:pw-5ecret@127.0.0.1:{port}/db?sslmode=disabled&connect_timeout=1"),
        ),
    ];
    for (kind, url) in urls {
        let f = Fixture::new();
        f.write("people.csv", "id,name\n1,a\n");
        // The server as a source (`check` opens it) and as a destination (`run` writes to it).
        let source = format!(
            "[sources.wh]\ntype = \"{kind}\"\nurl_env = \"BF_SILENT_URL\"\ntables = [\"t\"]\n"
        );
        let destination = format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.db]
type = "{kind}"
url_env = "BF_SILENT_URL"

[syncs.people]
from = "people"
to = "db"
object = "people"
behavior = "upsert"
key = "id"
"#
        );
        for (toml, args) in [
            (&source, &["check"][..]),
            (&destination, &["run", "people"]),
        ] {
            f.write("backflow.toml", toml);
            let mut cmd = f.command(args);
            cmd.env("BF_SILENT_URL", &url);
            let (code, out) = bounded(cmd);
            assert_ne!(code, 0, "{kind} {args:?}: {out}");
            assert!(
                out.contains("connect_timeout") && out.contains(&format!("127.0.0.1:{port}")),
                "{kind} {args:?} does not name the setting and the server: {out}"
            );
            assert!(!out.contains("pw-5ecret"), "{out}");
        }
        assert!(f.manifests().is_empty());
    }
}

#[tokio::test]
async fn a_locked_postgres_table_fails_the_run_naming_lock_timeout() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_e2e_pg_locked";
    db::pg_schema(&pg, schema).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.people (id bigint PRIMARY KEY, name text)"
    ))
    .await
    .unwrap();
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n2,b\n");
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.pg]
type = "postgres"
url_env = "BACKFLOW_TEST_POSTGRES_URL"
schema = "{schema}"
lock_timeout = "1s"

[syncs.people]
from = "people"
to = "pg"
object = "people"
behavior = "upsert"
key = "id"
"#
        ),
    );
    // Another session holds the table.
    let holder = db::postgres().await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.people IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let (code, out) = bounded(f.command(&["run", "people"]));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("lock_timeout"), "{out}");
    assert!(f.manifests().is_empty(), "nothing is committed");
    holder.batch_execute("ROLLBACK").await.unwrap();
    let r = f.run_ok("people").await;
    assert_eq!(r.counts.created + r.counts.updated, 2, "{r:?}");
    assert_eq!(
        db::pg_rows(&pg, &format!("SELECT id::text, name FROM {schema}.people")).await,
        vec![db::row(&["1", "a"]), db::row(&["2", "b"])]
    );
}

#[tokio::test]
async fn a_locked_mysql_table_fails_the_run_naming_lock_timeout() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    my.query_drop(
        "DROP TABLE IF EXISTS bf_e2e_my_locked; \
         CREATE TABLE bf_e2e_my_locked (id bigint PRIMARY KEY, name text)",
    )
    .await
    .unwrap();
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n2,b\n");
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.my]
type = "mysql"
url_env = "BACKFLOW_TEST_MYSQL_URL"
lock_timeout = "1s"

[syncs.people]
from = "people"
to = "my"
object = "bf_e2e_my_locked"
behavior = "upsert"
key = "id"
"#,
    );
    my.query_drop("LOCK TABLES bf_e2e_my_locked WRITE")
        .await
        .unwrap();
    let (code, out) = bounded(f.command(&["run", "people"]));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("lock_timeout"), "{out}");
    assert!(f.manifests().is_empty(), "nothing is committed");
    my.query_drop("UNLOCK TABLES").await.unwrap();
    // The keys the failed run meant to write are in its intent log: the next run writes them
    // (as updates of records that may exist).
    let r = f.run_ok("people").await;
    assert_eq!(r.counts.created + r.counts.updated, 2, "{r:?}");
    assert_eq!(
        db::my_rows(&mut my, "SELECT id, name FROM bf_e2e_my_locked").await,
        vec![db::row(&["1", "a"]), db::row(&["2", "b"])]
    );
}
