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
    assert_eq!(plan["samples"]["create"].as_array().unwrap().len(), 2);
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
    ] {
        assert!(run.get(k).is_some(), "missing {k} in {run}");
    }
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["sync"], "people_sync");

    let (code, out, _) = f.cli(&["history", "people_sync", "--json"]);
    assert_eq!(code, 0);
    let h: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(h["created"], 2);
    assert_eq!(h["status"], "succeeded");

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
