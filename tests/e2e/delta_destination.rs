//! Delta Lake tables as destinations (the `delta` feature): every behavior is one Delta commit
//! per run that carries the run id, values at the edges of their types arrive exactly, and a
//! run killed at any step leaves the table and the state agreeing after the next run, with no
//! row appended twice. The tables are read back by another reader, the `deltalake` Python
//! package (its python in `BACKFLOW_TEST_DELTA_PYTHON`).

use std::process::Command;

use super::delta::python;
use crate::common::Fixture;
use crate::common::s3::S3Server;

/// Reads a Delta table: its rows (values as text), its history (newest first) and version.
const READER: &str = r#"
import sys, json, os
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
def text(v):
    return None if v is None else str(v)
print(json.dumps({
    "rows": [{k: text(v) for k, v in r.items()} for r in dt.to_pyarrow_table().to_pylist()],
    "history": dt.history(),
    "version": dt.version(),
}, default=str))
sys.stdout.flush()
# (deltalake's threads can abort the interpreter's exit: leave at once.)
os._exit(0)
"#;

/// The table at `path`: rows, history (newest first), version.
fn read(python: &str, path: &std::path::Path) -> serde_json::Value {
    read_at(python, path.to_str().unwrap(), None)
}

/// The table at `url`, with deltalake's storage options `opts`.
fn read_at(python: &str, url: &str, opts: Option<serde_json::Value>) -> serde_json::Value {
    let mut args = vec!["-c".to_string(), READER.to_string(), url.to_string()];
    if let Some(o) = opts {
        args.push(o.to_string());
    }
    let path = url;
    let out = Command::new(python).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "reading {}: {}",
        path,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The rows of `table` as sorted (id, name) pairs.
fn pairs(table: &serde_json::Value) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().parse().unwrap(),
                r["name"].as_str().unwrap_or("NULL").to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn run_json(f: &Fixture, args: &[&str]) -> serde_json::Value {
    super::delta::run_json(f, args, &[])
}

const V1: &str = "id,name\n1,Ada\n2,Bob\n3,Cy\n";
const V2: &str = "id,name\n1,Ada L.\n3,Cy\n4,Di\n";

fn project(f: &Fixture, behaviors: &[&str]) {
    let mut toml = String::from(
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.lake]
type = "delta"
path = "lake"
"#,
    );
    for b in behaviors {
        toml.push_str(&format!(
            "\n[syncs.{b}]\nfrom = \"people\"\nto = \"lake\"\nobject = \"{b}\"\nbehavior = \"{b}\"\nkey = \"id\"\n"
        ));
    }
    f.write("backflow.toml", &toml);
}

