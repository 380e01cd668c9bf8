//! Record logs: with `record_log = true`, every record a run sends is logged (Parquet under the
//! run history) with its operation and outcome; `history SYNC --records KEY` tells one
//! record's story; old logs expire.

use crate::common::*;

#[test]
fn every_record_sent_is_logged_and_its_story_can_be_read() {
    let f = people_fixture(
        "upsert",
        "record_log = true",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    assert_eq!(f.cli(&["run"]).0, 0);
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bobby,free\n",
    );
    assert_eq!(f.cli(&["run"]).0, 0);
    let (code, out, err) = f.cli(&["history", "people_sync", "--records", "2", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{out}");
    assert!(
        entries
            .iter()
            .all(|e| e["op"] == "upsert" && e["status"] == "sent")
    );
    assert_ne!(entries[0]["run_id"], entries[1]["run_id"]);
    let (_, out, _) = f.cli(&["history", "people_sync", "--records", "1"]);
    assert_eq!(out.matches("upsert").count(), 1, "{out}");

    // The files are plain Parquet, one per run.
    let dir = f.path().join(".backflow/history/people_sync/record_log");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 2);

    // A log older than the retention goes at the next successful run.
    let old = dir.join("0000000000001-old.parquet");
    std::fs::copy(files[0].path(), &old).unwrap();
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n",
    );
    assert_eq!(f.cli(&["run"]).0, 0);
    assert!(!old.exists(), "an expired record log was kept");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
}

#[test]
fn a_refused_record_is_logged_with_the_reason_and_no_log_is_explained() {
    let f = people_fixture(
        "update-only",
        "record_log = true",
        "id,email,name,plan\n7,a@x.io,Ada,pro\n",
    );
    assert_eq!(f.cli(&["run"]).0, 0);
    let (code, out, err) = f.cli(&["history", "people_sync", "--records", "7"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rejected") && out.contains("no record with this key"),
        "{out}"
    );

    let z = people_fixture(
        "upsert",
        "record_log = true\nrecord_log_retention = \"0s\"",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n",
    );
    let e = z.load().unwrap_err().to_string();
    assert!(e.contains("record_log_retention \"0s\""), "{e}");

    let g = people_fixture("upsert", "", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    assert_eq!(g.cli(&["run"]).0, 0);
    let (code, _, err) = g.cli(&["history", "people_sync", "--records", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("record_log = true"), "{err}");
    assert!(
        !g.path()
            .join(".backflow/history/people_sync/record_log")
            .exists()
    );
}
