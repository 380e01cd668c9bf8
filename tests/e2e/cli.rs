//! The command line as a user meets it: init, check, plan, run, history, JSON and exit codes.

use crate::common::*;

#[test]
fn init_creates_a_project_that_runs() {
    let f = Fixture::new();
    let dir = f.path().join("starter");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backflow"))
        .arg("init")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_backflow"))
            .args(args)
            .arg("--project")
            .arg(&dir)
            .output()
            .unwrap()
    };
    assert!(run(&["check"]).status.success());
    let out = run(&["run", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["created"], 3);
    let rows = sqlite_rows(&dir.join("out/app.db"), "customers");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().any(|r| r["email_domain"] == "cobol.dev"));
    // init refuses a folder with files in it.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_backflow"))
        .arg("init")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn run_and_plan_json_have_the_documented_fields() {
    let f = people_fixture(
        "mirror",
        "",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let (code, out, _) = f.cli(&["plan", "--json"]);
    assert_eq!(code, 0, "{out}");
    let plan: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(plan["created"], 2);
    assert_eq!(
        (&plan["schema_version"], &plan["command"], &plan["type"]),
        (
            &serde_json::json!(1),
            &serde_json::json!("plan"),
            &serde_json::json!("sync")
        )
    );
    assert!(plan["run_id"].is_string(), "{plan}");
    let samples = plan["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0]["kind"], "create");
    assert!(samples[0]["record"]["email"].is_string(), "{plan}");
    assert!(!f.path().join("out/app.db").exists(), "plan must not write");
    assert!(f.manifests().is_empty());

    let (code, out, _) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}");
    let run: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for k in [
        "sync",
        "status",
        "read",
        "invalid",
        "created",
        "updated",
        "deleted",
        "unchanged",
        "rejected",
        "duration_ms",
        "sources_ms",
    ] {
        assert!(run.get(k).is_some(), "missing {k} in {run}");
    }
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["sync"], "people_sync");
    assert_eq!(
        (&run["schema_version"], &run["type"]),
        (&serde_json::json!(1), &serde_json::json!("sync"))
    );
    assert!(
        run["samples"].as_array().unwrap().is_empty()
            && run["warnings"].as_array().unwrap().is_empty()
    );

    let (code, out, _) = f.cli(&["history", "people_sync", "--json"]);
    assert_eq!(code, 0);
    let h: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(h["created"], 2);
    assert_eq!(h["status"], "succeeded");
    // One shape for a sync, whichever command prints it.
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| k != "command");
        k.sort();
        k
    };
    assert_eq!(keys(&h), keys(&run), "history {h}\nrun {run}");
    assert_eq!(keys(&plan), keys(&run), "plan {plan}\nrun {run}");
    assert_eq!(
        (&h["behavior"], &h["destination"], &h["object"]),
        (&run["behavior"], &run["destination"], &run["object"])
    );
    assert_eq!(h["run_id"], run["run_id"]);
    assert!(h["samples"].as_array().unwrap().is_empty());

    // check --json: one object per sync, the same identification fields.
    let (code, out, _) = f.cli(&["check", "--json"]);
    assert_eq!(code, 0, "{out}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            &c["command"],
            &c["type"],
            &c["sync"],
            &c["status"],
            &c["behavior"]
        ),
        (
            &serde_json::json!("check"),
            &serde_json::json!("sync"),
            &serde_json::json!("people_sync"),
            &serde_json::json!("succeeded"),
            &serde_json::json!("mirror")
        )
    );

    // The invocation's results, for a scheduler.
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.path().join(".backflow/run_results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results["schema_version"], 1);
    assert_eq!(results["status"], "succeeded");
    assert_eq!(results["results"][0]["run_id"], run["run_id"]);

    // A command that cannot start still prints a line a script can parse.
    let (code, out, err) = f.cli(&["run", "nope", "--json"]);
    assert_eq!(code, 2, "{err}");
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&e["type"], &e["status"]),
        (&serde_json::json!("error"), &serde_json::json!("failed"))
    );
    assert!(e["error"].as_str().unwrap().contains("nope"), "{e}");
    // A usage mistake too.
    let (code, out, err) = f.cli(&["run", "--json", "--sample", "abc"]);
    assert_eq!(code, 2, "{err}");
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&e["type"], &e["command"]),
        (&serde_json::json!("error"), &serde_json::json!("run"))
    );
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.path().join(".backflow/run_results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results["status"], "failed");
    assert_eq!(results["results"][0]["type"], "error");

    let (code, out, _) = f.cli(&["history"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("people_sync") && out.contains("succeeded"),
        "{out}"
    );

    let (code, _, err) = f.cli(&["run", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown sync or entity \"nope\""), "{err}");
}

#[test]
fn the_bundled_example_runs_end_to_end() {
    let f = Fixture::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/example");
    for rel in [
        "backflow.toml",
        "people.csv",
        "accounts.parquet",
        "models/customers.sql",
        "models/accounts_summary.sql",
    ] {
        let to = f.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), to).unwrap();
    }
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("✓ paying_to_app") && out.contains("invalid 3"),
        "{out}"
    );
    let rows = f.sqlite("out/app.db", "customers");
    assert!(rows.iter().all(|r| r["plan"] != "free"));
    assert!(f.path().join("out/customers.parquet").exists());
    let csv = std::fs::read_to_string(f.path().join("out/accounts_summary.csv")).unwrap();
    assert!(csv.starts_with("company,"), "{csv}");
    let (code, out, _) = f.cli(&["run"]);
    assert_eq!(code, 0);
    assert!(out.contains("created 0  updated 0  deleted 0"), "{out}");
}