/// A run's (created, updated, deleted).
fn cud(r: &serde_json::Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    (
        r["created"].as_u64(),
        r["updated"].as_u64(),
        r["deleted"].as_u64(),
    )
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn every_behavior_is_one_delta_commit_per_run_with_its_run_id() {
    let Some(python) = python() else { return };
    let f = Fixture::new();
    project(
        &f,
        &[
            "upsert",
            "mirror",
            "update_only",
            "create_only",
            "append_only",
        ],
    );
    f.write("people.csv", V1);
    let mut run_ids = std::collections::BTreeMap::new();
    for b in [
        "upsert",
        "mirror",
        "update_only",
        "create_only",
        "append_only",
    ] {
        let r = run_json(&f, &["run", b, "--json"]);
        run_ids.insert(b, vec![r["run_id"].as_str().unwrap().to_string()]);
        if b == "update_only" {
            // Nothing to update in a table that does not exist: every row rejected, with why.
            assert_eq!(r["rejected"], 3, "{r}");
        } else {
            assert_eq!(r["created"], 3, "{r}");
        }
    }
    f.write("people.csv", V2);
    for b in [
        "upsert",
        "mirror",
        "update_only",
        "create_only",
        "append_only",
    ] {
        let r = run_json(&f, &["run", b, "--json"]);
        run_ids
            .get_mut(b)
            .unwrap()
            .push(r["run_id"].as_str().unwrap().to_string());
    }
    let lake = f.path().join("lake");
    let v1 = vec![(1, s("Ada")), (2, s("Bob")), (3, s("Cy"))];
    assert_eq!(
        pairs(&read(&python, &lake.join("upsert"))),
        vec![(1, s("Ada L.")), (2, s("Bob")), (3, s("Cy")), (4, s("Di"))]
    );
    assert_eq!(
        pairs(&read(&python, &lake.join("mirror"))),
        vec![(1, s("Ada L.")), (3, s("Cy")), (4, s("Di"))]
    );
    assert_eq!(
        pairs(&read(&python, &lake.join("create_only"))),
        vec![(1, s("Ada")), (2, s("Bob")), (3, s("Cy")), (4, s("Di"))]
    );
    let mut appended = v1.clone();
    appended.extend([(1, s("Ada L.")), (4, s("Di"))]);
    appended.sort();
    assert_eq!(pairs(&read(&python, &lake.join("append_only"))), appended);
    assert!(!lake.join("update_only").join("_delta_log").exists());

    // One commit per run, carrying the run's id and the state version as a transaction.
    for b in ["upsert", "mirror", "create_only", "append_only"] {
        let table = read(&python, &lake.join(b));
        let history = table["history"].as_array().unwrap();
        assert_eq!(history.len(), 2, "{b}: {history:?}");
        for (commit, run_id) in history.iter().rev().zip(&run_ids[b]) {
            assert_eq!(
                commit["backflow.run_id"].as_str(),
                Some(run_id.as_str()),
                "{b}: {commit}"
            );
            assert_eq!(commit["backflow.sync"].as_str(), Some(b), "{b}: {commit}");
        }
        let operation = history[0]["operation"].as_str().unwrap_or_default();
        let want = if b == "append_only" { "WRITE" } else { "MERGE" };
        assert_eq!(operation, want, "{b}: {}", history[0]);
    }

    // A run with nothing to send makes no commit.
    for b in ["upsert", "mirror", "create_only", "append_only"] {
        let r = run_json(&f, &["run", b, "--json"]);
        assert_eq!(
            (r["created"].as_u64(), r["updated"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
        assert_eq!(read(&python, &lake.join(b))["version"], 1, "{b}");
    }
}

#[test]
fn values_at_the_edges_of_their_types_arrive_exactly_in_a_delta_table() {
    let Some(python) = python() else { return };
    let f = Fixture::new();
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
    // The source: a Delta table the Python package wrote (see `delta.rs`).
    let source = f.path().join("lake/ledger");
    let Some(_) = super::delta::write(source.to_str().unwrap(), serde_json::json!({}), "create")
    else {
        return;
    };
    f.write(
        "backflow.toml",
        r#"
[sources.ledger]
type = "delta"
path = "lake/ledger"

[destinations.out]
type = "delta"
path = "out"

[syncs.ledger]
from = "ledger"
to = "out"
object = "ledger"
behavior = "mirror"
key = "id"
"#,
    );
    let r = run_json(&f, &["run", "--json"]);
    assert_eq!(r["created"], 2, "{r}");
    let table = read(&python, &f.path().join("out/ledger"));
    let rows = table["rows"].as_array().unwrap();
    let zoe = rows
        .iter()
        .find(|r| r["name"] == "Zoë ✓")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(zoe["id"], "-9223372036854775808");
    assert_eq!(zoe["amount"], "1234567890123456789012345678.0123456789");
    assert_eq!(zoe["at"], "9999-12-31 23:59:59.999999+00:00");
    assert_eq!(zoe["day"], "9999-12-31");
    // An update and a delete of the source reach the table as one MERGE.
    super::delta::write(source.to_str().unwrap(), serde_json::json!({}), "append").unwrap();
    let r = run_json(&f, &["run", "--json"]);
    assert_eq!(r["created"], 1, "{r}");
    let table = read(&python, &f.path().join("out/ledger"));
    let cy = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "3")
        .cloned()
        .unwrap();
    assert_eq!(cy["amount"], "-1E-10"); // Python's text for Decimal("-0.0000000001")
    assert_eq!(table["version"], 1);
}

/// A run killed at `point` (a failpoint of the cycle, in the `backflow` process), then a clean
/// run: the table is what the model says, no row appended twice, and a third run sends nothing.
#[cfg(feature = "failpoints")]
fn crash_at_every_step(behavior: &str, expected: Vec<(i64, String)>) {
    let Some(python) = python() else { return };
    const POINTS: [&str; 7] = [
        "after_intent",
        "after_diff",
        "after_batch",
        "before_finish",
        "after_destination_write",
        "before_commit",
        "after_commit",
    ];
    for point in POINTS {
        let f = Fixture::new();
        project(&f, &[behavior]);
        f.write("people.csv", V1);
        run_json(&f, &["run", "--json"]);
        f.write("people.csv", V2);
        let out = f
            .command(&["run", "--json"])
            .env("FAILPOINTS", format!("{point}=return({behavior})"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // (append-only writes no intents: its run passes `after_intent`.)
        if point != "after_intent" || behavior != "append_only" {
            assert!(!out.status.success(), "{point}: {stdout}");
            assert!(stdout.contains(point), "{point}: {stdout}");
        }
        run_json(&f, &["run", "--json"]);
        let table = read(&python, &f.path().join("lake").join(behavior));
        assert_eq!(pairs(&table), expected, "{behavior}, killed at {point}");
        let r = run_json(&f, &["run", "--json"]);
        assert_eq!(
            cud(&r),
            (Some(0), Some(0), Some(0)),
            "{behavior}, killed at {point}: {r}"
        );
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn a_mirror_into_delta_killed_at_every_step_ends_equal_to_the_model() {
    crash_at_every_step("mirror", vec![(1, s("Ada L.")), (3, s("Cy")), (4, s("Di"))]);
}

#[cfg(feature = "failpoints")]
#[test]
fn an_append_into_delta_killed_at_every_step_appends_each_row_once() {
    crash_at_every_step(
        "append_only",
        vec![
            (1, s("Ada")),
            (1, s("Ada L.")),
            (2, s("Bob")),
            (3, s("Cy")),
            (4, s("Di")),
        ],
    );
}

/// Column names as they are: upper case, spaces, SQL words, quotes.
#[test]
fn awkward_column_names_are_merged_as_they_are() {
    let Some(python) = python() else { return };
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.lake]
type = "delta"
path = "lake"

[syncs.people]
from = "people"
to = "lake"
object = "people"
behavior = "mirror"
key = "ID"
"#,
    );
    f.write(
        "people.csv",
        "ID,First Name,select,it's\n1,Ada,a,x\n2,Bob,b,y\n",
    );
    run_json(&f, &["run", "--json"]);
    f.write(
        "people.csv",
        "ID,First Name,select,it's\n1,Ada L.,a,x\n3,Cy,c,z\n",
    );
    let r = run_json(&f, &["run", "--json"]);
    assert_eq!(cud(&r), (Some(1), Some(1), Some(1)), "{r}");
    let table = read(&python, &f.path().join("lake/people"));
    let mut rows: Vec<String> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}",
                r["ID"].as_str().unwrap(),
                r["First Name"].as_str().unwrap(),
                r["select"].as_str().unwrap(),
                r["it's"].as_str().unwrap()
            )
        })
        .collect();
    rows.sort();
    assert_eq!(rows, vec!["1|Ada L.|a|x", "3|Cy|c|z"]);
}

/// A Delta table in an S3 bucket (moto), written with the environment's credentials: the
/// commits are conditional writes, and another reader sees the merge.
#[tokio::test]
async fn a_delta_table_in_an_s3_bucket_is_merged_into() {
    let Some(python) = python() else { return };
    let Some(s3) = S3Server::start("lake-out").await else {
        return;
    };
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.lake]
type = "delta"
path = "{}"

[syncs.mirror]
from = "people"
to = "lake"
object = "people"
behavior = "mirror"
key = "id"
"#,
            s3.url("tables")
        ),
    );
    let env = s3.env();
    let run = |f: &Fixture| super::delta::run_json(f, &["run", "--json"], &env);
    f.write("people.csv", V1);
    run(&f);
    f.write("people.csv", V2);
    let r = run(&f);
    assert_eq!(cud(&r), (Some(1), Some(1), Some(1)), "{r}");
    let mut opts = serde_json::Map::new();
    for (k, v) in s3.env() {
        opts.insert(k.into(), v.into());
    }
    opts.insert("AWS_ALLOW_HTTP".into(), "true".into());
    let table = read_at(&python, &s3.url("tables/people"), Some(opts.into()));
    assert_eq!(
        pairs(&table),
        vec![(1, s("Ada L.")), (3, s("Cy")), (4, s("Di"))]
    );
    assert_eq!(table["version"], 1);
}

