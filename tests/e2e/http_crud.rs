//! HTTP destinations as most REST APIs are: `POST /things` creates, `PATCH /things/{id}`
//! updates (404 for an unknown id), `DELETE /things/{id}` deletes, no upsert, no idempotency
//! keys, and a create of an id that exists answered with 409 (or, by some APIs, 500). A mirror
//! and an upsert stay equal to the model over rounds of changes (keys that leave and come back
//! included), a crash between the creates and the commit leaves no duplicate and no run that
//! retries for ever, and an API that is down fails the run at once without rejecting records.

use crate::common::api::{FakeApi, Faults};
use crate::common::*;
use backflow::history::RunStatus;
use serde_json::json;

fn crud_project(f: &Fixture, url: &str, behavior: &str, extra: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.contacts]
type = "csv"
path = "contacts.csv"

[destinations.api]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"
max_attempts = 2
{extra}

[destinations.api.create]
path = "/{{object}}"
per_record = true

[destinations.api.update]
method = "PATCH"
path = "/{{object}}/{{key}}"
missing = "create"

[destinations.api.delete]
path = "/{{object}}/{{key}}"

[syncs.crud_contacts]
from = "contacts"
to = "api"
object = "contacts"
behavior = "{behavior}"
key = "id"
"#
        ),
    );
}

fn model(rows: &[(i64, &str)]) -> String {
    let mut csv = "id,email\n".to_string();
    for (id, email) in rows {
        csv.push_str(&format!("{id},{email}\n"));
    }
    csv
}

