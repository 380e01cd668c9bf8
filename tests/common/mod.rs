//! Helpers: a project in a temporary folder, runs through the library, and readers for what
//! destinations hold.

#![allow(dead_code)]

pub mod api;
pub mod db;
pub mod faulty;
pub mod files_http;
pub mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backflow::history::RunStatus;
use backflow::sync::{self, NoProgress, RunOptions};
use backflow::{PlanReport, Project, SyncReport};

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    pub fn load(&self) -> Result<Project, backflow::ProjectError> {
        Project::load(self.path())
    }

    /// Run syncs through the library (all when `names` is empty).
    pub async fn run_with(&self, names: &[&str], options: RunOptions) -> Vec<SyncReport> {
        let project = self.load().expect("project loads");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let names = project.select_syncs(&names).expect("known syncs");
        let ctx = project.session().await.expect("session");
        let mut out = Vec::new();
        for n in names {
            out.push(
                sync::run(
                    &project,
                    &ctx,
                    &n,
                    options.clone(),
                    std::sync::Arc::new(NoProgress),
                )
                .await,
            );
        }
        out
    }

    /// Run one sync and insist that it succeeded.
    pub async fn run_ok(&self, name: &str) -> SyncReport {
        let r = self
            .run_with(&[name], RunOptions::default())
            .await
            .remove(0);
        assert_eq!(r.status, RunStatus::Succeeded, "run failed: {:?}", r.error);
        r
    }

    pub async fn plan(&self, name: &str) -> PlanReport {
        let project = self.load().expect("project loads");
        let ctx = project.session().await.expect("session");
        sync::plan(&project, &ctx, name, RunOptions::default()).await
    }

    /// Rows of an SQLite table as sorted `col=value` maps (values as text, NULL as "NULL").
    pub fn sqlite(&self, db: &str, table: &str) -> Vec<BTreeMap<String, String>> {
        sqlite_rows(&self.path().join(db), table)
    }

    /// Rows of an SQLite table (none when it is not there), each as `|`-joined text of
    /// `columns` with NULL as `∅`, sorted.
    pub fn sqlite_cells(&self, db: &str, table: &str, columns: &[&str]) -> Vec<String> {
        let mut rows: Vec<String> = self
            .sqlite(db, table)
            .iter()
            .map(|r| {
                columns
                    .iter()
                    .map(|c| match r.get(*c).map(String::as_str) {
                        None | Some("NULL") => "∅".to_string(),
                        Some(v) => v.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        rows.sort();
        rows
    }

    /// Every file under `rel` (recursively), relative to the project, sorted.
    pub fn files_under(&self, rel: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if let Ok(r) = p.strip_prefix(base) {
                    out.push(r.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path().join(rel), self.path(), &mut out);
        out.sort();
        out
    }

    /// Every manifest file of the state folder (to prove state was not touched).
    pub fn manifests(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.path().join(".backflow/syncs");
        if let Ok(syncs) = std::fs::read_dir(root) {
            for s in syncs.flatten() {
                if let Ok(m) = std::fs::read_dir(s.path().join("_manifests")) {
                    out.extend(m.flatten().map(|e| e.path()));
                }
            }
        }
        out.sort();
        out
    }

    /// The CLI binary with `args` and `--project` set to this project.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_backflow"));
        c.args(args).arg("--project").arg(self.path());
        c
    }

    /// Run the CLI binary; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().expect("run backflow");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `id,name` with rows `0,<tag>0` … `n-1,<tag>n-1`.
pub fn numbered_csv(n: usize, tag: &str) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..n {
        csv.push_str(&format!("{i},{tag}{i}\n"));
    }
    csv
}

pub fn sqlite_rows(db: &Path, table: &str) -> Vec<BTreeMap<String, String>> {
    let conn = rusqlite::Connection::open(db).expect("open sqlite");
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))
        .expect("select");
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let mut rows: Vec<BTreeMap<String, String>> = stmt
        .query_map([], |r| {
            let mut m = BTreeMap::new();
            for (i, n) in names.iter().enumerate() {
                let v: rusqlite::types::Value = r.get(i)?;
                let s = match v {
                    rusqlite::types::Value::Null => "NULL".to_string(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Blob(b) => format!("{b:?}"),
                };
                m.insert(n.clone(), s);
            }
            Ok(m)
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    rows.sort();
    rows
}

/// `(key, value)` pairs of two columns of a table, sorted.
pub fn pairs(rows: &[BTreeMap<String, String>], k: &str, v: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        rows.iter().map(|r| (r[k].clone(), r[v].clone())).collect();
    out.sort();
    out
}

/// A one-sync project reading `people.csv` (id,email,name,plan) into SQLite with `behavior`.
pub fn people_project(f: &Fixture, behavior: &str, extra: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people_sync]
from = "people"
to = "app"
object = "people"
behavior = "{behavior}"
key = "id"
{extra}
"#
        ),
    );
}

/// A one-sync project reading `people.csv` into PostgreSQL (the test server, `schema`) with
/// `behavior`: sync `people_sync`, object `people`, key `id`.
pub fn people_pg_project(f: &Fixture, schema: &str, behavior: &str) {
    f.write(
        "backflow.toml",
        &format!(
            "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.pg]\ntype = \"postgres\"\nurl_env = \"BACKFLOW_TEST_POSTGRES_URL\"\nschema = \"{schema}\"\n\n[syncs.people_sync]\nfrom = \"people\"\nto = \"pg\"\nobject = \"people\"\nbehavior = \"{behavior}\"\nkey = \"id\"\n"
        ),
    );
}

/// Failpoints are process-wide: tests that configure one hold this lock from `fail::cfg` to
/// `fail::remove`, so that two tests never configure the same point at once.
pub static FAILPOINTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run `sync` with failpoint `point` set to fail it (as an error, or a panic when `panic`);
/// asserts that the run did fail there.
#[cfg(feature = "failpoints")]
pub async fn run_faulted(f: &Fixture, sync: &str, point: &str, panic: bool) {
    let arg = if panic {
        format!("panic:{sync}")
    } else {
        sync.to_string()
    };
    let _failpoints = FAILPOINTS.lock().await;
    fail::cfg(point, &format!("return({arg})")).unwrap();
    let outcome = {
        let path = f.path().to_path_buf();
        let sync = sync.to_string();
        tokio::spawn(async move {
            let project = Project::load(&path).unwrap();
            let ctx = project.session().await.unwrap();
            sync::run(
                &project,
                &ctx,
                &sync,
                RunOptions::default(),
                std::sync::Arc::new(NoProgress),
            )
            .await
        })
        .await
    };
    fail::remove(point);
    match outcome {
        Ok(report) => {
            assert!(!panic, "the run did not panic: {report:?}");
            assert_eq!(report.status, RunStatus::Failed, "{report:?}");
            assert!(report.error.unwrap_or_default().contains(point));
        }
        Err(join) => assert!(panic && join.is_panic(), "{join:?}"),
    }
}

/// `people_project` with `people.csv` holding `csv`.
pub fn people_fixture(behavior: &str, extra: &str, csv: &str) -> Fixture {
    let f = Fixture::new();
    people_project(&f, behavior, extra);
    f.write("people.csv", csv);
    f
}

/// A report's (created, updated, deleted, unchanged).
pub fn cudu(r: &SyncReport) -> (u64, u64, u64, u64) {
    let c = &r.counts;
    (c.created, c.updated, c.deleted, c.unchanged)
}

/// Wait for `child` to end, or kill it and fail the test after `limit`: a hang, not a slow run.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} hung: still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
