//! Quarantine: a record that matches several golden records by the same rule, or that is
//! invalid, is attached to none and listed with why (`hub quarantine`); the rest of its cycle
//! commits; `hub resolve` settles one (attach, new, drop), and a record whose data changes
//! settles itself.

use backflow::history::RunStatus;
use backflow::hub::HubReport;
use backflow::hub::show::Lookup;

use crate::common::Fixture;
use crate::e2e::hub::lines;

// Merging is off, so two golden records can come to share an email.
const PROJECT: &str = r#"
[sources.a]
type = "csv"
path = "a.csv"

[sources.b]
type = "csv"
path = "b.csv"

[entities.person]
fields = { email = "text", name = "text" }
match = [["email"]]

[entities.person.merge]
rules = []

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email", name = "name" }

[entities.person.sources.b]
from = "b"
id = "id"
fields = { email = "email", name = "name" }
"#;

async fn run(f: &Fixture) -> HubReport {
    let project = f.load().expect("project loads");
    let ctx = project.session().await.expect("session");
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    r
}

/// Live golden records as `golden_id|email|name`.
async fn live(f: &Fixture) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    backflow::hub::register_all(&project, &ctx).await.unwrap();
    lines(
        &ctx.sql("SELECT golden_id, email, name FROM person ORDER BY golden_id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

/// `hub quarantine person --json [--all]`, one value per record.
fn quarantine(f: &Fixture, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["hub", "quarantine", "person", "--json"];
    if all {
        args.push("--all");
    }
    let (code, out, err) = f.cli(&args);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn ids(entries: &[serde_json::Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["source"].as_str().unwrap(),
                e["source_id"].as_str().unwrap()
            )
        })
        .collect()
}

async fn linked(f: &Fixture, source: &str, id: &str) -> (i64, Option<String>) {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let lookup = Lookup::SourceRecord {
        source: source.into(),
        id: id.into(),
    };
    let g = backflow::hub::show::golden_record(&project, &ctx, "person", &lookup)
        .await
        .unwrap_or_else(|e| panic!("{source}:{id} is not linked: {e}"));
    let by = g
        .links
        .iter()
        .find(|l| l.source == source && l.source_id == id)
        .and_then(|l| l.linked_by.clone());
    (g.golden_id, by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_invalid_records_wait_in_quarantine_until_resolved() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    f.write("a.csv", "id,email,name\n1,x@e.com,Ann\n2,y@e.com,Bob\n");
    f.write("b.csv", "id,email,name\n");
    run(&f).await;
    // Bob's email becomes Ann's: two golden records share it (merging is off).
    f.write("a.csv", "id,email,name\n1,x@e.com,Ann\n2,x@e.com,Bob\n");
    run(&f).await;
    assert_eq!(live(&f).await, ["1|x@e.com|Ann", "2|x@e.com|Bob"]);

    // b:10 matches both by email: quarantined, not attached to the lower id. b:13 is twice in
    // the file: invalid. b:11 is new: its golden record is created in the same cycle.
    f.write(
        "b.csv",
        "id,email,name\n10, X@E.com ,Ann B\n11,z@e.com,Zed\n13,q@e.com,Q1\n13,q@e.com,Q2\n",
    );
    let r = run(&f).await;
    assert_eq!(r.sources["b"].quarantined, 2, "{r:?}");
    assert_eq!(r.sources["b"].new, 1, "{r:?}");
    assert_eq!(r.sources["b"].matched, 0, "{r:?}");
    assert_eq!(
        live(&f).await,
        ["1|x@e.com|Ann", "2|x@e.com|Bob", "3|z@e.com|Zed"]
    );
    let q = quarantine(&f, false);
    assert_eq!(ids(&q), ["b:10", "b:13"]);
    assert_eq!(q[0]["kind"], "ambiguous");
    assert_eq!(q[0]["candidates"], serde_json::json!([1, 2]));
    assert_eq!(q[0]["rule"], "match: email");
    assert_eq!(q[0]["values"]["name"], "Ann B");
    assert_eq!(q[1]["kind"], "invalid");
    assert!(
        q[1]["reason"].as_str().unwrap().contains("more than once"),
        "{q:?}"
    );
    let since = q[0]["since"].clone();
    let (code, out, _) = f.cli(&["hub", "quarantine", "person"]);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.contains("ambiguous"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains(" b ")
            && row.contains(" 10 ")
            && row.contains("1, 2")
            && row.contains("Ann B"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" 13 ") && l.contains("invalid")),
        "{out}"
    );
    assert!(out.contains("hub resolve person"), "{out}");

    // Read again unchanged: the quarantine stays as it was, and nothing new is committed.
    let manifests = f.manifests().len();
    let r = run(&f).await;
    assert_eq!(r.sources["b"].quarantined, 0, "{r:?}");
    assert_eq!(
        f.manifests().len(),
        manifests,
        "an unchanged read commits nothing"
    );
    let q = quarantine(&f, false);
    assert_eq!(ids(&q), ["b:10", "b:13"]);
    assert_eq!(q[0]["since"], since);

    // Refusals name what is wrong.
    let (code, _, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "10", "--attach", "99",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no golden record 99") && err.contains("1, 2"),
        "{err}"
    );
    let (code, _, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "13", "--new",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid") && err.contains("--drop"), "{err}");
    let (code, _, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "77", "--drop",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not in quarantine"), "{err}");
    let (code, _, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "c", "--id", "10", "--drop",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no source \"c\""), "{err}");
    let (code, _, _) = f.cli(&["hub", "resolve", "person", "--source", "b", "--id", "10"]);
    assert_ne!(code, 0, "a decision is required");

    // Attach b:10 to Bob's golden record: linked, "resolved", in the log; gone from quarantine.
    let (code, out, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "10", "--attach", "2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        linked(&f, "b", "10").await,
        (2, Some("resolved (hub resolve)".into()))
    );
    assert_eq!(ids(&quarantine(&f, false)), ["b:13"]);
    let (_, log, _) = f.cli(&["hub", "log", "person", "--json"]);
    assert!(
        log.lines().any(|l| l.contains("\"op\":\"link\"")
            && l.contains("\"source_id\":\"10\"")
            && l.contains("resolved")),
        "{log}"
    );
    // Read again: it stays where it was put (the ID map), nothing is quarantined again.
    let r = run(&f).await;
    assert_eq!(r.sources["b"].quarantined, 0, "{r:?}");
    assert_eq!(linked(&f, "b", "10").await.0, 2);

    // Drop the invalid record: listed only with --all, and read again unchanged it stays dropped.
    let (code, out, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "13", "--drop",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(quarantine(&f, false).is_empty());
    let all = quarantine(&f, true);
    assert_eq!(ids(&all), ["b:13"]);
    assert_eq!(all[0]["decision"], "drop");
    run(&f).await;
    assert!(quarantine(&f, false).is_empty());
    let (code, _, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "13", "--drop",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("already dropped"), "{err}");
    // An ambiguous record dropped can still be attached later.
    f.write(
        "b.csv",
        "id,email,name\n10, X@E.com ,Ann B\n11,z@e.com,Zed\n13,q@e.com,Q1\n13,q@e.com,Q2\n20,x@e.com,Twenty\n",
    );
    run(&f).await;
    let resolve = |decision: &[&str]| {
        let mut args = vec![
            "hub", "resolve", "person", "--source", "b", "--id", "20", "--json",
        ];
        args.extend_from_slice(decision);
        f.cli(&args)
    };
    let (code, out, err) = resolve(&["--drop"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = resolve(&["--attach", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["command"].as_str(), first["type"].as_str()),
        (Some("hub"), Some("entity")),
        "{out}"
    );
    assert_eq!(linked(&f, "b", "20").await.0, 1);
    f.write(
        "b.csv",
        "id,email,name\n10, X@E.com ,Ann B\n11,z@e.com,Zed\n13,q@e.com,Q1\n13,q@e.com,Q2\n",
    );
    run(&f).await;
    // Corrected in the source, it is read as any record and leaves quarantine.
    f.write(
        "b.csv",
        "id,email,name\n10, X@E.com ,Ann B\n11,z@e.com,Zed\n13,q@e.com,Q2\n14,x@e.com,Xena\n15,x@e.com,Xavier\n",
    );
    let r = run(&f).await;
    assert_eq!(r.sources["b"].new, 1, "{r:?}");
    assert_eq!(r.sources["b"].quarantined, 2, "{r:?}");
    assert_eq!(ids(&quarantine(&f, true)), ["b:14", "b:15"]);
    let (q13, _) = linked(&f, "b", "13").await;

    // --new: b:14 gets a golden record of its own, and keeps it.
    let (code, out, err) = f.cli(&[
        "hub", "resolve", "person", "--source", "b", "--id", "14", "--new", "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (g14, _) = linked(&f, "b", "14").await;
    assert!(g14 > q13, "a new golden record: {g14}");
    assert!(live(&f).await.contains(&format!("{g14}|x@e.com|Xena")));
    run(&f).await;
    assert_eq!(linked(&f, "b", "14").await.0, g14);
    // b:15 now matches three golden records; its email changes in the source and it settles itself.
    let q = quarantine(&f, false);
    assert_eq!(ids(&q), ["b:15"]);
    f.write(
        "b.csv",
        "id,email,name\n10, X@E.com ,Ann B\n11,z@e.com,Zed\n13,q@e.com,Q2\n14,x@e.com,Xena\n15,w@e.com,Xavier\n",
    );
    let r = run(&f).await;
    assert_eq!(r.sources["b"].new, 1, "{r:?}");
    assert!(quarantine(&f, true).is_empty());
    assert_eq!(live(&f).await.len(), 6);

    // A record in quarantine that its source deletes leaves it.
    let full = "id,email,name\n10, X@E.com ,Ann B\n11,z@e.com,Zed\n13,q@e.com,Q2\n14,x@e.com,Xena\n15,w@e.com,Xavier\n";
    f.write("b.csv", &format!("{full}16,x@e.com,Xu\n"));
    run(&f).await;
    assert_eq!(ids(&quarantine(&f, true)), ["b:16"]);
    f.write("b.csv", full);
    let r = run(&f).await;
    assert_eq!(r.sources["b"].deleted, 0, "not a golden record's: {r:?}");
    assert!(quarantine(&f, true).is_empty());
    assert_eq!(live(&f).await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_entity_says_what_the_next_cycle_would_do_and_writes_nothing() {
    let f = Fixture::new();
    f.write("backflow.toml", PROJECT);
    f.write(
        "a.csv",
        "id,email,name\n1,x@e.com,Ann\n2,y@e.com,Bob\n3,z@e.com,Cid\n4,w@e.com,Dan\n",
    );
    f.write("b.csv", "id,email,name\n");
    run(&f).await;
    // Ann renamed, Dan deleted (his golden record retires), Eve new, b:7 twice (quarantined).
    f.write(
        "a.csv",
        "id,email,name\n1,x@e.com,Anna\n2,y@e.com,Bob\n3,z@e.com,Cid\n5,v@e.com,Eve\n",
    );
    f.write("b.csv", "id,email,name\n7,q@e.com,Q1\n7,q@e.com,Q2\n");
    let before = f.files_under(".backflow");
    let (code, out, err) = f.cli(&["plan", "person", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(plan["type"], "entity", "{plan}");
    assert_eq!(plan["created"], 1, "{plan}");
    assert_eq!(plan["updated"], 1, "{plan}");
    assert_eq!(plan["retired"], 1, "{plan}");
    assert_eq!(plan["quarantined"], 1, "{plan}");
    assert_eq!(plan["merged"], 0, "{plan}");
    let ops: Vec<String> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap().to_string())
        .collect();
    for op in ["create", "set", "retire", "quarantine", "unlink"] {
        assert!(ops.iter().any(|o| o == op), "{op} in {plan}");
    }
    assert!(
        plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["op"] == "set" && c["old_value"] == "Ann" && c["new_value"] == "Anna"),
        "{plan}"
    );
    assert_eq!(f.files_under(".backflow"), before, "a plan writes nothing");
    // The text form says the same, and a plan of everything includes the entity.
    let (code, out, _) = f.cli(&["plan"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("create 1") && out.contains("retire 1"),
        "{out}"
    );
    assert_eq!(f.files_under(".backflow"), before, "a plan writes nothing");

    // The run does what the plan said.
    let r = run(&f).await;
    assert_eq!((r.created, r.updated, r.retired), (1, 1, 1), "{r:?}");
    assert_eq!(r.sources["b"].quarantined, 1, "{r:?}");

    // A plan that would trip the mass-retirement guard says so.
    f.write("a.csv", "id,email,name\n");
    let (code, out, err) = f.cli(&["plan", "person", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(
        plan["guarded"]
            .as_str()
            .unwrap_or_default()
            .contains("max_retirements"),
        "{plan}"
    );
    assert_eq!(plan["retired"], 4, "{plan}");
}