/// The API's contacts as (id, email).
fn held(api: &FakeApi) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = api
        .records("contacts")
        .values()
        .map(|r| {
            (
                r["id"].as_i64().unwrap_or(-1),
                r["email"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expect(rows: &[(i64, &str)]) -> Vec<(i64, String)> {
    rows.iter().map(|(i, e)| (*i, e.to_string())).collect()
}

fn plain_api() -> Faults {
    Faults {
        ignore_idempotency: true,
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_a_plain_crud_api_stays_equal_to_the_model() {
    let api = FakeApi::start(plain_api()).await;
    let f = Fixture::new();
    crud_project(&f, &api.url(), "mirror", "");
    let rounds: Vec<Vec<(i64, &str)>> = vec![
        vec![(1, "a@x.io"), (2, "b@x.io"), (3, "c@x.io")],
        // 2 changes, 3 leaves, 4 arrives.
        vec![(1, "a@x.io"), (2, "bee@x.io"), (4, "d@x.io")],
        // 3 comes back, 1 changes.
        vec![
            (1, "ay@x.io"),
            (2, "bee@x.io"),
            (3, "c@x.io"),
            (4, "d@x.io"),
        ],
    ];
    let counts = [(3, 0, 0), (1, 1, 1), (1, 1, 0)];
    for (rows, (created, updated, deleted)) in rounds.iter().zip(counts) {
        f.write("contacts.csv", &model(rows));
        let r = f.run_ok("crud_contacts").await;
        assert_eq!(
            (
                r.counts.created,
                r.counts.updated,
                r.counts.deleted,
                r.counts.rejected
            ),
            (created, updated, deleted, 0),
            "{r:?}"
        );
        assert_eq!(held(&api), expect(rows));
    }
    let log = api.log();
    assert!(
        log.iter()
            .all(|l| l.method != "PUT" && !l.path.contains("batch"))
    );
    // New records went to POST, changed ones to PATCH: nothing was refused on the way.
    assert!(log.iter().all(|l| l.status < 400), "{log:?}");

    // Someone deletes a record in the API; its row changes: the update's 404 creates it.
    api.state
        .lock()
        .unwrap()
        .objects
        .get_mut("contacts")
        .unwrap()
        .remove("4");
    let rows = [
        (1, "ay@x.io"),
        (2, "bee@x.io"),
        (3, "c@x.io"),
        (4, "dee@x.io"),
    ];
    f.write("contacts.csv", &model(&rows));
    let r = f.run_ok("crud_contacts").await;
    // (Counted as created: the API had lost it.)
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (1, 0, 0),
        "{r:?}"
    );
    assert_eq!(held(&api), expect(&rows));

    // A run that changes nothing sends nothing and commits no new state version.
    let before = f.manifests();
    let requests = api.log().len();
    let r = f.run_ok("crud_contacts").await;
    assert_eq!(r.counts.unchanged, 4, "{r:?}");
    assert_eq!(api.log().len(), requests);
    assert_eq!(f.manifests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_without_state_updates_records_the_api_has() {
    let api = FakeApi::start(plain_api()).await;
    // The API has contact 1 already (the state was lost, or someone created it).
    api.state
        .lock()
        .unwrap()
        .objects
        .entry("contacts".into())
        .or_default()
        .insert(
            "1".into(),
            json!({"id": 1, "email": "old@x.io", "note": "kept"}),
        );
    let f = Fixture::new();
    crud_project(&f, &api.url(), "upsert", "");
    f.write("contacts.csv", &model(&[(1, "a@x.io"), (2, "b@x.io")]));
    let r = f.run_ok("crud_contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 0), "{r:?}");
    assert_eq!(held(&api), expect(&[(1, "a@x.io"), (2, "b@x.io")]));
    // The create's 409 became an update (PATCH): the API's other fields are kept.
    assert_eq!(api.records("contacts")["1"]["note"], json!("kept"));
    assert_eq!(api.state.lock().unwrap().conflicts, 1);
}

/// A run that dies after its creates reached the API and before its commit, on an API that
/// ignores idempotency keys and answers a duplicate create with `duplicate_status`: the next
/// run updates what is there and creates what is not, once.
async fn no_duplicates_after_a_crash(duplicate_status: u16) {
    let api = FakeApi::start(Faults {
        duplicate_status,
        ..plain_api()
    })
    .await;
    let f = Fixture::new();
    crud_project(&f, &api.url(), "mirror", "");
    // A sync name of its own: the failpoint stops every sync of that name in this process.
    let sync = format!("crash_{duplicate_status}");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("[syncs.crud_contacts]", &format!("[syncs.{sync}]")),
    );
    let rows: Vec<(i64, String)> = (1..=40).map(|i| (i, format!("p{i}@x.io"))).collect();
    let refs: Vec<(i64, &str)> = rows.iter().map(|(i, e)| (*i, e.as_str())).collect();
    f.write("contacts.csv", &model(&refs));
    run_faulted(&f, &sync, "after_batch", false).await;
    assert_eq!(held(&api).len(), 40);
    // As if half of the creates had never reached the API.
    {
        let mut s = api.state.lock().unwrap();
        let m = s.objects.get_mut("contacts").unwrap();
        for i in (1..=40).step_by(2) {
            m.remove(&i.to_string());
        }
    }
    let requests = api.log().len();
    let r = f.run_ok(&sync).await;
    assert_eq!(r.counts.rejected, 0, "{r:?}");
    assert_eq!(held(&api), rows);
    {
        let s = api.state.lock().unwrap();
        // Every record created at most once per time it was missing, and no create refused.
        assert!(s.creates.values().all(|n| *n <= 2), "{:?}", s.creates);
        assert_eq!(s.conflicts, 0);
        let after: Vec<_> = s.log[requests..]
            .iter()
            .map(|l| (l.method.clone(), l.status))
            .collect();
        assert_eq!(
            after.len(),
            40 + 20,
            "40 updates, 20 of them missing and created: {after:?}"
        );
    }
    // And the run after that has nothing to do.
    let r = f.run_ok(&sync).await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (0, 0, 40)
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_no_duplicate_on_an_api_answering_409() {
    no_duplicates_after_a_crash(409).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_no_duplicate_on_an_api_answering_500() {
    no_duplicates_after_a_crash(500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_is_down_fails_the_run_at_once() {
    // Nothing listens: connection refused. Three rows are fewer than the 8 failures in a row
    // that stop a run on 5xx; the run still fails, and rejects nothing.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = Fixture::new();
    crud_project(&f, &format!("http://127.0.0.1:{port}"), "mirror", "");
    f.write(
        "contacts.csv",
        &model(&[(1, "a@x.io"), (2, "b@x.io"), (3, "c@x.io")]),
    );
    let r = f
        .run_with(&["crud_contacts"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(r.counts.rejected, 0, "{r:?}");
    assert!(r.error.unwrap_or_default().contains("out of reach"));
    assert!(f.manifests().is_empty());

    // A gateway answering 503 for a dead API, with 2,000 records to create: the run stops
    // after the first requests give up, not after the batch.
    let api = FakeApi::start(Faults {
        down_status: Some(503),
        ..plain_api()
    })
    .await;
    let rows: Vec<(i64, String)> = (1..=2000).map(|i| (i, format!("p{i}@x.io"))).collect();
    let refs: Vec<(i64, &str)> = rows.iter().map(|(i, e)| (*i, e.as_str())).collect();
    f.write("contacts.csv", &model(&refs));
    crud_project(&f, &api.url(), "mirror", "");
    let r = f
        .run_with(&["crud_contacts"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(r.counts.rejected, 0);
    let requests = api.log().len();
    // concurrency 4, 2 attempts each, a few more already on their way: far from 2,000.
    assert!(requests <= 40, "{requests} requests to a dead API");
    assert!(f.manifests().is_empty());

    // The API recovers: the next run converges.
    api.set_faults(plain_api());
    let r = f.run_ok("crud_contacts").await;
    assert_eq!(r.counts.rejected, 0, "{r:?}");
    assert_eq!(held(&api), rows);

    // Persistent 500s (each could be a record's fault): 8 requests in a row that give up stop
    // the run at once too.
    api.set_faults(Faults {
        fail_rate: 1.0,
        ..plain_api()
    });
    let changed: Vec<(i64, String)> = (1..=2000).map(|i| (i, format!("q{i}@x.io"))).collect();
    let refs: Vec<(i64, &str)> = changed.iter().map(|(i, e)| (*i, e.as_str())).collect();
    f.write("contacts.csv", &model(&refs));
    let before = api.log().len();
    let r = f
        .run_with(&["crud_contacts"], Default::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    let requests = api.log().len() - before;
    assert!(
        requests <= 60,
        "{requests} requests after the breaker tripped"
    );
}

/// json-server (npm), a REST server nobody here wrote, kept in sync by a mirror: POST creates,
/// PATCH updates, DELETE deletes, a duplicate id is refused with 500. Its path is in
/// `BACKFLOW_TEST_JSON_SERVER` (`.ci/run` installs it); skipped without, except under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_keeps_json_server_equal_to_the_model() {
    let Some(bin) = std::env::var_os("BACKFLOW_TEST_JSON_SERVER") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "BACKFLOW_TEST_JSON_SERVER is not set and CI=true (.ci/run installs json-server)"
            );
        }
        eprintln!("SKIPPED: json-server not installed (set BACKFLOW_TEST_JSON_SERVER)");
        return;
    };
    let f = Fixture::new();
    f.write("db.json", r#"{"contacts": []}"#);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        std::process::Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--host",
                "127.0.0.1",
                "db.json",
            ])
            .current_dir(f.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start json-server"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let contacts = async || -> Vec<(i64, String)> {
        let text = http
            .get(format!("{url}/contacts"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut out: Vec<(i64, String)> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_i64().unwrap(),
                    r["email"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    };
    for _ in 0..100 {
        if http.get(format!("{url}/contacts")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.contacts]
type = "csv"
path = "contacts.csv"

[destinations.app]
type = "http"
base_url = "{url}"

[destinations.app.create]
path = "/{{object}}"
per_record = true
exists = [409, 500]

[destinations.app.update]
method = "PATCH"
path = "/{{object}}/{{key}}"
missing = "create"

[destinations.app.delete]
path = "/{{object}}/{{key}}"

[syncs.contacts]
from = "contacts"
to = "app"
object = "contacts"
behavior = "mirror"
key = "id"
"#
        ),
    );
    let round = |ids: Vec<i64>, tag: &str| -> Vec<(i64, String)> {
        ids.into_iter()
            .map(|i| (i, format!("{tag}{i}@x.io")))
            .collect()
    };
    for rows in [
        round((1..=200).collect(), "a"),
        // Some change, some leave, some arrive.
        round((1..=150).chain(201..=230).collect(), "a")
            .into_iter()
            .map(|(i, e)| {
                if i % 7 == 0 {
                    (i, format!("changed{i}@x.io"))
                } else {
                    (i, e)
                }
            })
            .collect(),
        // Those that left come back.
        round((1..=230).collect(), "b"),
    ] {
        let refs: Vec<(i64, &str)> = rows.iter().map(|(i, e)| (*i, e.as_str())).collect();
        f.write("contacts.csv", &model(&refs));
        let r = f.run_ok("contacts").await;
        assert_eq!(r.counts.rejected, 0, "{r:?}");
        assert_eq!(contacts().await, rows);
    }
    // A record deleted in json-server by someone else comes back when its row changes.
    http.delete(format!("{url}/contacts/5"))
        .send()
        .await
        .unwrap();
    let rows = round((1..=230).collect(), "c");
    let refs: Vec<(i64, &str)> = rows.iter().map(|(i, e)| (*i, e.as_str())).collect();
    f.write("contacts.csv", &model(&refs));
    let r = f.run_ok("contacts").await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (1, 229, 0),
        "{r:?}"
    );
    assert_eq!(contacts().await, rows);
}

/// `backflow run` as a child process, killed at pseudo-random moments while it creates records
/// on an API that ignores idempotency keys and answers a duplicate create with 500: the next
/// runs update what the killed ones created (their write-ahead intents name them) and create
/// only what is missing, so no record is created twice and no create is refused.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_on_a_plain_api_create_nothing_twice() {
    use std::time::Duration;
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(15),
        duplicate_status: 500,
        ..plain_api()
    })
    .await;
    let f = Fixture::new();
    crud_project(&f, &api.url(), "mirror", "concurrency = 2");
    let rows: Vec<(i64, String)> = (1..=300).map(|i| (i, format!("k{i}@x.io"))).collect();
    let refs: Vec<(i64, &str)> = rows.iter().map(|(i, e)| (*i, e.as_str())).collect();
    f.write("contacts.csv", &model(&refs));
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut killed = 0;
    for _ in 0..4 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = f
            .command(&["run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wanted = api.log().len() + 10 + (rng % 50) as usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while api.log().len() < wanted && tokio::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        while child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(killed >= 3, "only {killed} runs were killed");
    let r = f.run_ok("crud_contacts").await;
    assert_eq!(r.counts.rejected, 0, "{r:?}");
    assert_eq!(held(&api), rows);
    let s = api.state.lock().unwrap();
    let twice: Vec<_> = s.creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");
    assert_eq!(s.creates.len(), 300);
    assert_eq!(s.conflicts, 0, "a create met a record that was there");
}
