//! A Delta table's change data feed as a sync's incremental read: a mirror that reads only the
//! changes ends exactly where one that diffs the whole table does, over rounds of random
//! merges, updates, deletes, appends, overwrites and compactions written by the `deltalake`
//! Python package; and the delete guard counts a feed's deletes against every record in sync.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use proptest::prelude::*;

use crate::common::{Fixture, sqlite_rows};

/// A deltalake writer that takes one command per line (JSON) and prints the table's version
/// after it, so that twenty commits cost one Python start.
const SERVER: &str = r#"
import sys, json
import pyarrow as pa
from deltalake import write_deltalake, DeltaTable
path = sys.argv[1]
schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("n", pa.int64())])
def table(rows):
    return pa.table({"id": [r[0] for r in rows], "name": [r[1] for r in rows],
                     "n": [r[2] for r in rows]}, schema=schema)
for line in sys.stdin:
    c = json.loads(line)
    op = c["op"]
    if op == "create":
        write_deltalake(path, table(c["rows"]), configuration=c.get("configuration"))
    elif op == "merge":
        (DeltaTable(path).merge(table(c["rows"]), "t.id = s.id", source_alias="s", target_alias="t")
            .when_matched_update_all().when_not_matched_insert_all().execute())
    elif op == "delete":
        DeltaTable(path).delete("id IN (%s)" % ",".join(str(i) for i in c["ids"]))
    elif op == "update":
        DeltaTable(path).update(updates={"n": "n + 1"}, predicate="id %% 3 = %d" % c["rest"])
    elif op == "delete_where":
        DeltaTable(path).delete(c["predicate"])
    elif op == "rekey":
        DeltaTable(path).update(updates={"id": str(c["to"])}, predicate="id = %d" % c["from"])
    elif op == "vacuum":
        dt = DeltaTable(path)
        dt.optimize.compact()
        dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    elif op == "append":
        write_deltalake(path, table(c["rows"]), mode="append")
    elif op == "overwrite":
        write_deltalake(path, table(c["rows"]), mode="overwrite")
    elif op == "compact":
        DeltaTable(path).optimize.compact()
    elif op == "properties":
        DeltaTable(path).alter.set_table_properties(c["properties"])
    print(DeltaTable(path).version(), flush=True)
"#;

/// The writer process.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Writer {
    /// None when there is no deltalake package (skipped; a failure under CI=true).
    fn start(path: &std::path::Path) -> Option<Writer> {
        let python = super::delta::python()?;
        let mut child = Command::new(&python)
            .args(["-c", SERVER, path.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Some(Writer {
            child,
            stdin,
            stdout,
        })
    }

    /// Send one command; the table's version after it.
    fn send(&mut self, command: serde_json::Value) -> u64 {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("the writer failed on {command} (see its stderr)"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Row = (Option<String>, i64);

/// One round of changes to the table.
#[derive(Debug, Clone)]
enum Op {
    Merge(Vec<(i64, Row)>),
    Delete(Vec<i64>),
    /// `n + 1` where `id % 3 = rest`.
    Update(i64),
    /// An update that changes a key (to a new one).
    Rekey(i64),
    Append(Vec<Row>),
    Overwrite(Vec<(i64, Row)>),
    Compact,
}

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::of(prop::sample::select(vec!["a", "", "Zoë ✓", "b c", "a'b"])),
        prop_oneof![any::<i64>(), -3i64..3],
    )
        .prop_map(|(name, n)| (name.map(str::to_string), n))
}

fn keyed_rows(min: usize, max: usize) -> impl Strategy<Value = Vec<(i64, Row)>> {
    proptest::collection::btree_map(0i64..40, row(), min..max).prop_map(|m| m.into_iter().collect())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => keyed_rows(1, 8).prop_map(Op::Merge),
        3 => proptest::collection::btree_set(0i64..40, 1..6).prop_map(|s| Op::Delete(s.into_iter().collect())),
        2 => (0i64..3).prop_map(Op::Update),
        2 => (0i64..40).prop_map(Op::Rekey),
        2 => proptest::collection::vec(row(), 1..4).prop_map(Op::Append),
        1 => keyed_rows(0, 30).prop_map(Op::Overwrite),
        1 => Just(Op::Compact),
    ]
}

fn json_rows(rows: &[(i64, Row)]) -> serde_json::Value {
    rows.iter()
        .map(|(id, (name, n))| serde_json::json!([id, name, n]))
        .collect()
}

/// The table as the naive model has it after `op` (appended rows take ids from 1000 up).
fn apply(model: &mut BTreeMap<i64, Row>, op: &Op, next_id: &mut i64) -> serde_json::Value {
    match op {
        Op::Merge(rows) => {
            model.extend(rows.iter().cloned());
            serde_json::json!({"op": "merge", "rows": json_rows(rows)})
        }
        Op::Delete(ids) => {
            for id in ids {
                model.remove(id);
            }
            serde_json::json!({"op": "delete", "ids": ids})
        }
        Op::Update(rest) => {
            for (id, (_, n)) in model.iter_mut() {
                if id % 3 == *rest {
                    *n = n.wrapping_add(1);
                }
            }
            serde_json::json!({"op": "update", "rest": rest})
        }
        Op::Rekey(from) => {
            *next_id += 1;
            if let Some(row) = model.remove(from) {
                model.insert(*next_id, row);
            }
            serde_json::json!({"op": "rekey", "from": from, "to": next_id})
        }
        Op::Append(rows) => {
            let keyed: Vec<(i64, Row)> = rows
                .iter()
                .map(|r| {
                    *next_id += 1;
                    (*next_id, r.clone())
                })
                .collect();
            model.extend(keyed.iter().cloned());
            serde_json::json!({"op": "append", "rows": json_rows(&keyed)})
        }
        Op::Overwrite(rows) => {
            *model = rows.iter().cloned().collect();
            serde_json::json!({"op": "overwrite", "rows": json_rows(rows)})
        }
        Op::Compact => serde_json::json!({"op": "compact"}),
    }
}

const PROJECT: &str = r#"
[sources.feed]
type = "delta"
path = "lake/t"

[sources.full]
type = "delta"
path = "lake/t"
change_feed = false

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.feed]
from = "feed"
to = "app"
object = "by_feed"
behavior = "mirror"
key = "id"
max_deletes = "100%"