/// A sync without state compares with the table's keys: records already there are updates,
/// one the model lacks is left alone (unowned) until `state adopt` takes the table over.
#[test]
fn a_mirror_that_lost_its_state_reads_the_tables_keys_and_adopts_them() {
    let Some(python) = python() else { return };
    let f = Fixture::new();
    project(&f, &["mirror"]);
    f.write("people.csv", V1);
    run_json(&f, &["run", "--json"]);
    std::fs::remove_dir_all(f.path().join(".backflow")).unwrap();
    f.write("people.csv", V2);
    let r = run_json(&f, &["run", "--json"]);
    assert_eq!(
        (
            r["created"].as_u64(),
            r["updated"].as_u64(),
            r["deleted"].as_u64(),
            r["unowned"].as_u64()
        ),
        (Some(1), Some(2), Some(0), Some(1)),
        "{r}"
    );
    let (code, out, err) = f.cli(&["state", "adopt", "mirror"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = run_json(&f, &["run", "--json"]);
    assert_eq!(r["deleted"].as_u64(), Some(1), "{r}");
    assert_eq!(
        pairs(&read(&python, &f.path().join("lake/mirror"))),
        vec![(1, s("Ada L.")), (3, s("Cy")), (4, s("Di"))]
    );
}

/// A field whose values the table's column would hold as another type (found by a hostile
/// test: an append cast the text '0' and '1' into a boolean column) is refused before anything
/// is written, naming the field and both types. A table folder under a file is refused too.
#[test]
fn a_field_of_another_type_than_the_column_is_refused_before_writing() {
    let Some(python) = python() else { return };
    let f = Fixture::new();
    project(&f, &["mirror", "append_only"]);
    f.write("people.csv", "id,name\n1,true\n2,false\n");
    run_json(&f, &["run", "mirror", "--json"]);
    run_json(&f, &["run", "append_only", "--json"]);
    f.write("people.csv", "id,name\n1,0\n2,1\n");
    for sync in ["mirror", "append_only"] {
        let (code, out, err) = f.cli(&["run", sync, "--json"]);
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains(r#"field \"name\" is Int64 but the table's column is Boolean"#),
            "{out}\n{err}"
        );
        let rows = read(&python, &f.path().join("lake").join(sync))["rows"].clone();
        assert_eq!(rows.as_array().unwrap().len(), 2, "{sync}: {rows}");
    }

    std::fs::write(f.path().join("blocked"), "a file").unwrap();
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.lake]
type = "delta"
path = "blocked"

[syncs.s]
from = "people"
to = "lake"
object = "t"
behavior = "upsert"
key = "id"
"#,
    );
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is not a folder"), "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}
