//! The mass-delete guard: a mirror whose run would delete more than its `max_deletes` (default
//! half of the records in sync) sends nothing, commits nothing, is recorded as `guarded`, and
//! goes through with `--allow-deletes`. Against SQLite, PostgreSQL and an HTTP API.

use backflow::history::RunStatus;

use crate::common::db::{self, pg_rows};
use crate::common::*;

fn people(ids: impl Iterator<Item = u32>) -> String {
    let mut csv = String::from("id,email,name,plan\n");
    for i in ids {
        csv.push_str(&format!("{i},p{i}@x.io,P{i},pro\n"));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_source_deletes_nothing_until_allowed() {
    let f = people_fixture("mirror", "", &people(1..=10));
    f.run_ok("people_sync").await;
    let manifests = f.manifests();
    f.write("people.csv", "id,email,name,plan\n");

    let plan = f.plan("people_sync").await;
    assert_eq!(plan.counts.deleted, 10);
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("a run would stop here")),
        "{plan:?}"
    );
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "guarded", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("delete 10 of the 10 records") && e.contains("--allow-deletes"),
        "{e}"
    );
    assert_eq!(
        f.sqlite("out/app.db", "people").len(),
        10,
        "the guard let deletes through"
    );
    assert_eq!(f.manifests(), manifests, "a guarded run committed state");
    let (_, history, _) = f.cli(&["history", "people_sync", "--json"]);
    assert!(
        history
            .lines()
            .next()
            .unwrap()
            .contains("\"status\":\"guarded\""),
        "{history}"
    );

    let (code, out, err) = f.cli(&["run", "--allow-deletes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted 10"), "{out}");
    assert!(f.sqlite("out/app.db", "people").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_drops_most_rows_is_stopped_and_a_small_delete_is_not() {
    let f = people_fixture("mirror", "max_deletes = \"20%\"", &people(1..=20));
    f.run_ok("people_sync").await;
    // 90% gone: stopped, nothing sent (not even the update to row 1).
    f.write("people.csv", &people(1..=2).replace("P1,", "Changed,"));
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Guarded, "{r:?}");
    assert_eq!((r.counts.updated, r.counts.deleted), (0, 0));
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r["name"] != "Changed"));
    // 15% gone, under 20%: goes through.
    f.write("people.csv", &people(1..=17));
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.deleted, 3, "{r:?}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_limit_and_config_mistakes() {
    let f = people_fixture("mirror", "max_deletes = 2", &people(1..=10));
    f.run_ok("people_sync").await;
    f.write("people.csv", &people(4..=10));
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Guarded, "{r:?}");
    assert!(r.error.unwrap().contains("max_deletes of 2 (2 allowed)"));
    f.write("people.csv", &people(2..=10));
    assert_eq!(f.run_ok("people_sync").await.counts.deleted, 1);

    // "100%" turns the guard off: an emptied model empties the mirror.
    let g = people_fixture("mirror", "max_deletes = \"100%\"", &people(1..=4));
    g.run_ok("people_sync").await;
    g.write("people.csv", "id,email,name,plan\n");
    assert_eq!(g.run_ok("people_sync").await.counts.deleted, 4);

    for (behavior, limit, says) in [
        ("upsert", "\"10%\"", "only a mirror deletes"),
        ("mirror", "\"120%\"", "from \"0%\" to \"100%\""),
        ("mirror", "-1", "must not be negative"),
    ] {
        let f = people_fixture(behavior, &format!("max_deletes = {limit}"), &people(1..=2));
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains(says), "{behavior} {limit}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_destination_is_untouched_when_the_guard_trips() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_guard";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    people_pg_project(&f, schema, "mirror");
    f.write("people.csv", &people(1..=10));
    f.run_ok("people_sync").await;
    f.write("people.csv", &people(1..=1));
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Guarded, "{r:?}");
    let count = format!("SELECT count(*)::text FROM {schema}.people");
    assert_eq!(pg_rows(&pg, &count).await, vec![vec!["10".to_string()]]);
    let r = f
        .run_with(
            &["people_sync"],
            backflow::RunOptions {
                allow_deletes: true,
                ..Default::default()
            },
        )
        .await
        .remove(0);
    assert_eq!(r.counts.deleted, 9, "{r:?}");
    assert_eq!(pg_rows(&pg, &count).await, vec![vec!["1".to_string()]]);
}

