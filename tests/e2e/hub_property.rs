//! Property test: on random small inputs over several cycles, the hub's golden records and ID
//! map equal those of a naive model of attach + authority + merge written with loops and maps
//! (no DataFusion), following the rules the documentation states.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;

use crate::common::Fixture;

const FIELDS: [&str; 4] = ["a", "b", "c", "d"];
const SOURCES: [&str; 2] = ["s0", "s1"];

const CONFIG: &str = r#"
[sources.s0]
type = "parquet"
path = "s0.parquet"

[sources.s1]
type = "parquet"
path = "s1.parquet"

[entities.thing]
fields = { a = "text", b = "text", c = "text", d = "text" }
match = [["a"], ["b"]]

[entities.thing.authority]
sources = ["s0", "s1"]
fields.b = { rule = "recent" }
fields.c = { rule = "first_non_null", sources = ["s1", "s0"] }
fields.d = { null_overwrites = true }

[entities.thing.merge]
winner = "{winner}"
policy = "fill"
fields = { b = "override", c = "keep" }

[entities.thing.sources.s0]
from = "s0"
id = "id"
watermark = "updated_at"
fields = { a = "a", b = "b", c = "c", d = "d" }

[entities.thing.sources.s1]
from = "s1"
id = "id"
watermark = "updated_at"
fields = { a = "a", b = "b", c = "c" }
"#;

type Values = [Option<String>; 4];

/// Whether source `s` maps field `f` (s1 has no `d`).
fn maps(s: usize, f: usize) -> bool {
    s == 0 || f != 3
}

#[derive(Clone, Debug)]
struct SourceRecord {
    values: Values,
    /// The watermark (µs).
    wm: i64,
}

#[derive(Clone, Debug)]
struct Contribution {
    golden: i64,
    values: Values,
    at: [i64; 4],
}

#[derive(Clone, Debug)]
struct Golden {
    values: Values,
    sources: [Option<usize>; 4],
    created: u64,
    /// The version of the last change.
    seq: u64,
    merged_into: Option<i64>,
}

/// The naive hub.
#[derive(Default)]
struct Model {
    winner: &'static str,
    golden: BTreeMap<i64, Golden>,
    contributions: BTreeMap<(usize, String), Contribution>,
    next_id: i64,
    version: u64,
    position: [Option<i64>; 2],
}

fn norm(v: &str) -> String {
    v.trim_matches(' ').to_lowercase()
}

/// The text key the engine groups new records by: length-prefixed parts.
fn key(prefix: &str, parts: &[String]) -> String {
    let mut k = prefix.to_string();
    for p in parts {
        k.push_str(&format!("|{}:{p}", p.chars().count()));
    }
    k
}

/// Field `f`'s authority: (recent?, source order, NULLs overwrite?).
fn authority(f: usize) -> (bool, Vec<usize>, bool) {
    match f {
        1 => (true, vec![0, 1], false),
        2 => (false, vec![1, 0], false),
        3 => (false, vec![0, 1], true),
        _ => (false, vec![0, 1], false),
    }
}

