//! Test runs: `run SYNC --sample N` / `--keys a,b` send only those rows, show each record sent
//! with the destination's answer, record them as synced, and touch nothing else (no deletes,
//! no guard, the watermark stays).

use crate::common::*;

const FIVE: &str = "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n4,d@x.io,Di,free\n5,e@x.io,Ed,pro\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_run_sends_a_few_records_and_shows_the_answers() {
    let f = people_fixture("mirror", "", FIVE);
    let (code, out, err) = f.cli(&["run", "people_sync", "--sample", "2", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["created"].as_u64(), v["deleted"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    let sent = v["samples"].as_array().unwrap();
    assert_eq!(sent.len(), 2, "{v}");
    assert_eq!(sent[0]["kind"], "upsert");
    assert_eq!(sent[0]["reason"], "accepted");
    assert_eq!(sent[0]["record"]["name"], "Ada");
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name").len(),
        2
    );

    // The full run sends the rest: the sampled records are in sync.
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["created"].as_u64(), v["unchanged"].as_u64()),
        (Some(3), Some(2)),
        "{v}"
    );

    // Record 5 leaves the model and record 1 changes: a test of key 1 updates it and deletes
    // nothing (nor does the mass-delete guard count the other four as gone).
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada L,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n4,d@x.io,Di,free\n",
    );
    let (code, out, err) = f.cli(&["run", "people_sync", "--keys", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sent (upsert): key 1 → accepted"), "{out}");
    assert!(
        out.contains("updated 1") && out.contains("deleted 0"),
        "{out}"
    );
    assert_eq!(f.sqlite("out/app.db", "people").len(), 5);
    let plan = f.plan("people_sync").await;
    assert_eq!(
        (plan.counts.updated, plan.counts.deleted),
        (0, 1),
        "{plan:?}"
    );
}

#[test]
fn a_refused_record_is_shown_with_the_reason_and_bad_requests_are_named() {
    let f = people_fixture("update-only", "", FIVE);
    let (code, out, err) = f.cli(&["run", "people_sync", "--keys", "3,4"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("→ no record with this key").count(), 2, "{out}");
    // A key with a comma, verbatim; a sample larger than anything.
    let g = people_fixture("upsert", "", "id,email,name,plan\n1,a@x.io,Ada,pro\n");
    let toml = std::fs::read_to_string(g.path().join("backflow.toml")).unwrap();
    g.write(
        "backflow.toml",
        &toml.replace("key = \"id\"", "key = \"name\""),
    );
    g.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,\"Lovelace, Ada\",pro\n2,b@x.io,Bob,free\n",
    );
    let (code, out, err) = g.cli(&["run", "people_sync", "--key", "Lovelace, Ada"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("key Lovelace, Ada → accepted"), "{out}");
    let (code, out, err) = g.cli(&["run", "people_sync", "--sample", "18446744073709551615"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sent (upsert): key Bob"), "{out}");

    for args in [
        &["run", "--sample", "1"][..],
        &["run", "people_sync", "other", "--sample", "1"],
        &["run", "people_sync", "--sample", "1", "--keys", "1"],
    ] {
        let (code, out, err) = f.cli(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
    }
}

/// A composite key in a test run and a record's story: each key is a JSON list of its parts;
/// the first rows by key are the first by each part in order.
#[test]
fn composite_keys_are_named_as_json_lists() {
    let f = people_fixture(
        "mirror",
        "record_log = true",
        "id,email,name,plan\n2,b@x.io,Bob,pro\n1,a@x.io,Ada,pro\n1,c@x.io,Cy,free\n",
    );
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("key = \"id\"", "key = [\"plan\", \"id\"]"),
    );
    let (code, out, err) = f.cli(&["run", "people_sync", "--sample", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#"key ["free","1"] → accepted"#), "{out}");
    let (code, out, err) = f.cli(&["run", "people_sync", "--key", r#"[ "pro", 2 ]"#]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#"key ["pro","2"] → accepted"#), "{out}");
    assert!(!out.contains("nothing was sent"), "{out}");
    let db = f.sqlite("out/app.db", "people");
    assert_eq!(db.len(), 2, "{db:?}");
    // A key that is not a list of two is refused with how to write one.
    let (code, out, err) = f.cli(&["run", "people_sync", "--key", "pro"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("JSON list of 2 values"), "{err}");
    let (code, out, err) = f.cli(&["history", "people_sync", "--records", r#"["pro",2]"#]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("upsert"), "{out}");
}