/// The guard against a naive model: random model versions under a random limit; a run either
/// makes the destination equal the model (deletes within the limit), or is guarded and leaves
/// destination and state as they were. `--allow-deletes` always goes through.
mod naive {
    use std::collections::{BTreeMap, BTreeSet};

    use backflow::history::RunStatus;
    use proptest::prelude::*;

    use crate::common::*;

    #[derive(Debug, Clone, Copy)]
    enum Limit {
        Share(u8),
        Count(u8),
    }

    fn limit() -> impl Strategy<Value = Limit> {
        prop_oneof![
            (0u8..=100).prop_map(Limit::Share),
            (0u8..6).prop_map(Limit::Count)
        ]
    }

    fn version() -> impl Strategy<Value = BTreeMap<u8, String>> {
        proptest::collection::btree_map(0u8..12, "[ab]{1,2}", 0..12)
    }

    async fn case(
        limit: Limit,
        versions: Vec<(BTreeMap<u8, String>, bool)>,
    ) -> Result<(), TestCaseError> {
        let setting = match limit {
            Limit::Share(p) => format!("max_deletes = \"{p}%\""),
            Limit::Count(n) => format!("max_deletes = {n}"),
        };
        let f = people_fixture("mirror", &setting, "id,email,name,plan\n");
        let mut synced: BTreeSet<u8> = BTreeSet::new();
        let mut dest: BTreeMap<u8, String> = BTreeMap::new();
        for (v, allow) in versions {
            let mut csv = String::from("id,email,name,plan\n");
            for (k, name) in &v {
                csv.push_str(&format!("{k},e{k},{name},p\n"));
            }
            f.write("people.csv", &csv);
            let options = backflow::RunOptions {
                allow_deletes: allow,
                ..Default::default()
            };
            let r = f.run_with(&["people_sync"], options).await.remove(0);
            let deletes = synced.iter().filter(|k| !v.contains_key(k)).count() as u64;
            let allowed = match limit {
                Limit::Share(p) => synced.len() as u64 * u64::from(p) / 100,
                Limit::Count(n) => u64::from(n),
            };
            if !allow && deletes > allowed {
                prop_assert_eq!(&r.status, &RunStatus::Guarded, "{:?}", r);
            } else {
                prop_assert_eq!(&r.status, &RunStatus::Succeeded, "{:?}", r);
                prop_assert_eq!(r.counts.deleted, deletes);
                dest = v.clone();
                synced = v.keys().copied().collect();
            }
            let got: BTreeMap<u8, String> = if f.path().join("out/app.db").exists() {
                pairs(&f.sqlite("out/app.db", "people"), "id", "name")
                    .into_iter()
                    .map(|(k, n)| (k.parse().unwrap(), n))
                    .collect()
            } else {
                BTreeMap::new()
            };
            prop_assert_eq!(&got, &dest);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_guard_matches_the_naive_model(
            limit in limit(),
            versions in proptest::collection::vec((version(), proptest::bool::weighted(0.2)), 1..5),
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(case(limit, versions))?;
        }
    }
}

/// A record whose row a CSV source left out (a value its column's type cannot hold) is not
/// deleted: `plan` says so as the run does (held, invalid), and neither trips the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_run_agree_on_deletes_held_for_unreadable_rows() {
    let f = Fixture::new();
    people_project(&f, "mirror", "max_deletes = 0");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            "path = \"people.csv\"",
            "path = \"people.csv\"\ninfer_schema_rows = 3",
        ),
    );
    f.write("people.csv", &people(1..=5));
    f.run_ok("people_sync").await;
    f.write(
        "people.csv",
        &people(1..=5).replace("4,p4@x.io", "abc,p4@x.io"),
    );
    let plan = f.plan("people_sync").await;
    assert_eq!(
        (plan.counts.deleted, plan.counts.held, plan.counts.invalid),
        (0, 1, 1),
        "{plan:?}"
    );
    assert!(
        plan.warnings.iter().all(|w| !w.contains("would stop")),
        "{plan:?}"
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.deleted, r.counts.held, r.counts.invalid),
        (0, 1, 1),
        "{r:?}"
    );
}