/// History is open Parquet: a runs file another writer rewrote (microsecond timestamps, signed
/// counts, large strings, columns in another order, an extra column, a status backflow does not
/// know) reads like one backflow wrote, the status shown as it is; a damaged one is an error
/// naming the file, never a panic.
#[test]
fn history_reads_runs_files_other_writers_rewrote() {
    use arrow::array::{
        ArrayRef, AsArray, Int64Array, LargeStringArray, RecordBatch, TimestampMicrosecondArray,
    };
    use std::sync::Arc;

    let f = people_fixture("upsert", "", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{err}");
    let dir = f.path().join(".backflow/history/people_sync/runs");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
    let original = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let started_ms = original
        .column_by_name("started_at")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .value(0);

    let large = |v: &str| Arc::new(LargeStringArray::from(vec![v])) as ArrayRef;
    let micros = |ms: i64| {
        Arc::new(TimestampMicrosecondArray::from(vec![ms * 1000]).with_timezone("UTC")) as ArrayRef
    };
    let run_id = original
        .column_by_name("run_id")
        .unwrap()
        .as_string::<i32>()
        .value(0);
    let foreign = RecordBatch::try_from_iter([
        ("note", large("rewritten by another tool")),
        ("created", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("status", large("cancelled")),
        ("finished_at", micros(started_ms + 5)),
        ("started_at", micros(started_ms)),
        ("sync", large("people_sync")),
        ("run_id", large(run_id)),
        ("read", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
    ])
    .unwrap();
    let write = |batch: &RecordBatch| {
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        std::fs::write(&file, out).unwrap();
    };
    write(&foreign);

    let (code, out, err) = f.cli(&["history", "people_sync", "--json"]);
    assert_eq!(code, 0, "{err}");
    let h: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(h["status"], "cancelled", "{h}");
    assert_eq!(h["created"], 1);
    let started = chrono::DateTime::from_timestamp_millis(started_ms).unwrap();
    assert_eq!(h["started_at"], started.to_rfc3339(), "{h}");
    assert_eq!(h["duration_ms"], 5, "{h}");
    let (code, out, _) = f.cli(&["history", "people_sync"]);
    assert_eq!(code, 0);
    assert!(out.contains("cancelled"), "{out}");

    // A negative count cannot be one: an error naming the file and the column.
    let negative = RecordBatch::try_from_iter([
        ("run_id", large(run_id)),
        ("sync", large("people_sync")),
        ("status", large("succeeded")),
        ("started_at", micros(started_ms)),
        ("finished_at", micros(started_ms)),
        ("created", Arc::new(Int64Array::from(vec![-1])) as ArrayRef),
    ])
    .unwrap();
    write(&negative);
    let (code, _, err) = f.cli(&["history", "people_sync"]);
    assert_ne!(code, 101, "{err}");
    assert_ne!(code, 0);
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name) && err.contains("created"), "{err}");

    // Not Parquet at all.
    std::fs::write(&file, b"not parquet").unwrap();
    let (code, _, err) = f.cli(&["history", "people_sync"]);
    assert_ne!(code, 101, "{err}");
    assert!(err.contains(&name), "{err}");
}

/// `backflow run | head -1`: stdout closes after the first line; every sync still runs and
/// commits, and the exit code is the run's.
#[test]
fn a_closed_stdout_never_stops_a_run() {
    let f = people_fixture(
        "mirror",
        "\n[syncs.second]\nfrom = \"people\"\nto = \"app\"\nobject = \"people2\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let mut child = f
        .command(&["run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end goes away before backflow prints anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
    assert_eq!(f.sqlite("out/app.db", "people2").len(), 2);
}

/// In text mode a failed sync's line goes to stdout and its error to stderr; logs written to a
/// pipe or a file carry no colour codes.
#[test]
fn errors_go_to_stderr_and_logs_to_a_pipe_have_no_colour_codes() {
    let f = people_fixture(
        "mirror",
        "fields = { auto = false, computed = { name = \"no_such_column\" } }\n\n[syncs.good]\nfrom = \"people\"\nto = \"app\"\nobject = \"good\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n",
    );
    let out = f
        .command(&["run"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("✗ people_sync"), "{stdout}");
    assert!(!stdout.contains("no_such_column"), "{stdout}");
    assert!(
        stderr.contains("error:") && stderr.contains("no_such_column"),
        "{stderr}"
    );
    assert!(stderr.contains("INFO"), "no log lines: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// A project that moves (a re-clone, a renamed folder) keeps its state: the destinations inside
/// it are recorded relative to it, so the next run sends nothing, and a mirror still deletes
/// what left the model.
#[test]
fn a_project_that_moves_keeps_its_state() {
    let f = people_fixture(
        "mirror",
        "\n[destinations.files]\ntype = \"file\"\npath = \"exports\"\nformat = \"csv\"\n\n[syncs.to_file]\nfrom = \"people\"\nto = \"files\"\nobject = \"people\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let parent = tempfile::tempdir().unwrap();
    let moved = parent.path().join("renamed project");
    std::fs::rename(f.path(), &moved).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backflow"))
            .args(args)
            .arg("--project")
            .arg(&moved)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = run(&["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("unchanged 2").count(), 2, "{text}");
    std::fs::write(
        moved.join("people.csv"),
        "id,email,name,plan\n1,a@x.io,Ada,pro\n",
    )
    .unwrap();
    let (code, text) = run(&["run"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("deleted 1").count(), 2, "{text}");
    assert_eq!(sqlite_rows(&moved.join("out/app.db"), "people").len(), 1);
    let csv = std::fs::read_to_string(moved.join("exports/people.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    // Put it back for the fixture's clean-up.
    std::fs::rename(&moved, f.path()).unwrap();
}

/// `check --offline` validates what needs no server, so a project whose connection URL
/// variables are not set here can be checked (in CI, before a deploy); a mistake in the files
/// still fails it.
#[test]
fn check_offline_needs_no_connection_url() {
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n");
    let toml = r#"
[sources.wh]
type = "postgres"
url_env = "BACKFLOW_TEST_NEVER_SET_URL"
tables = ["accounts"]

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.accounts]
from = "wh.accounts"
to = "app"
object = "accounts"
behavior = "upsert"
key = "id"
"#;
    f.write("backflow.toml", toml);
    let (code, out, err) = f.cli(&["check"]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("BACKFLOW_TEST_NEVER_SET_URL"),
        "{out}{err}"
    );
    let (code, out, err) = f.cli(&["check", "--offline"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("valid offline") && out.contains("1 sync(s)"),
        "{out}"
    );

    f.write(
        "backflow.toml",
        &toml.replace("behavior = \"upsert\"", "behavior = \"upsret\""),
    );
    let (code, out, err) = f.cli(&["check", "--offline"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("upsret"), "{out}{err}");
}

/// `check` names a destination that a run could not create (here a folder under /proc, where
/// not even root can create files), instead of leaving it to the run.
#[test]
fn check_names_a_destination_that_cannot_be_written() {
    let f = people_fixture("upsert", "", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &(toml.replace("path = \"out/app.db\"", "path = \"/proc/backflow-test/app.db\"")
            + "\n[destinations.files]\ntype = \"file\"\npath = \"/proc/backflow-test\"\nformat = \"csv\"\n\n[syncs.to_file]\nfrom = \"people\"\nto = \"files\"\nobject = \"people\"\nbehavior = \"upsert\"\nkey = \"id\"\n"),
    );
    let (code, out, err) = f.cli(&["check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.matches("files cannot be created in /proc").count(),
        2,
        "{out}{err}"
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 1, "{out}{err}");
}

/// `--select NAME|tag:TAG` and `--exclude` pick what `run`, `plan` and `check` act on; a tag
/// that matches nothing is an error, not an empty success.
#[test]
fn select_and_exclude_by_name_and_tag() {
    let f = people_fixture(
        "upsert",
        "tags = [\"daily\", \"crm\"]",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n",
    );
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &(toml
            + "\n[syncs.second]\nfrom = \"people\"\nto = \"app\"\nobject = \"second\"\nbehavior = \"upsert\"\nkey = \"id\"\ntags = [\"daily\"]\n\n[syncs.third]\nfrom = \"people\"\nto = \"app\"\nobject = \"third\"\nbehavior = \"upsert\"\nkey = \"id\"\n"),
    );
    let ran = |args: &[&str]| {
        let (code, out, err) = f.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let mut names: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["sync"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        ran(&["plan", "--json", "--select", "tag:daily"]),
        ["people_sync", "second"]
    );
    assert_eq!(
        ran(&[
            "run",
            "--json",
            "--select",
            "tag:daily",
            "--exclude",
            "tag:crm"
        ]),
        ["second"]
    );
    assert!(
        !f.path().join(".backflow/syncs/people_sync").exists(),
        "an excluded sync ran"
    );
    assert_eq!(
        ran(&["run", "--json", "third", "--select", "second"]),
        ["second", "third"]
    );
    assert_eq!(
        ran(&["check", "--json", "--exclude", "tag:daily"]),
        ["third"]
    );
    assert_eq!(
        ran(&["run", "--json", "--exclude", "second", "--exclude", "third"]),
        ["people_sync"]
    );
    for args in [
        &["run", "--select", "tag:weekly"][..],
        &["plan", "--exclude", "nope"],
    ] {
        let (code, out, err) = f.cli(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("weekly") || err.contains("nope"), "{err}");
    }
    let (_, _, err) = f.cli(&["run", "--select", "tag:weekly"]);
    assert!(err.contains("the tags in use are: crm, daily"), "{err}");
}