[syncs.full]
from = "full"
to = "app"
object = "by_diff"
behavior = "mirror"
key = "id"
max_deletes = "100%"
"#;

/// A project mirroring the Delta table `lake/t` into SQLite (sync and object `t`, key `id`),
/// with `extra` after the sync.
fn mirror_of_t(f: &Fixture, extra: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.t]
type = "delta"
path = "lake/t"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.t]
from = "t"
to = "app"
object = "t"
behavior = "mirror"
key = "id"
{extra}"#
        ),
    );
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
}

fn run(f: &Fixture, sync: &str) -> serde_json::Value {
    super::delta::run_json(f, &["run", sync, "--json"], &[])
}

fn destination(f: &Fixture, object: &str) -> BTreeMap<i64, (String, String)> {
    sqlite_rows(&f.path().join("out/app.db"), object)
        .into_iter()
        .map(|r| {
            (
                r["id"].parse().unwrap(),
                (r["name"].clone(), r["n"].clone()),
            )
        })
        .collect()
}

fn expected(model: &BTreeMap<i64, Row>) -> BTreeMap<i64, (String, String)> {
    model
        .iter()
        .map(|(id, (name, n))| {
            (
                *id,
                (name.clone().unwrap_or_else(|| "NULL".into()), n.to_string()),
            )
        })
        .collect()
}

