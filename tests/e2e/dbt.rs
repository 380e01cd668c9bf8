//! dbt projects as sources: a real dbt project (dbt-core and dbt-postgres from PyPI, the `dbt`
//! program in `BACKFLOW_TEST_DBT` or the PATH) built by dbt itself on the local PostgreSQL, its
//! models synced by their dbt names.

use std::path::Path;
use std::process::Command;

use crate::common::db::{PG_ENV, pg_schema, postgres};
use crate::common::{Fixture, sqlite_rows};

pub const DBT_ENV: &str = "BACKFLOW_TEST_DBT";

/// Run dbt `args` on the project in `dir`; None when there is no dbt (skipped; a failure under
/// CI=true).
fn dbt(dir: &Path, args: &[&str]) -> Option<()> {
    let program = std::env::var(DBT_ENV).unwrap_or_else(|_| "dbt".into());
    let out = Command::new(&program)
        .args(args)
        .arg("--project-dir")
        .arg(dir)
        .arg("--profiles-dir")
        .arg(dir)
        // No telemetry or version checks over the network.
        .env("DO_NOT_TRACK", "1")
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("DBT_USE_COLORS", "false")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => panic!(
            "dbt {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            let why = format!("cannot run {program} (set {DBT_ENV}): {e}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("dbt is needed and CI=true: {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// A dbt project at `analytics/` of `f` building into schema `schema` of the test PostgreSQL.
fn dbt_project(f: &Fixture, schema: &str, people: &str) {
    let url = url::Url::parse(&std::env::var(PG_ENV).unwrap()).unwrap();
    f.write(
        "analytics/dbt_project.yml",
        "name: shop\nversion: \"1.0\"\nprofile: shop\nseed-paths: [\"seeds\"]\nmodel-paths: [\"models\"]\n\
         seeds:\n  shop:\n    raw_people:\n      +column_types:\n        id: bigint\n        mrr: numeric(20,2)\n        renews_on: date\n",
    );
    f.write(
        "analytics/profiles.yml",
        &format!(
            "shop:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      host: {host}\n      port: {port}\n      user: {user}\n      password: \"{password}\"\n      dbname: {db}\n      schema: {schema}\n      threads: 1\n",
            host = url.host_str().unwrap(),
            port = url.port().unwrap_or(5432),
            user = if url.username().is_empty() { "postgres" } else { url.username() },
            password = url.password().unwrap_or(""),
            db = url.path().trim_start_matches('/'),
        ),
    );
    f.write("analytics/seeds/raw_people.csv", people);
    // A table under an alias, an ephemeral model it reads, and a model never built.
    f.write(
        "analytics/models/customers.sql",
        "{{ config(materialized='table', alias='dim_customers') }}\n\
         select id, email, name, plan, mrr, renews_on from {{ ref('paying') }}",
    );
    f.write(
        "analytics/models/paying.sql",
        "{{ config(materialized='ephemeral') }}\n\
         select * from {{ ref('raw_people') }} where plan <> 'free'",
    );
    f.write(
        "analytics/models/pending.sql",
        "{{ config(alias='never_built') }}\nselect 1 as x",
    );
}

#[tokio::test]
async fn dbt_models_sync_by_their_dbt_names_and_unbuilt_ones_are_reported() {
    let Some(pg) = postgres().await else { return };
    let schema = "bf_e2e_dbt";
    pg_schema(&pg, schema).await;
    let f = Fixture::new();
    dbt_project(
        &f,
        schema,
        "id,email,name,plan,mrr,renews_on\n\
         1,ada@x.io,Ada,pro,120.50,2027-01-31\n\
         2,bob@x.io,Bob,free,0,2027-02-28\n\
         9223372036854775807,max@x.io,Max,enterprise,123456789012345678.99,9999-12-31\n",
    );
    let analytics = f.path().join("analytics");
    if dbt(&analytics, &["seed"]).is_none() {
        return;
    }
    dbt(&analytics, &["run", "--exclude", "pending"]).unwrap();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.dbt]
type = "dbt"
manifest = "analytics/target/manifest.json"
url_env = "{PG_ENV}"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.customers]
from = "dbt.customers"
to = "app"
object = "customers"
behavior = "mirror"
key = "email"
"#
        ),
    );

    // check: the model dbt did not build is named, with the command that builds it.
    let (code, out, err) = f.cli(&["check", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let source = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["source"] == "dbt")
        .unwrap_or_else(|| panic!("no source record: {out}"));
    let warnings = source["warnings"].to_string();
    assert!(
        warnings.contains("pending")
            && warnings.contains("never_built")
            && warnings.contains("dbt run --select pending"),
        "{warnings}"
    );
    assert!(!warnings.contains("paying"), "ephemeral: {warnings}");

    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["created"], 2, "{report}");
    let rows = sqlite_rows(&f.path().join("out/app.db"), "customers");
    let max = rows.iter().find(|r| r["email"] == "max@x.io").unwrap();
    assert_eq!(max["id"], "9223372036854775807");
    assert_eq!(max["renews_on"], "9999-12-31");
    assert_eq!(max["mrr"], "123456789012345678.99");
    assert!(!rows.iter().any(|r| r["email"] == "bob@x.io"));

    // dbt builds again from changed data; only the changes are sent.
    dbt_project(
        &f,
        schema,
        "id,email,name,plan,mrr,renews_on\n\
         1,ada@x.io,Ada,free,120.50,2027-01-31\n\
         2,bob@x.io,Bob,pro,10,2027-02-28\n\
         9223372036854775807,max@x.io,Max,enterprise,123456789012345678.99,9999-12-31\n",
    );
    dbt(&analytics, &["seed"]).unwrap();
    dbt(&analytics, &["run", "--exclude", "pending"]).unwrap();
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&report["created"], &report["deleted"], &report["unchanged"]),
        (&1.into(), &1.into(), &1.into()),
        "{report}"
    );

    // A sync of the unbuilt model fails saying what to do; the other sync still runs.
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &format!(
            "{toml}\n[syncs.pending]\nfrom = \"dbt.pending\"\nto = \"app\"\nobject = \"pending\"\nbehavior = \"mirror\"\nkey = \"x\"\n"
        ),
    );
    let (code, out, err) = f.cli(&["run", "pending", "--json"]);
    assert_ne!(code, 0);
    assert!(
        (out.clone() + &err).contains("dbt run --select pending"),
        "{out}\n{err}"
    );

    // The manifest is read from where the project says, relative to the project: a moved
    // project keeps working.
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("moved");
    std::fs::rename(f.path(), &to).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backflow"))
        .args(["run", "customers", "--json", "--project"])
        .arg(&to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::rename(&to, f.path()).unwrap();
}