/// More changes than one destination batch holds: the guard cannot wait for the end of the
/// diff and counts with a query before the first batch; the outcome is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_run_is_guarded_before_its_first_batch() {
    let f = people_fixture("mirror", "", &people(1..=40_000));
    f.run_ok("people_sync").await;
    // 30,000 of 40,000 gone: over 50%, and more than a batch of deletes.
    f.write("people.csv", &people(30_001..=40_000));
    let r = f
        .run_with(&["people_sync"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Guarded, "{r:?}");
    assert!(r.error.unwrap().contains("delete 30000 of the 40000"));
    assert_eq!(f.sqlite("out/app.db", "people").len(), 40_000);
    // 20,000 changed and 10,000 gone (25%): more than a batch, under the limit: sent.
    let mut csv = people(1..=30_000);
    csv = csv.replace(",pro\n", ",team\n");
    f.write("people.csv", &csv);
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.updated, r.counts.deleted),
        (30_000, 10_000),
        "{r:?}"
    );
    assert_eq!(f.sqlite("out/app.db", "people").len(), 30_000);
}

/// Against an HTTP API: a filter that drops 90% of the rows sends no request at all (no
/// deletes, and not the one update either) until the deletes are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_api_gets_no_request_from_a_guarded_run() {
    use crate::common::api::{FakeApi, Faults};
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.api]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"

[destinations.api.upsert]
method = "PUT"
path = "/{{object}}/{{key}}"

[destinations.api.delete]
method = "DELETE"
path = "/{{object}}/{{key}}"

[syncs.people_sync]
from = "people"
to = "api"
object = "people"
behavior = "mirror"
key = "id"
max_deletes = "20%"
"#,
            url = api.url()
        ),
    );
    f.write("people.csv", &people(1..=10));
    f.run_ok("people_sync").await;
    assert_eq!(api.records("people").len(), 10);
    let requests = api.log().len();
    // Nine of ten rows filtered away, and the one left changed.
    f.write("people.csv", "id,email,name,plan\n1,p1@x.io,Changed,pro\n");
    let r = f
        .run_with(&["people_sync"], backflow::RunOptions::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Guarded, "{:?}", r.error);
    assert!(r.error.unwrap().contains("delete 9 of the 10 records"));
    assert_eq!(api.log().len(), requests, "a guarded run sent requests");
    assert_eq!(api.records("people").len(), 10);
    assert_eq!(api.records("people")["1"]["name"], "P1");

    // A legitimate 10% delete under the 20% guard goes through.
    f.write("people.csv", &people(1..=9));
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.deleted, 1);
    assert_eq!(api.records("people").len(), 9);

    f.write("people.csv", "id,email,name,plan\n1,p1@x.io,Changed,pro\n");
    let r = f
        .run_with(
            &["people_sync"],
            backflow::RunOptions {
                allow_deletes: true,
                ..Default::default()
            },
        )
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert_eq!((r.counts.deleted, r.counts.updated), (8, 1));
    let left = api.records("people");
    assert_eq!(left.keys().collect::<Vec<_>>(), ["1"]);
    assert_eq!(left["1"]["name"], "Changed");
}
