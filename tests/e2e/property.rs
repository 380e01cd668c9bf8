//! Property test: for random sequences of model versions, the destination after each run
//! equals what a naive in-memory model of the behaviour predicts.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::common::*;

#[derive(Debug, Clone, Copy)]
enum B {
    Upsert,
    UpdateOnly,
    CreateOnly,
    Mirror,
    AppendOnly,
    Delete,
}

impl B {
    fn name(self) -> &'static str {
        match self {
            B::Upsert => "upsert",
            B::UpdateOnly => "update-only",
            B::CreateOnly => "create-only",
            B::Mirror => "mirror",
            B::AppendOnly => "append-only",
            B::Delete => "delete",
        }
    }
}

/// A model version: key → value (keys unique, values from a small alphabet).
type Version = BTreeMap<u8, String>;

fn version() -> impl Strategy<Value = Version> {
    proptest::collection::btree_map(0u8..8, "[abc]{1,2}", 0..8)
}

/// The naive model: what the destination holds, as sorted (key, value) rows.
struct Naive {
    behavior: B,
    dest: Vec<(u8, String)>,
    /// Last value sent per key (append-only's "changed" test).
    last: BTreeMap<u8, String>,
}

impl Naive {
    fn new(behavior: B, seed: &[(u8, String)]) -> Naive {
        Naive {
            behavior,
            dest: seed.to_vec(),
            last: BTreeMap::new(),
        }
    }

    fn get(&self, k: u8) -> Option<usize> {
        self.dest.iter().position(|(x, _)| *x == k)
    }

    fn apply(&mut self, v: &Version) {
        match self.behavior {
            B::Upsert => {
                for (k, val) in v {
                    match self.get(*k) {
                        Some(i) => self.dest[i].1 = val.clone(),
                        None => self.dest.push((*k, val.clone())),
                    }
                }
            }
            B::Mirror => self.dest = v.iter().map(|(k, x)| (*k, x.clone())).collect(),
            B::UpdateOnly => {
                for (k, val) in v {
                    if let Some(i) = self.get(*k) {
                        self.dest[i].1 = val.clone();
                    }
                }
            }
            B::CreateOnly => {
                for (k, val) in v {
                    if self.get(*k).is_none() {
                        self.dest.push((*k, val.clone()));
                    }
                }
            }
            B::AppendOnly => {
                for (k, val) in v {
                    if self.last.get(k) != Some(val) {
                        self.dest.push((*k, val.clone()));
                        self.last.insert(*k, val.clone());
                    }
                }
            }
            B::Delete => self.dest.retain(|(k, _)| !v.contains_key(k)),
        }
        self.dest.sort();
    }
}

fn csv(v: &Version) -> String {
    let mut s = String::from("id,val\n");
    for (k, x) in v {
        s.push_str(&format!("{k},{x}\n"));
    }
    s
}

async fn check(behavior: B, versions: Vec<Version>) -> Result<(), TestCaseError> {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.model]
type = "csv"
path = "model.csv"

[destinations.db]
type = "sqlite"
path = "db.sqlite"

[syncs.p]
from = "model"
to = "db"
object = "t"
behavior = "{}"
key = "id"
"#,
            behavior.name()
        ),
    );
    // The destination starts with some records of its own (update-only and delete act on them).
    let seed: Vec<(u8, String)> = match behavior {
        B::UpdateOnly | B::Delete | B::CreateOnly | B::Upsert => {
            vec![(1, "seed".into()), (3, "seed".into()), (6, "seed".into())]
        }
        _ => vec![],
    };
    if !seed.is_empty() {
        let conn = rusqlite::Connection::open(f.path().join("db.sqlite")).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, val TEXT)")
            .unwrap();
        for (k, v) in &seed {
            conn.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![k, v])
                .unwrap();
        }
    }
    let mut naive = Naive::new(behavior, &seed);
    naive.dest.sort();
    for v in &versions {
        // Column types must stay stable: an empty model still has an `id` integer column.
        f.write("model.csv", &csv(v));
        let r = f.run_with(&["p"], Default::default()).await.remove(0);
        prop_assert!(r.error.is_none(), "{:?}", r.error);
        naive.apply(v);
        let got: Vec<(u8, String)> = {
            let mut rows: Vec<(u8, String)> = f
                .sqlite("db.sqlite", "t")
                .iter()
                .map(|m| (m["id"].parse().unwrap(), m["val"].clone()))
                .collect();
            rows.sort();
            rows
        };
        prop_assert_eq!(
            &got,
            &naive.dest,
            "behavior {:?} after version {:?}",
            behavior,
            v
        );
    }
    Ok(())
}

fn behavior() -> impl Strategy<Value = B> {
    prop_oneof![
        Just(B::Upsert),
        Just(B::UpdateOnly),
        Just(B::CreateOnly),
        Just(B::Mirror),
        Just(B::AppendOnly),
        Just(B::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn destination_matches_the_naive_model(b in behavior(), versions in proptest::collection::vec(version(), 1..5)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(b, versions))?;
    }
}
