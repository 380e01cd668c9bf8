//! Delta Lake tables as sources (the `delta` feature): tables written by another writer, the
//! `deltalake` Python package (its python in `BACKFLOW_TEST_DELTA_PYTHON`), on a local disk and
//! in an S3 bucket (moto).

use std::path::Path;
use std::process::Command;

use crate::common::s3::S3Server;
use crate::common::{Fixture, sqlite_rows};

pub const DELTA_ENV: &str = "BACKFLOW_TEST_DELTA_PYTHON";

/// Three commits: version 0 creates the table (three rows at the edges of their types, with
/// the change data feed on), version 1 renames Ada, version 2 deletes Bob. `extra` runs after
/// (with `dt`, the table, and `opts`, its storage options).
const WRITER: &str = r#"
import sys, json, decimal, datetime
import pyarrow as pa
from deltalake import write_deltalake, DeltaTable
path, opts = sys.argv[1], json.loads(sys.argv[2])
utc = datetime.timezone.utc
schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.decimal128(38, 10)),
                    ("at", pa.timestamp("us", tz="UTC")), ("day", pa.date32())])
def table(rows):
    return pa.table({k: [r[i] for r in rows] for i, k in enumerate(schema.names)}, schema=schema)
if sys.argv[3] == "create":
    write_deltalake(path, table([
        (1, "Ada", decimal.Decimal("1.5"), datetime.datetime(2026, 1, 1, tzinfo=utc), datetime.date(2026, 1, 1)),
        (2, "Bob", decimal.Decimal("0"), datetime.datetime(1, 1, 1, tzinfo=utc), datetime.date(1, 1, 1)),
        (-9223372036854775808, "Zoë ✓", decimal.Decimal("1234567890123456789012345678.0123456789"),
         datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=utc), datetime.date(9999, 12, 31)),
    ]), configuration={"delta.enableChangeDataFeed": "true"}, storage_options=opts)
    dt = DeltaTable(path, storage_options=opts)
    dt.update(predicate="id = 1", updates={"name": "'Ada L.'"})
    dt.delete("id = 2")
else:
    write_deltalake(path, table([
        (3, "Cy", decimal.Decimal("-0.0000000001"), datetime.datetime(2026, 2, 1, tzinfo=utc), datetime.date(2026, 2, 1)),
    ]), mode="append", storage_options=opts)
print(DeltaTable(path, storage_options=opts).version())
"#;

/// Run the writer on the table at `path` (`create`: versions 0 to 2; `append`: one more); the
/// table's version after, or None when there is no deltalake package (skipped; a failure under
/// CI=true).
pub fn write(path: &str, opts: serde_json::Value, step: &str) -> Option<u64> {
    let python = python()?;
    let out = Command::new(&python)
        .args(["-c", WRITER, path, &opts.to_string(), step])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the deltalake writer failed: {stderr}"
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

fn project(f: &Fixture, path: &str, pin: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.ledger]
type = "delta"
path = "{path}"
{pin}

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.ledger]
from = "ledger"
to = "app"
object = "ledger"
behavior = "mirror"
key = "id"
"#
        ),
    );
}

