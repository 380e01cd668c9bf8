//! HTTP API destinations against the fake SaaS API of `tests/common/api.rs` (loopback only):
//! faults (500s, slow answers, 429s), per-record refusals, batches split around bad records,
//! the HubSpot preset, credentials, and kills in the middle of a run. Every behavior against
//! the API's records (updates and deletes one record per request) is the conformance suite's
//! (`tests/conformance/`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::api::{BatchErrors, FakeApi, Faults};
use crate::common::*;
use backflow::history::RunStatus;

/// A people CSV: `id,email,name,plan`; ids in `bad` get an email without `@`.
fn people_csv(
    ids: impl IntoIterator<Item = u64>,
    version: &str,
    bad: impl Fn(u64) -> bool,
) -> String {
    let mut csv = String::from("id,email,name,plan\n");
    for id in ids {
        let email = if bad(id) {
            format!("person{id}.example.com")
        } else {
            format!("person{id}@example.com")
        };
        csv.push_str(&format!(
            "{id},{email},Name {id} {version},plan{}\n",
            id % 3
        ));
    }
    csv
}

/// What the API should hold: the CSV's rows with a valid email, as the JSON records sent.
fn expected(csv: &str) -> BTreeMap<String, Value> {
    csv.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f[1].contains('@').then(|| {
                let id: u64 = f[0].parse().unwrap();
                (
                    f[0].to_string(),
                    json!({"id": id, "email": f[1], "name": f[2], "plan": f[3]}),
                )
            })
        })
        .collect()
}

fn project(f: &Fixture, api: &FakeApi, destination: &str, behavior: &str) {
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
{destination}

[syncs.people]
from = "people"
to = "api"
object = "people"
behavior = "{behavior}"
key = "id"
"#,
            url = api.url()
        ),
    );
}

// A little under the API's 20 per second, as the README advises: requests that leave evenly
// spaced can arrive bunched.
const BATCH_ENDPOINTS: &str = r#"
rate_limit = 18
concurrency = 4
timeout = "1s"
max_attempts = 10

[destinations.api.upsert]
path = "/{object}/batch"
batch_size = 10
wrap = "records"
errors = "errors"
error_match = "index"
error_field = "index"
results = "results"
result_match = "key"
result_field = "id"

[destinations.api.delete]
path = "/{object}/delete"
batch_size = 25
wrap = "ids"
"#;

