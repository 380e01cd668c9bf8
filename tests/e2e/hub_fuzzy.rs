//! Fuzzy match rules: records compared by similarity within a block attach to the golden
//! record they resemble (the score in the ID map and the log), similar new records share one
//! golden record transitively, the result does not depend on the order of the input, and a
//! rule without a block is refused on a large source.

use std::collections::BTreeSet;

use backflow::history::RunStatus;

use crate::common::Fixture;

const PROJECT: &str = r#"
[sources.crm]
type = "csv"
path = "crm.csv"

[sources.billing]
type = "csv"
path = "billing.csv"

[entities.person]
fields = { email = "text", name = "text", city = "text", postcode = "text" }
match = [
  ["email"],
  { fields = ["name", "city"], compare = "jaro_winkler", threshold = 0.9, block = ["postcode"] },
]

[entities.person.sources.crm]
from = "crm"
id = "id"
fields = { email = "email", name = "name", city = "city", postcode = "postcode" }

[entities.person.sources.billing]
from = "billing"
id = "id"
fields = { email = "email", name = "name", city = "city", postcode = "postcode" }
"#;

const CRM: &[&str] = &[
    "1,j@x.io,Jonathan Smith,London,N1",
    "2,m@x.io,Mary Jones,Leeds,LS1",
];

const BILLING: &[&str] = &[
    // A typo, same block: Jonathan's. Same name in another block: someone else.
    "10,,Jonathon Smith,London,N1",
    "11,,Jonathan Smith,Leeds,LS1",
    // Mary, found by similarity (no email), case and spaces aside.
    "12,, MARY  jones ,leeds,LS1",
    // Three new records alike in one block: one golden record, transitively.
    "13,,Peter Parker,New York,10001",
    "14,,Peter Parkr,New York,10001",
    "15,,Petr Parkr,New York,10001",
    // Not alike enough.
    "16,,Bruce Wayne,New York,10001",
];

fn write(f: &Fixture, crm: &[&str], billing: &[&str]) {
    f.write(
        "crm.csv",
        &format!("id,email,name,city,postcode\n{}\n", crm.join("\n")),
    );
    f.write(
        "billing.csv",
        &format!("id,email,name,city,postcode\n{}\n", billing.join("\n")),
    );
}

/// The golden records as sets of `source:id`.
async fn partition(f: &Fixture) -> BTreeSet<BTreeSet<String>> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    let mut groups: std::collections::BTreeMap<i64, BTreeSet<String>> = Default::default();
    for (source, ids) in [("crm", CRM), ("billing", BILLING)] {
        for line in ids {
            let id = line.split(',').next().unwrap();
            let lookup = backflow::hub::show::Lookup::SourceRecord {
                source: source.into(),
                id: id.into(),
            };
            let g = backflow::hub::show::golden_record(&project, &ctx, "person", &lookup)
                .await
                .unwrap();
            groups
                .entry(g.golden_id)
                .or_default()
                .insert(format!("{source}:{id}"));
        }
    }
    groups.into_values().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_records_attach_and_similar_new_records_share_a_golden_record() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    write(&f, CRM, &[]);
    partition_after_crm(&f).await;
    write(&f, CRM, BILLING);
    let expected: BTreeSet<BTreeSet<String>> = [
        set(&["crm:1", "billing:10"]),
        set(&["crm:2", "billing:12"]),
        set(&["billing:11"]),
        set(&["billing:13", "billing:14", "billing:15"]),
        set(&["billing:16"]),
    ]
    .into_iter()
    .collect();
    assert_eq!(partition(&f).await, expected);
    // The score is in the ID map and the log.
    let (_, show, _) = f.cli(&[
        "hub", "show", "person", "--source", "billing", "--id", "10", "--json",
    ]);
    let show: serde_json::Value = serde_json::from_str(show.trim()).unwrap();
    let how = show["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["source_id"] == "10")
        .unwrap()["linked_by"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        how.starts_with("match: name, city ~ jaro_winkler (0.9"),
        "{how}"
    );
    let (_, log, _) = f.cli(&["hub", "log", "person", "--json", "--limit", "100"]);
    assert!(
        log.lines()
            .any(|l| l.contains("\"source_id\":\"14\"") && l.contains("jaro_winkler (0.")),
        "{log}"
    );
    // Read again: nothing moves.
    assert_eq!(partition(&f).await, expected);

    // The same records in other orders give the same golden records.
    for seed in 1..4u64 {
        let g = Fixture::new();
        g.write("backflow.toml", PROJECT);
        let mut crm = CRM.to_vec();
        let mut billing = BILLING.to_vec();
        shuffle(&mut crm, seed);
        shuffle(&mut billing, seed * 7);
        write(&g, &crm, &[]);
        partition_after_crm(&g).await;
        write(&g, &crm, &billing);
        assert_eq!(partition(&g).await, expected, "order {seed}");
    }
}

async fn partition_after_crm(f: &Fixture) {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.created, 2, "{r:?}");
}

fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
}

#[test]
fn a_fuzzy_rule_without_a_block_is_refused_on_a_large_source() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &PROJECT.replace(", block = [\"postcode\"]", ""),
    );
    let mut big = String::from("id,email,name,city,postcode\n");
    for i in 0..100_001 {
        big.push_str(&format!("{i},,Person {i},Town,P{}\n", i % 97));
    }
    f.write("crm.csv", &big);
    f.write("billing.csv", "id,email,name,city,postcode\n");
    let (code, out, err) = f.cli(&["check"]);
    assert_ne!(code, 0, "{out}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("has no `block`") && text.contains("100001 records"),
        "{text}"
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{out}{err}").contains("has no `block`"),
        "{out}{err}"
    );
    // A threshold that is not a similarity is refused when the project loads.
    f.write(
        "backflow.toml",
        &PROJECT.replace("threshold = 0.9", "threshold = 90"),
    );
    let (code, _, err) = f.cli(&["check", "--offline"]);
    assert_ne!(code, 0);
    assert!(err.contains("threshold 90"), "{err}");
}