fn rounds(initial: Vec<(i64, Row)>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
    let Some(mut writer) = Writer::start(&f.path().join("lake/t")) else {
        return Ok(());
    };
    let mut model: BTreeMap<i64, Row> = initial.iter().cloned().collect();
    let mut next_id = 1000;
    writer.send(serde_json::json!({
        "op": "create",
        "rows": json_rows(&initial),
        "configuration": {"delta.enableChangeDataFeed": "true"},
    }));
    let mut changes_read = 0u64;
    let mut whole_reads = 0u64;
    for (round, op) in std::iter::once(None)
        .chain(ops.iter().map(Some))
        .enumerate()
    {
        if let Some(op) = op {
            writer.send(apply(&mut model, op, &mut next_id));
        }
        let by_feed = run(&f, "feed");
        let by_diff = run(&f, "full");
        let want = expected(&model);
        prop_assert_eq!(
            &destination(&f, "by_diff"),
            &want,
            "the full diff, round {} ({:?})",
            round,
            op
        );
        prop_assert_eq!(
            &destination(&f, "by_feed"),
            &want,
            "the change feed, round {} ({:?})",
            round,
            op
        );
        for k in ["created", "updated", "deleted", "invalid"] {
            prop_assert_eq!(
                &by_feed[k],
                &by_diff[k],
                "{} in round {} ({:?})",
                k,
                round,
                op
            );
        }
        // The feed's run read only what changed; the full one every row.
        prop_assert_eq!(by_diff["read"].as_u64(), Some(model.len() as u64));
        let read = by_feed["read"].as_u64().unwrap_or(0);
        if round > 0 {
            changes_read += read;
            whole_reads += model.len() as u64;
            if !matches!(op, Some(Op::Overwrite(_)) | Some(Op::Update(_))) {
                let touched = match op {
                    Some(Op::Merge(r)) => r.len(),
                    Some(Op::Append(r)) => r.len(),
                    Some(Op::Rekey(_)) => 1,
                    _ => 0,
                } as u64;
                prop_assert!(
                    read <= touched,
                    "round {} read {} rows for {:?}",
                    round,
                    read,
                    op
                );
            }
        }
    }
    prop_assert!(
        whole_reads == 0 || changes_read < whole_reads,
        "the feed read {changes_read} rows where the full diff read {whole_reads}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, failure_persistence: None, ..ProptestConfig::default() })]

    /// Twenty rounds of random changes: the mirror that reads the change feed and the one that
    /// diffs the whole table leave the same destination, equal to the naive model, with the
    /// same counts of creates, updates and deletes.
    #[test]
    fn a_mirror_reading_the_change_feed_ends_like_a_full_diff(
        initial in keyed_rows(0, 30),
        ops in proptest::collection::vec(op(), 20),
    ) {
        rounds(initial, ops)?;
    }
}

/// The delete guard of a mirror reading a feed: the deletes are the feed's, the records in sync
/// all of the state's (not only the keys the run touched). A table without the feed is read
/// whole.
#[test]
fn the_delete_guard_counts_a_feeds_deletes_against_every_record_in_sync() {
    let f = Fixture::new();
    mirror_of_t(&f, "");
    let Some(mut writer) = Writer::start(&f.path().join("lake/t")) else {
        return;
    };
    let rows: Vec<(i64, Row)> = (0..10).map(|i| (i, (Some(format!("r{i}")), i))).collect();
    // Created without the feed: the second run reads the whole table.
    writer.send(serde_json::json!({"op": "create", "rows": json_rows(&rows)}));
    assert_eq!(run(&f, "t")["created"], 10);
    writer.send(serde_json::json!({"op": "delete", "ids": [0]}));
    let r = run(&f, "t");
    assert_eq!(
        (r["deleted"].as_u64(), r["read"].as_u64()),
        (Some(1), Some(9)),
        "{r}"
    );

    // The feed turned on, then one delete read from it: 1 of 9 is within the default half.
    writer.send(serde_json::json!({"op": "properties", "properties": {"delta.enableChangeDataFeed": "true"}}));
    writer.send(serde_json::json!({"op": "delete", "ids": [1]}));
    let r = run(&f, "t");
    assert_eq!(
        (r["deleted"].as_u64(), r["read"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );

    // Six of eight: over the limit, refused, nothing deleted.
    writer.send(serde_json::json!({"op": "delete", "ids": [2, 3, 4, 5, 6, 7]}));
    let (code, out, err) = f.cli(&["run", "t", "--json"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        (out.clone() + &err).contains("would delete 6 of the 8 records"),
        "{out}\n{err}"
    );
    assert_eq!(sqlite_rows(&f.path().join("out/app.db"), "t").len(), 8);
    let (code, out, err) = f.cli(&["run", "t", "--allow-deletes", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let left: Vec<String> = sqlite_rows(&f.path().join("out/app.db"), "t")
        .into_iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(left, vec!["8", "9"]);
}

/// A table replaced by another at the same path (removed and written again) is not read from
/// its feed, whatever its versions: the new table's versions say nothing about the old one's.
#[test]
fn a_table_replaced_under_the_same_path_is_read_whole() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
    let rows = |ids: std::ops::Range<i64>| -> Vec<(i64, Row)> {
        ids.map(|i| (i, (Some(format!("r{i}")), i))).collect()
    };
    let with_feed = serde_json::json!({"delta.enableChangeDataFeed": "true"});
    {
        let Some(mut writer) = Writer::start(&f.path().join("lake/t")) else {
            return;
        };
        writer.send(serde_json::json!({"op": "create", "rows": json_rows(&rows(0..5)), "configuration": with_feed}));
    }
    assert_eq!(run(&f, "feed")["created"], 5);
    std::fs::remove_dir_all(f.path().join("lake/t")).unwrap();
    let mut writer = Writer::start(&f.path().join("lake/t")).unwrap();
    writer.send(serde_json::json!({"op": "create", "rows": json_rows(&rows(10..13)), "configuration": with_feed}));
    writer.send(serde_json::json!({"op": "append", "rows": [[13, "r13", 13]]}));
    writer.send(serde_json::json!({"op": "append", "rows": [[14, "r14", 14]]}));
    let r = run(&f, "feed");
    assert_eq!(
        (
            r["created"].as_u64(),
            r["deleted"].as_u64(),
            r["read"].as_u64()
        ),
        (Some(5), Some(5), Some(5)),
        "{r}"
    );
    let ids: Vec<i64> = destination(&f, "by_feed").into_keys().collect();
    assert_eq!(ids, vec![10, 11, 12, 13, 14]);
}

/// Found by a hostile test: a key written twice (a second row appended under an existing key)
/// and the second row deleted again. The feed alone cannot tell what is left, so those runs
/// read the whole table: the duplicate is reported as invalid rows, and the surviving row
/// stays in the destination. And a vacuum that removed files the feed needs: the run reads the
/// whole table instead of failing on every run.
#[test]
fn a_key_written_twice_and_a_vacuumed_feed_are_read_whole() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    std::fs::create_dir_all(f.path().join("lake")).unwrap();
    let Some(mut writer) = Writer::start(&f.path().join("lake/t")) else {
        return;
    };
    let rows: Vec<(i64, Row)> = (1..=10).map(|i| (i, (Some(format!("a{i}")), i))).collect();
    writer.send(serde_json::json!({"op": "create", "rows": json_rows(&rows),
        "configuration": {"delta.enableChangeDataFeed": "true"}}));
    let both = |f: &Fixture| {
        let (feed, full) = (run(f, "feed"), run(f, "full"));
        assert_eq!(
            destination(f, "by_feed"),
            destination(f, "by_diff"),
            "{feed}\n{full}"
        );
        (feed, full)
    };
    both(&f);
    // Key 5 twice: both syncs report two invalid rows and keep what they had.
    writer.send(serde_json::json!({"op": "append", "rows": [[5, "dup", 0]]}));
    let (feed, _) = both(&f);
    assert_eq!(feed["invalid"], 2, "{feed}");
    assert!(
        feed["warnings"].to_string().contains("more than one row"),
        "{feed}"
    );
    assert_eq!(destination(&f, "by_feed")[&5].0, "a5");
    // The second row deleted: key 5 is whole again, and stays.
    writer.send(serde_json::json!({"op": "delete_where", "predicate": "name = 'dup'"}));
    let (feed, _) = both(&f);
    assert_eq!(destination(&f, "by_feed")[&5].0, "a5", "{feed}");
    // A key changed by an update: the old key is deleted, the new one created.
    writer.send(serde_json::json!({"op": "rekey", "from": 1, "to": 100}));
    let (feed, _) = both(&f);
    assert_eq!(
        (
            feed["created"].as_u64(),
            feed["deleted"].as_u64(),
            feed["read"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{feed}"
    );
    // Files the feed needs vacuumed away: a whole read, not a failure.
    writer.send(serde_json::json!({"op": "append", "rows": [[11, "n", 11]]}));
    writer.send(serde_json::json!({"op": "append", "rows": [[12, "n", 12]]}));
    writer.send(serde_json::json!({"op": "vacuum"}));
    let (feed, _) = both(&f);
    assert_eq!(feed["created"], 2, "{feed}");
    assert!(
        feed["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("the whole table was read")),
        "{feed}"
    );
    let ids: Vec<i64> = destination(&f, "by_feed").into_keys().collect();
    assert_eq!(ids, vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 100]);
}

/// Found by a hostile test: a sync that maps only the key (here by excluding the other
/// columns), whose feed came from several change files, failed to plan. And a test run for
/// some keys is followed by one whole read.
#[test]
fn a_sync_of_the_key_alone_reads_the_feed() {
    let f = Fixture::new();
    mirror_of_t(&f, "[syncs.t.fields]\nexclude = [\"name\", \"n\"]\n");
    let Some(mut writer) = Writer::start(&f.path().join("lake/t")) else {
        return;
    };
    let rows: Vec<(i64, Row)> = (1..=6).map(|i| (i, (Some(format!("r{i}")), i))).collect();
    writer.send(serde_json::json!({"op": "create", "rows": json_rows(&rows),
        "configuration": {"delta.enableChangeDataFeed": "true"}}));
    assert_eq!(run(&f, "t")["created"], 6);
    writer.send(serde_json::json!({"op": "update", "rest": 1}));
    writer.send(serde_json::json!({"op": "delete", "ids": [2]}));
    let r = run(&f, "t");
    assert_eq!(
        (
            r["created"].as_u64(),
            r["updated"].as_u64(),
            r["deleted"].as_u64()
        ),
        (Some(0), Some(0), Some(1)),
        "{r}"
    );
    assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    // A test run for a key; the next run reads the whole table once, saying why.
    let (code, out, err) = f.cli(&["run", "t", "--keys", "3", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = run(&f, "t");
    assert!(
        r["warnings"].to_string().contains("read part of the table"),
        "{r}"
    );
    assert_eq!(r["read"], 5, "{r}");
    writer.send(serde_json::json!({"op": "delete", "ids": [3]}));
    let r = run(&f, "t");
    assert_eq!(
        (r["deleted"].as_u64(), r["read"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
}