fn statuses(api: &FakeApi) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for l in api.log() {
        *m.entry(l.status).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_under_faults_ends_with_exactly_the_model() {
    let api = FakeApi::start(Faults {
        rate_limit: Some(20),
        fail_rate: 0.15,
        slow_rate: 0.05,
        slow: Duration::from_millis(1500),
        seed: 11,
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    project(&f, &api, BATCH_ENDPOINTS, "mirror");
    let bad = |id: u64| id.is_multiple_of(37);
    let v1 = people_csv(1..=400, "v1", bad);
    f.write("people.csv", &v1);
    let r = f.run_ok("people").await;
    assert_eq!(api.records("people"), expected(&v1));
    assert_eq!((r.counts.created, r.counts.rejected), (390, 10), "{r:?}");
    let reasons: Vec<_> = r.samples.iter().map(|s| s.reason.clone()).collect();
    assert!(
        reasons
            .iter()
            .all(|m| m.contains("is not a valid email address")),
        "{reasons:?}"
    );
    let seen = statuses(&api);
    assert!(
        seen.get(&500).copied().unwrap_or(0) > 0,
        "no 500s were injected: {seen:?}"
    );
    // Answers slower than the client's 1 s timeout: retried (the API may have applied them).
    let slowed = api.state.lock().unwrap().slowed;
    eprintln!(
        "http faults, first run: {} requests, statuses {seen:?}, {slowed} answered too slowly",
        api.log().len()
    );
    assert!(slowed > 0, "no slow answers were injected");
    // Every 500 and every timeout was sent again, and run history says how often.
    let failed = seen.get(&500).copied().unwrap_or(0) as u64;
    assert!(r.counts.retries >= failed + slowed, "{r:?}");
    let (_, history, _) = f.cli(&["history", "--json"]);
    assert!(
        history.contains(&format!("\"retries\":{}", r.counts.retries)),
        "{history}"
    );
    assert!(
        api.busiest_second() <= 20,
        "{} requests in one second, over the limit of 20",
        api.busiest_second()
    );
    assert_eq!(
        seen.get(&429),
        None,
        "the API had to refuse requests over its limit"
    );

    // Change 40 rows (one of them still invalid), remove 50 (one never sent), add 20 (one
    // invalid): only those go out, and deletes reach the API.
    let ids: Vec<u64> = (51..=420).collect();
    let mut v2 = String::from("id,email,name,plan\n");
    for line in people_csv(ids.iter().copied(), "v1", bad).lines().skip(1) {
        let id: u64 = line.split(',').next().unwrap().parse().unwrap();
        if (100..140).contains(&id) {
            v2.push_str(&line.replace(" v1,", " v2,"));
        } else {
            v2.push_str(line);
        }
        v2.push('\n');
    }
    f.write("people.csv", &v2);
    let before = api.log().len();
    let r = f.run_ok("people").await;
    assert_eq!(api.records("people"), expected(&v2));
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (19, 39, 49),
        "{r:?}"
    );
    assert!(api.busiest_second() <= 20);

    // Nothing changed: only the still-invalid records are tried again.
    let r = f.run_ok("people").await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (0, 0, 0)
    );
    assert_eq!(r.counts.rejected, 10);
    assert!(
        api.log().len() - before < 80,
        "a no-change run sent {} requests",
        api.log().len() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_api_pauses_every_request_for_retry_after() {
    let api = FakeApi::start(Faults {
        rate_limit: Some(5),
        retry_after: 1,
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    project(
        &f,
        &api,
        "concurrency = 4\n[destinations.api.upsert]\nmethod = \"PUT\"\npath = \"/{object}/{key}\"\n",
        "upsert",
    );
    let csv = people_csv(1..=20, "v1", |_| false);
    f.write("people.csv", &csv);
    let r = f.run_ok("people").await;
    assert_eq!(api.records("people"), expected(&csv));
    assert_eq!(r.counts.created, 20);
    let log = api.log();
    let limited: Vec<_> = log.iter().filter(|l| l.status == 429).collect();
    assert!(!limited.is_empty(), "the API never said 429");
    // After a 429 with Retry-After: 1, nothing new arrives until the second is over (requests
    // already on their way land within a few milliseconds).
    for l in &limited {
        let early = log
            .iter()
            .filter(|o| {
                o.at > l.at + Duration::from_millis(300) && o.at < l.at + Duration::from_millis(800)
            })
            .count();
        assert_eq!(
            early, 0,
            "{early} requests arrived during a Retry-After pause"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_as_a_whole_is_split_around_the_bad_records() {
    let api = FakeApi::start(Faults {
        batch_errors: BatchErrors::WholeBatch,
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    project(
        &f,
        &api,
        "[destinations.api.upsert]\npath = \"/{object}/batch\"\nbatch_size = 20\nwrap = \"records\"\n",
        "upsert",
    );
    let csv = people_csv(1..=60, "v1", |id| [7, 8, 45].contains(&id));
    f.write("people.csv", &csv);
    let r = f.run_ok("people").await;
    assert_eq!(api.records("people"), expected(&csv));
    assert_eq!((r.counts.created, r.counts.rejected), (57, 3));
    let mut keys: Vec<_> = r
        .samples
        .iter()
        .map(|s| s.key.clone().unwrap_or_default())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["45", "7", "8"]);
    assert!(
        r.samples
            .iter()
            .all(|s| s.reason.contains("HTTP 400") && s.reason.contains("not a valid email"))
    );
    // Splitting cost a bounded number of requests: 3 batches, halves down to each bad record.
    assert!(
        api.log().len() <= 3 + 2 * 3 * 5,
        "{} requests",
        api.log().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_preset_needs_only_a_token_and_an_object() {
    // HubSpot's limit for a private app is about 10 requests per second; the preset sends 9
    // per run.
    let api = FakeApi::start(Faults {
        rate_limit: Some(10),
        fail_rate: 0.2,
        seed: 5,
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    let toml = |behavior: &str| {
        format!(
            r#"
[sources.contacts]
type = "csv"
path = "contacts.csv"

[destinations.hubspot]
type = "http"
preset = "hubspot"
base_url = "{url}"
token_env = "BACKFLOW_TEST_API_TOKEN"

[syncs.contacts]
from = "contacts"
to = "hubspot"
object = "contacts"
behavior = "{behavior}"
key = "email"
"#,
            url = api.url()
        )
    };
    f.write("backflow.toml", &toml("upsert"));
    f.write(
        "contacts.csv",
        "email,firstname,mrr\na@x.io,Ada,10.5\nb@x.io,,20\nnot-an-email,Nobody,0\n",
    );
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 1), "{r:?}");
    assert!(
        r.samples[0]
            .reason
            .contains("Property values were not valid"),
        "{:?}",
        r.samples
    );
    let got = api.records("contacts");
    assert_eq!(
        got["a@x.io"],
        json!({"email": "a@x.io", "firstname": "Ada", "mrr": "10.5"})
    );
    // A NULL clears the property: HubSpot reads "" as "no value".
    assert_eq!(
        got["b@x.io"],
        json!({"email": "b@x.io", "firstname": "", "mrr": "20.0"})
    );
    assert!(
        api.log()
            .iter()
            .any(|l| l.method == "GET" && l.path == "/crm/v3/objects/contacts?limit=1")
    );
    assert!(
        api.log()
            .iter()
            .any(|l| l.path == "/crm/v3/objects/contacts/batch/upsert" && l.status == 207)
    );

    f.write(
        "contacts.csv",
        "email,firstname,mrr\na@x.io,Ada,11\nb@x.io,Bea,20\nnot-an-email,Nobody,0\n",
    );
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.updated, r.counts.rejected), (2, 1));
    assert_eq!(api.records("contacts")["b@x.io"]["firstname"], json!("Bea"));

    // Create-only leaves an existing contact alone (HubSpot answers 409) and creates the rest.
    let g = Fixture::new();
    g.write("backflow.toml", &toml("create-only"));
    g.write("contacts.csv", "email,firstname\na@x.io,Other\nc@x.io,Cy\n");
    let r = g.run_ok("contacts").await;
    assert_eq!(r.counts.rejected, 0, "{r:?}");
    let got = api.records("contacts");
    assert_eq!(got["a@x.io"]["firstname"], json!("Ada"));
    assert_eq!(got["c@x.io"], json!({"email": "c@x.io", "firstname": "Cy"}));

    // Mirror: HubSpot archives by its own ids, which the preset reads first by e-mail (HubSpot
    // answers them in lower case); a key HubSpot never had is simply gone.
    let h = Fixture::new();
    h.write("backflow.toml", &toml("mirror"));
    h.write("contacts.csv", "email,firstname\nZ@x.io,Z\ny@x.io,Y\n");
    h.run_ok("contacts").await;
    assert!(api.records("contacts").contains_key("Z@x.io"));
    h.write("contacts.csv", "email,firstname\ny@x.io,Y\n");
    let r = h.run_ok("contacts").await;
    assert_eq!((r.counts.deleted, r.counts.rejected), (1, 0), "{r:?}");
    assert!(!api.records("contacts").contains_key("Z@x.io"));
    assert!(api.records("contacts").contains_key("y@x.io"));
    assert!(
        api.log()
            .iter()
            .any(|l| l.path.ends_with("/batch/archive") && l.status == 204)
    );
    // A delete sync of keys HubSpot has and has not.
    let d = Fixture::new();
    d.write("backflow.toml", &toml("delete"));
    d.write("contacts.csv", "email\ny@x.io\nnever@x.io\n");
    let r = d.run_ok("contacts").await;
    assert_eq!((r.counts.deleted, r.counts.rejected), (2, 0), "{r:?}");
    assert!(!api.records("contacts").contains_key("y@x.io"));
    // An id lookup answered with something that is not HubSpot's JSON settles nothing: the
    // deletes are rejected, never counted as done.
    api.set_faults(Faults {
        garbled_reads: true,
        ..Faults::default()
    });
    let e = Fixture::new();
    e.write("backflow.toml", &toml("delete"));
    e.write("contacts.csv", "email\na@x.io\nb@x.io\n");
    let r = e.run_ok("contacts").await;
    assert_eq!((r.counts.deleted, r.counts.rejected), (0, 2), "{r:?}");
    assert!(
        r.samples
            .iter()
            .all(|s| s.reason.contains("id lookup is not JSON")),
        "{:?}",
        r.samples
    );
    assert!(api.records("contacts").contains_key("a@x.io"));
    assert!(statuses(&api).contains_key(&500), "no 500s were injected");
    // (Runs started back to back share HubSpot's quota, so the API may answer 429 across
    // them; backflow then waits. Pacing within one run is checked by the mirror test.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_run_and_never_show_the_token() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    project(
        &f,
        &api,
        "[destinations.api.upsert]\npath = \"/{object}/batch\"\nwrap = \"records\"\n",
        "upsert",
    );
    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text.replace("BACKFLOW_TEST_API_TOKEN", "BACKFLOW_TEST_API_BAD_TOKEN"),
    );
    f.write("people.csv", &people_csv(1..=30, "v1", |_| false));
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("refused the credentials"), "{out}{err}");
    let (_, history, _) = f.cli(&["history", "--samples", "--json"]);
    let canary = std::env::var("BACKFLOW_TEST_API_BAD_TOKEN").unwrap();
    for text in [&out, &err, &history] {
        assert!(!text.contains(&canary), "the token leaked: {text}");
    }
    assert!(f.manifests().is_empty(), "a failed run committed state");
    assert!(api.records("people").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_mistakes_are_named_before_any_request() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    project(
        &f,
        &api,
        "[destinations.api.upsert]\npath = \"/{object}/{kye}\"\nrecord = { id = \"{key}\", name = \"{field.name}\", x = \"{feilds}\" }\n\n[destinations.api.delete]\npath = \"/{object}/{api_id}\"\n",
        "upsert",
    );
    f.write("people.csv", &people_csv(1..=3, "v1", |_| false));
    let err = f.load().expect_err("config refused").to_string();
    for want in [
        "{kye}",
        "{feilds}",
        "destinations.api",
        "{api_id} needs a lookup",
    ] {
        assert!(err.contains(want), "{want} not in: {err}");
    }

    project(
        &f,
        &api,
        "[destinations.api.upsert]\npath = \"/{object}/batch\"\n",
        "mirror",
    );
    let r = f.run_with(&["people"], Default::default()).await.remove(0);
    assert_eq!(r.status, RunStatus::Failed);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("needs a delete endpoint") && e.contains("[destinations.api.delete]"),
        "{e}"
    );

    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text.replace("BACKFLOW_TEST_API_TOKEN", "BACKFLOW_TEST_NO_SUCH_TOKEN"),
    );
    let err = f.load().expect_err("config refused").to_string();
    assert!(err.contains("BACKFLOW_TEST_NO_SUCH_TOKEN"), "{err}");
    assert!(api.log().is_empty(), "requests were sent: {:?}", api.log());
}

/// `backflow run` as a child process, killed at pseudo-random moments while it creates records
/// one request at a time; the next runs send the same records with the same idempotency keys,
/// so the API replays its answers instead of creating duplicates, and a clean run completes it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_resume_without_duplicates() {
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(15),
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    project(
        &f,
        &api,
        "concurrency = 2\n[destinations.api.create]\npath = \"/{object}\"\nper_record = true\n",
        "create-only",
    );
    let csv = people_csv(1..=300, "v1", |_| false);
    f.write("people.csv", &csv);
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let (mut killed, mut finished) = (0, 0);
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
        let before = api.log().len();
        // Kill once the run is under way: after 10 to 60 more requests.
        let wanted = before + 10 + (rng % 50) as usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while api.log().len() < wanted && tokio::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap();
                killed += 1;
            }
        }
        while child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        killed >= 3,
        "only {killed} runs were killed ({finished} finished)"
    );
    let r = f.run_ok("people").await;
    assert_eq!(r.counts.rejected, 0);
    assert_eq!(api.records("people"), expected(&csv));
    let s = api.state.lock().unwrap();
    let twice: Vec<_> = s.creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");
    assert_eq!(s.creates.len(), 300);
    assert_eq!(
        s.conflicts, 0,
        "creates were sent again without their idempotency key"
    );
    assert!(
        s.replays > 0,
        "no create was ever replayed: the kills proved nothing"
    );
    eprintln!(
        "http kills: {killed} killed, {} creates replayed by idempotency key",
        s.replays
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_reach_another_path() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    project(
        &f,
        &api,
        "[destinations.api.upsert]\nmethod = \"PUT\"\npath = \"/{object}/{key}\"\n",
        "upsert",
    );
    f.write(
        "people.csv",
        "id,email\na,a@x.io\n..,dots@x.io\n.,dot@x.io\nb/c?d=1#e,slash@x.io\n",
    );
    let r = f.run_ok("people").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 2), "{r:?}");
    assert!(
        r.samples
            .iter()
            .all(|s| s.reason.contains("cannot stand for a record"))
    );
    let keys: Vec<String> = api.records("people").into_keys().collect();
    assert_eq!(keys, vec!["a", "b/c?d=1#e"]);
    assert!(api.log().iter().all(|l| l.path.starts_with("/api/people/")));
}