/// `backflow ARGS` in `f` with `env`, which must succeed: its JSON report (one sync's).
pub fn run_json(f: &Fixture, args: &[&str], env: &[(&'static str, String)]) -> serde_json::Value {
    let mut c = f.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn run(f: &Fixture, env: &[(&'static str, String)]) -> serde_json::Value {
    run_json(f, &["run", "--json"], env)
}

/// The python that has the deltalake package (`BACKFLOW_TEST_DELTA_PYTHON`), or None when
/// there is none (skipped; a failure under CI=true).
pub fn python() -> Option<String> {
    let python = std::env::var(DELTA_ENV).unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import deltalake"])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the deltalake Python package is needed and CI=true ({python}: {probe:?})");
    }
    eprintln!("SKIPPED: {python} has no deltalake (set {DELTA_ENV})");
    None
}

fn names(db: &Path) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = sqlite_rows(db, "ledger")
        .into_iter()
        .map(|r| (r["id"].clone(), r["name"].clone()))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_delta_table_written_by_another_writer_syncs_exactly_and_travels_in_time() {
    let f = Fixture::new();
    let table = f.path().join("lake/ledger");
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
    let Some(version) = write(table.to_str().unwrap(), serde_json::json!({}), "create") else {
        return;
    };
    assert_eq!(version, 2);
    project(&f, "lake/ledger", "");
    let r = run(&f, &[]);
    assert_eq!(
        (&r["created"], &r["invalid"]),
        (&2.into(), &0.into()),
        "{r}"
    );
    let db = f.path().join("out/app.db");
    let rows = sqlite_rows(&db, "ledger");
    let zoe = rows.iter().find(|r| r["name"] == "Zoë ✓").unwrap();
    assert_eq!(zoe["id"], "-9223372036854775808");
    assert_eq!(zoe["amount"], "1234567890123456789012345678.0123456789");
    assert!(zoe["at"].starts_with("9999-12-31"), "{zoe:?}");
    assert!(zoe["at"].contains("23:59:59.999999"), "{zoe:?}");
    assert_eq!(zoe["day"], "9999-12-31");
    assert_eq!(
        names(&db),
        vec![
            ("-9223372036854775808".into(), "Zoë ✓".into()),
            ("1".into(), "Ada L.".into())
        ]
    );

    // Another commit: the next run reads only it, from the table's change data feed.
    write(table.to_str().unwrap(), serde_json::json!({}), "append").unwrap();
    let r = run(&f, &[]);
    assert_eq!(
        (&r["created"], &r["updated"], &r["deleted"], &r["read"]),
        (&1.into(), &0.into(), &0.into(), &1.into()),
        "{r}"
    );
    let cy = sqlite_rows(&db, "ledger")
        .into_iter()
        .find(|r| r["id"] == "3")
        .unwrap();
    assert_eq!(cy["amount"], "-0.0000000001");

    // Time travel: the table as it was at version 0 (Bob there, Ada not renamed, Cy not yet).
    project(&f, "lake/ledger", "version = 0");
    run(&f, &[]);
    assert_eq!(
        names(&db),
        vec![
            ("-9223372036854775808".into(), "Zoë ✓".into()),
            ("1".into(), "Ada".into()),
            ("2".into(), "Bob".into())
        ]
    );
    let bob = sqlite_rows(&db, "ledger")
        .into_iter()
        .find(|r| r["id"] == "2")
        .unwrap();
    assert!(bob["at"].starts_with("0001-01-01"), "{bob:?}");
    assert_eq!(bob["day"], "0001-01-01");

    // A version the table does not have, and a folder that is not a Delta table: the run
    // fails naming them, and the destination keeps what it had.
    project(&f, "lake/ledger", "version = 99");
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_ne!(code, 0);
    assert!((out.clone() + &err).contains("version 99"), "{out}\n{err}");
    project(&f, "lake", "");
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_ne!(code, 0);
    assert!(
        (out.clone() + &err).contains("is not a Delta table"),
        "{out}\n{err}"
    );
    assert_eq!(names(&db).len(), 3);
}

#[tokio::test]
async fn a_delta_table_in_an_s3_bucket_is_read_with_the_environments_credentials() {
    let Some(s3) = S3Server::start("lake-bucket").await else {
        return;
    };
    let mut opts = serde_json::Map::new();
    for (k, v) in s3.env() {
        opts.insert(k.into(), v.into());
    }
    opts.insert("AWS_ALLOW_HTTP".into(), "true".into());
    opts.insert("aws_conditional_put".into(), "etag".into());
    let Some(version) = write(&s3.url("tables/ledger"), opts.into(), "create") else {
        return;
    };
    assert_eq!(version, 2);
    let f = Fixture::new();
    project(&f, &s3.url("tables/ledger"), "");
    let r = run(&f, &s3.env());
    assert_eq!(r["created"], 2, "{r}");
    assert_eq!(
        names(&f.path().join("out/app.db")),
        vec![
            ("-9223372036854775808".into(), "Zoë ✓".into()),
            ("1".into(), "Ada L.".into())
        ]
    );
}