impl Model {
    /// One cycle over the sources' current records.
    fn cycle(&mut self, sources: &[BTreeMap<String, SourceRecord>; 2]) {
        let version = self.version + 1;
        // read: at or past each source's position (ties read again)
        let mut incoming: Vec<(usize, String, SourceRecord)> = Vec::new();
        let mut moved = false;
        for (s, records) in sources.iter().enumerate() {
            let read: Vec<_> = records
                .iter()
                .filter(|(_, r)| self.position[s].is_none_or(|p| r.wm >= p))
                .collect();
            if let Some(max) = read.iter().map(|(_, r)| r.wm).max() {
                moved |= self.position[s] != Some(max);
                self.position[s] = Some(max);
            }
            incoming.extend(read.into_iter().map(|(id, r)| (s, id.clone(), r.clone())));
        }
        let old_golden = self.golden.clone();
        let live_old: Vec<(&i64, &Golden)> = old_golden
            .iter()
            .filter(|(_, g)| g.merged_into.is_none())
            .collect();

        // attach
        let mut attached: BTreeMap<(usize, String), i64> = BTreeMap::new();
        let mut groups: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut group_of: BTreeMap<(usize, String), String> = BTreeMap::new();
        for (s, id, r) in &incoming {
            if let Some(c) = self.contributions.get(&(*s, id.clone())) {
                attached.insert((*s, id.clone()), c.golden);
                continue;
            }
            let mut found = None;
            for f in [0, 1] {
                if let Some(v) = &r.values[f] {
                    found = live_old
                        .iter()
                        .filter(|(_, g)| g.values[f].as_deref().map(norm) == Some(norm(v)))
                        .map(|(id, _)| **id)
                        .min();
                    if found.is_some() {
                        break;
                    }
                }
            }
            match found {
                Some(g) => {
                    attached.insert((*s, id.clone()), g);
                }
                None => {
                    let k = match (&r.values[0], &r.values[1]) {
                        (Some(a), _) => key("rule0", &[norm(a)]),
                        (None, Some(b)) => key("rule1", &[norm(b)]),
                        _ => key("record", &[SOURCES[*s].to_string(), id.clone()]),
                    };
                    let e = groups.entry(k.clone()).or_insert((*s, id.clone()));
                    e.0 = e.0.min(*s);
                    if id < &e.1 {
                        e.1 = id.clone();
                    }
                    group_of.insert((*s, id.clone()), k);
                }
            }
        }
        let mut order: Vec<(&String, &(usize, String))> = groups.iter().collect();
        order.sort_by(|x, y| (x.1, x.0).cmp(&(y.1, y.0)));
        let first_new = self.next_id.max(1);
        let new_ids: BTreeMap<&String, i64> = order
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, first_new + i as i64))
            .collect();
        for (rec, k) in &group_of {
            attached.insert(rec.clone(), new_ids[k]);
        }
        if !new_ids.is_empty() {
            self.next_id = first_new + new_ids.len() as i64;
        }

        // contributions, and which fields of which golden records changed
        let mut touched: BTreeMap<i64, [bool; 4]> = BTreeMap::new();
        let mut changed = 0;
        let mut now = self.contributions.clone();
        for (s, id, r) in &incoming {
            let g = attached[&(*s, id.clone())];
            let old = self.contributions.get(&(*s, id.clone()));
            let mut values: Values = Default::default();
            let mut at = [0i64; 4];
            let t = touched.entry(g).or_default();
            let mut differs = old.is_none_or(|o| o.golden != g);
            for f in 0..4 {
                if !maps(*s, f) {
                    continue;
                }
                values[f] = r.values[f].clone();
                let field_changed = old.is_none_or(|o| o.values[f] != values[f]);
                at[f] = match old {
                    Some(o) if !field_changed => o.at[f],
                    _ => r.wm,
                };
                if field_changed || old.is_none_or(|o| o.golden != g) {
                    t[f] = true;
                }
                differs |= field_changed;
            }
            changed += usize::from(differs);
            now.insert(
                (*s, id.clone()),
                Contribution {
                    golden: g,
                    values,
                    at,
                },
            );
        }
        if !moved && changed == 0 {
            return;
        }
        self.version = version;

        // authority
        let mut over: BTreeMap<i64, Golden> = BTreeMap::new();
        for (g, t) in &touched {
            let old = old_golden.get(g);
            let mut row = old.cloned().unwrap_or(Golden {
                values: Default::default(),
                sources: [None; 4],
                created: version,
                seq: version,
                merged_into: None,
            });
            #[allow(clippy::needless_range_loop)]
            for f in 0..4 {
                if old.is_some() && !t[f] {
                    continue;
                }
                let (recent, order, overwrite) = authority(f);
                let order: Vec<usize> = order.into_iter().filter(|s| maps(*s, f)).collect();
                let rank = |s: usize| order.iter().position(|x| *x == s).unwrap_or(order.len());
                let mut cands: Vec<(&(usize, String), &Contribution)> = now
                    .iter()
                    .filter(|(k, c)| c.golden == *g && order.contains(&k.0))
                    .filter(|(_, c)| overwrite || c.values[f].is_some())
                    .collect();
                cands.sort_by(|(ka, ca), (kb, cb)| {
                    let by_rank = rank(ka.0).cmp(&rank(kb.0));
                    let by_time = cb.at[f].cmp(&ca.at[f]);
                    let first = if recent {
                        by_time.then(by_rank)
                    } else {
                        by_rank.then(by_time)
                    };
                    first.then(ka.1.cmp(&kb.1))
                });
                let pick = cands.first().map(|(k, c)| (c.values[f].clone(), k.0));
                let (value, source) = match pick {
                    Some((v, s)) => (v, Some(s)),
                    None => (None, None),
                };
                // A NULL may overwrite only where the field says so.
                if overwrite || value.is_some() {
                    row.values[f] = value;
                    row.sources[f] = source;
                }
            }
            if old.is_some_and(|o| o.values != row.values) {
                row.seq = version;
            }
            over.insert(*g, row);
        }

        // merge
        let mut remap: BTreeMap<i64, i64> = BTreeMap::new();
        for f in [0, 1] {
            let mut live: BTreeMap<i64, Golden> = old_golden.clone();
            live.extend(over.clone());
            live.retain(|_, g| g.merged_into.is_none());
            let keyed = |g: &Golden| g.values[f].as_deref().map(norm);
            let dirty: BTreeSet<String> = over
                .values()
                .filter(|g| g.merged_into.is_none())
                .filter_map(&keyed)
                .collect();
            for k in dirty {
                let mut members: Vec<(i64, Golden)> = live
                    .iter()
                    .filter(|(_, g)| keyed(g).as_deref() == Some(k.as_str()))
                    .map(|(id, g)| (*id, g.clone()))
                    .collect();
                if members.len() < 2 {
                    continue;
                }
                // The best source (in the default priority order) linked to a golden record.
                let best = |g: i64| {
                    now.iter()
                        .filter(|(_, c)| *remap.get(&c.golden).unwrap_or(&c.golden) == g)
                        .map(|(k, _)| k.0)
                        .min()
                        .unwrap_or(usize::MAX)
                };
                match self.winner {
                    "recent" => members.sort_by_key(|(id, g)| (std::cmp::Reverse(g.seq), *id)),
                    "complete" => members.sort_by_key(|(id, g)| {
                        let filled = g.values.iter().filter(|v| v.is_some()).count();
                        (std::cmp::Reverse(filled), g.created, *id)
                    }),
                    "priority" => members.sort_by_key(|(id, g)| (best(*id), g.created, *id)),
                    _ => members.sort_by_key(|(id, g)| (g.created, *id)),
                }
                let (winner_id, winner) = members[0].clone();
                let mut merged = winner.clone();
                merged.seq = version;
                for field in 0..4 {
                    let pick = |order: Vec<&(i64, Golden)>| {
                        order
                            .into_iter()
                            .find(|(_, g)| g.values[field].is_some())
                            .map(|(_, g)| (g.values[field].clone(), g.sources[field]))
                    };
                    let (value, source) = match field {
                        // b: override — the losers first
                        1 => pick(members[1..].iter().chain(members[..1].iter()).collect()),
                        // c: keep
                        2 => Some((winner.values[2].clone(), winner.sources[2])),
                        // a, d: fill
                        _ => pick(members.iter().collect()),
                    }
                    .unwrap_or((None, None));
                    merged.values[field] = value;
                    merged.sources[field] = source;
                }
                over.insert(winner_id, merged);
                for (loser, g) in &members[1..] {
                    let mut g = g.clone();
                    g.merged_into = Some(winner_id);
                    g.seq = version;
                    over.insert(*loser, g);
                    for w in remap.values_mut() {
                        if w == loser {
                            *w = winner_id;
                        }
                    }
                    remap.insert(*loser, winner_id);
                }
            }
        }
        self.golden.extend(over);
        for c in now.values_mut() {
            if let Some(w) = remap.get(&c.golden) {
                c.golden = *w;
            }
        }
        self.contributions = now;
    }

    /// Live golden records as `id|a|b|c|d` lines.
    fn lines(&self) -> Vec<String> {
        self.golden
            .iter()
            .filter(|(_, g)| g.merged_into.is_none())
            .map(|(id, g)| {
                let cells: Vec<String> = g
                    .values
                    .iter()
                    .map(|v| v.clone().unwrap_or_else(|| "∅".into()))
                    .collect();
                format!("{id}|{}", cells.join("|"))
            })
            .collect()
    }

    fn links(&self) -> Vec<String> {
        self.contributions
            .iter()
            .map(|((s, id), c)| format!("{}:{id}→{}", SOURCES[*s], c.golden))
            .collect()
    }
}