/// A composite key against a REST API: each record's path names both parts, the body carries
/// them, a part that changes moves the record (a delete and a create), and an endpoint that
/// would need one key value is refused before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_key_addresses_records_by_every_part() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.members]
type = "csv"
path = "members.csv"

[destinations.api]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"

[destinations.api.upsert]
method = "PUT"
path = "/{{object}}/{{field.org}}~{{field.id}}"

[destinations.api.delete]
method = "DELETE"
path = "/{{object}}/{{field.org}}~{{field.id}}"

[syncs.members]
from = "members"
to = "api"
object = "members"
behavior = "mirror"
key = ["org", "id"]
"#,
            url = api.url()
        ),
    );
    f.write(
        "members.csv",
        "org,id,email\nacme,1,a@x.io\nacme,2,b@x.io\nzeta,1,z@x.io\n",
    );
    let r = f.run_ok("members").await;
    assert_eq!(r.counts.created, 3);
    let keys = |api: &FakeApi| api.records("members").into_keys().collect::<Vec<_>>();
    assert_eq!(keys(&api), ["acme~1", "acme~2", "zeta~1"]);
    assert_eq!(
        api.records("members")["zeta~1"],
        json!({"org": "zeta", "id": 1, "email": "z@x.io"})
    );
    // acme/2 moves to beta/2.
    f.write(
        "members.csv",
        "org,id,email\nacme,1,a@x.io\nbeta,2,b@x.io\nzeta,1,z@x.io\n",
    );
    let r = f.run_ok("members").await;
    assert_eq!(
        (r.counts.created, r.counts.deleted, r.counts.unchanged),
        (1, 1, 2)
    );
    assert_eq!(keys(&api), ["acme~1", "beta~2", "zeta~1"]);

    // `{key}` in a path cannot hold two values: refused, naming what to write instead.
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("{field.org}~{field.id}", "{key}"),
    );
    let requests = api.log().len();
    let r = f
        .run_with(&["members"], backflow::RunOptions::default())
        .await
        .remove(0);
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("composite key") && error.contains("{field.NAME}"),
        "{error}"
    );
    assert_eq!(api.log().len(), requests, "nothing was sent");
}