/// Write a source's records as its Parquet file.
fn write_source(f: &Fixture, s: usize, records: &BTreeMap<String, SourceRecord>) {
    let mut fields = vec![Field::new("id", DataType::Utf8, false)];
    for (i, name) in FIELDS.iter().enumerate() {
        if maps(s, i) {
            fields.push(Field::new(*name, DataType::Utf8, true));
        }
    }
    fields.push(Field::new(
        "updated_at",
        DataType::Timestamp(TimeUnit::Microsecond, None),
        false,
    ));
    let schema = Arc::new(Schema::new(fields));
    let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(StringArray::from(
        records.keys().cloned().collect::<Vec<_>>(),
    ))];
    for i in 0..4 {
        if maps(s, i) {
            columns.push(Arc::new(StringArray::from(
                records
                    .values()
                    .map(|r| r.values[i].clone())
                    .collect::<Vec<_>>(),
            )));
        }
    }
    columns.push(Arc::new(TimestampMicrosecondArray::from(
        records.values().map(|r| r.wm).collect::<Vec<_>>(),
    )));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = std::fs::File::create(f.path().join(format!("{}.parquet", SOURCES[s]))).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

async fn engine_state(f: &Fixture) -> (Vec<String>, Vec<String>) {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let batches = ctx
        .sql("SELECT golden_id, a, b, c, d FROM thing ORDER BY golden_id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let golden = crate::e2e::hub::lines(&batches);
    let manifest = backflow::hub::latest(&project, "thing").await.unwrap();
    let mut links = Vec::new();
    if let Some(m) = manifest {
        for s in SOURCES {
            let file = project.state.table_url(&m.sources[s].contributions.path);
            ctx.register_parquet(format!("c_{s}"), &file, Default::default())
                .await
                .unwrap();
            let batches = ctx
                .sql(&format!(
                    "SELECT '{s}:' || CAST(__bf_sid AS VARCHAR) || '→' || CAST(__bf_golden_id AS VARCHAR) FROM c_{s}"
                ))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            links.extend(crate::e2e::hub::lines(&batches));
        }
    }
    links.sort();
    (golden, links)
}

/// One change: a source's record `id` set to `values` (a fresh watermark).
type Change = (usize, u8, [u8; 4]);

fn value(field: usize, pick: u8) -> Option<String> {
    let pools: [&[&str]; 4] = [
        &["acme", "Acme ", "globex", "initech"],
        &["x", "X", "y", "z"],
        &["1", "2"],
        &["p", "q"],
    ];
    let pool = pools[field];
    let i = pick as usize % (pool.len() + 1);
    (i < pool.len()).then(|| pool[i].to_string())
}

fn change() -> impl Strategy<Value = Change> {
    (0usize..2, 0u8..5, any::<[u8; 4]>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn golden_records_match_a_naive_model(
        cycles in prop::collection::vec(prop::collection::vec(change(), 0..6), 1..5),
        winner in prop::sample::select(vec!["oldest", "recent", "complete", "priority"]),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let f = Fixture::new();
        f.write("backflow.toml", &CONFIG.replace("{winner}", winner));
        let mut sources: [BTreeMap<String, SourceRecord>; 2] = Default::default();
        let mut model = Model { winner, ..Model::default() };
        let mut clock = 1_700_000_000_000_000i64;
        for changes in cycles {
            for (s, id, picks) in changes {
                clock += 1_000_000;
                let mut values: Values = Default::default();
                for field in 0..4 {
                    if maps(s, field) {
                        values[field] = value(field, picks[field]);
                    }
                }
                sources[s].insert(format!("r{id}"), SourceRecord { values, wm: clock });
            }
            for (s, records) in sources.iter().enumerate() {
                write_source(&f, s, records);
            }
            model.cycle(&sources);
            let report = rt.block_on(async {
                let project = f.load().unwrap();
                let ctx = project.session().await.unwrap();
                backflow::hub::run(&project, &ctx, "thing", Default::default()).await
            });
            prop_assert!(report.error.is_none(), "{:?}", report.error);
            let (golden, links) = rt.block_on(engine_state(&f));
            prop_assert_eq!(&golden, &model.lines(), "golden records after version {}", model.version);
            prop_assert_eq!(&links, &model.links(), "ID map after version {}", model.version);
        }
    }
}
