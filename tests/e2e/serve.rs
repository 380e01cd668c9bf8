//! `backflow serve`, as a process: schedules and sequences with their skips in history, the
//! API's answers (401, 404, 409, 202), runs for keys pushed while a run goes and across a
//! SIGKILL, a SIGTERM during a run, and two servers on one state.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::api::{FakeApi, Faults};
use crate::common::*;

/// A `backflow serve` process on a free port of 127.0.0.1.
struct Server {
    child: std::process::Child,
    url: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Server {
    fn start(f: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut command = f.command(&args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .env("RUST_LOG", "info,datafusion=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start backflow serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !sent && let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on ".len()..];
                    let url = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(url);
                    sent = true;
                }
                // The server's log, kept for a failing test's output.
                eprintln!("[serve] {line}");
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("backflow serve did not start listening");
            }
        };
        let token = env
            .iter()
            .find(|(k, _)| *k == "BACKFLOW_API_TOKEN")
            .map(|(_, v)| v.to_string());
        Server {
            child,
            url,
            token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(if body.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&body).unwrap()
            })
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Wait until run `id` has ended; returns it.
    async fn finished(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, run) = self.get(&format!("/api/runs/{id}")).await;
            assert_eq!(status, 200, "{run}");
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                return run;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "run {id} did not end: {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `check` holds for the history of `name` (newest first).
    async fn history_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let (status, runs) = self.get(&format!("/api/syncs/{name}/runs?limit=200")).await;
            assert_eq!(status, 200, "{runs}");
            let runs = runs.as_array().cloned().unwrap_or_default();
            if check(&runs) {
                return runs;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{what}: history of {name} is {runs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for the process to exit (after a signal).
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::task::block_in_place(|| wait_or_kill(&mut self.child, limit, "backflow serve"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap_or_default()).unwrap_or(Value::Null)
    }
}

fn statuses(runs: &[Value]) -> Vec<&str> {
    runs.iter().filter_map(|r| r["status"].as_str()).collect()
}

/// No two of these runs were going at the same time.
fn assert_no_overlap<'a>(runs: impl Iterator<Item = &'a Value>) {
    let at = |r: &Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let mut spans: Vec<(i64, i64)> = runs
        .map(|r| (at(r, "started_at"), at(r, "finished_at")))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two runs overlapped: {spans:?}");
    }
}

/// A sync (`people`, CSV into SQLite, mirror) and an entity (`account`, from `crm.csv`).
fn sync_and_entity_project(f: &Fixture, people_csv: &str) {
    f.write("people.csv", people_csv);
    f.write(
        "crm.csv",
        "id,name,email\n1,Acme,a@acme.test\n2,Globex,g@globex.test\n",
    );
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[sources.crm]
type = "csv"
path = "crm.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people]
from = "people"
to = "app"
object = "people"
behavior = "mirror"
key = "id"

[entities.account]
fields = { name = "text", email = "text" }
match = [["email"]]

[entities.account.sources.crm]
from = "crm"
id = "id"
fields = { name = "name", email = "email" }
"#,
    );
}

fn csv(rows: std::ops::RangeInclusive<u32>, version: &str) -> String {
    let mut s = String::from("id,name\n");
    for id in rows {
        s.push_str(&format!("{id},name {id} {version}\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_run_sequences_follow_and_a_failed_upstream_skips_its_dependents() {
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=5, "v1"));
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.first]
from = "people"
to = "app"
object = "first"
behavior = "mirror"
key = "id"
schedule = "every 1s"

[syncs.second]
from = "people"
to = "app"
object = "second"
behavior = "upsert"
key = "id"
after = ["first"]

[syncs.third]
from = "people"
to = "app"
object = "third"
behavior = "upsert"
key = "id"
after = ["second"]

[syncs.by_hand]
from = "people"
to = "app"
object = "by_hand"
behavior = "upsert"
key = "id"
"#,
    );
    let (code, out, err) = f.cli(&["plan", "first", "second", "by_hand"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schedule: every 1s, next run"), "{out}");
    assert!(out.contains("schedule: after first"), "{out}");
    assert!(out.contains("schedule: manual"), "{out}");

    let server = Server::start(&f, &[], &[]);
    // first runs every second; second after each success of first; third after second.
    server
        .history_until("third", "the sequence ran", |runs| {
            statuses(runs).iter().filter(|s| **s == "succeeded").count() >= 2
        })
        .await;
    let first = server
        .history_until("first", "first ran", |runs| runs.len() >= 3)
        .await;
    assert!(
        statuses(&first).iter().all(|s| *s == "succeeded"),
        "{first:#?}"
    );
    let (_, by_hand) = server.get("/api/syncs/by_hand/runs").await;
    assert_eq!(
        by_hand,
        serde_json::json!([]),
        "a manual sync ran by itself"
    );
    assert_eq!(f.sqlite("out/app.db", "third").len(), 5);
    let (_, summary) = server.get("/api/syncs/first").await;
    assert_eq!(summary["schedule"], "every 1s", "{summary}");
    assert!(summary["next_run"].is_string(), "{summary}");
    let (_, summary) = server.get("/api/syncs/second").await;
    assert_eq!(summary["after"], serde_json::json!(["first"]), "{summary}");
    assert_eq!(summary["last_run"]["status"], "succeeded", "{summary}");

    // The upstream breaks: first fails, second and third are skipped with the reason.
    std::fs::remove_file(f.path().join("people.csv")).unwrap();
    let second = server
        .history_until("second", "second skipped", |runs| {
            statuses(runs).first() == Some(&"skipped")
        })
        .await;
    let reason = second[0]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("\"first\" did not succeed"), "{reason}");
    server
        .history_until("third", "third skipped too", |runs| {
            statuses(runs).first() == Some(&"skipped")
        })
        .await;
    let first = server
        .history_until("first", "first failed", |runs| {
            statuses(runs).first() == Some(&"failed")
        })
        .await;
    assert!(
        first[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("people.csv"),
        "{first:#?}"
    );
    // The mirror deleted nothing: its model could not be read.
    assert_eq!(f.sqlite("out/app.db", "first").len(), 5);

    // Fixed: the sequence runs again, with the new rows.
    f.write("people.csv", &csv(1..=6, "v2"));
    server
        .history_until("third", "third ran again", |runs| {
            statuses(runs).first() == Some(&"succeeded")
                && runs[0]["counts"]["created"].as_u64() == Some(1)
        })
        .await;
    assert_eq!(f.sqlite("out/app.db", "third").len(), 6);
}

/// A project with one sync into the fake API (slow when `latency` says so) and one into
/// SQLite.
fn api_project(f: &Fixture, api: &FakeApi, schedule: &str) {
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
concurrency = 1

[destinations.api.upsert]
method = "PUT"
path = "/{{object}}/{{key}}"

[destinations.api.delete]
method = "DELETE"
path = "/{{object}}/{{key}}"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people]
from = "people"
to = "api"
object = "people"
behavior = "mirror"
key = "id"
{schedule}

[syncs.local]
from = "people"
to = "app"
object = "people"
behavior = "upsert"
key = "id"
"#,
            url = api.url()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_finds_its_sync_running_is_skipped_and_recorded() {
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=8, "v1"));
    api_project(&f, &api, "schedule = \"every 1s\"");
    let server = Server::start(&f, &[], &[]);
    let runs = server
        .history_until("people", "a skip", |runs| {
            statuses(runs).contains(&"skipped")
        })
        .await;
    let skipped = runs.iter().find(|r| r["status"] == "skipped").unwrap();
    assert!(
        skipped["error"]
            .as_str()
            .unwrap_or_default()
            .contains("still going"),
        "{skipped}"
    );
    // Never two runs at once: the skips are the ticks during the run, not a queue.
    let runs = server
        .history_until("people", "the run", |runs| {
            statuses(runs).contains(&"succeeded")
        })
        .await;
    assert_no_overlap(runs.iter().filter(|r| r["status"] != "skipped"));
    assert_eq!(api.records("people").len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_every_endpoint_and_guards_with_its_token() {
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=10, "v1"));
    api_project(&f, &api, "");
    let mut server = Server::start(&f, &[], &[("BACKFLOW_API_TOKEN", "s3cr3t-token")]);

    // Without the token: 401, except /healthz.
    let anonymous = reqwest::Client::new();
    for path in [
        "/api/syncs",
        "/api/syncs/people",
        "/metrics",
        "/api/openapi.json",
    ] {
        let r = anonymous
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let wrong = anonymous
        .post(format!("{}/api/syncs/people/runs", server.url))
        .bearer_auth("s3cr3t-tokeN")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let health = anonymous
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // The lists, with no secret in them.
    let (status, syncs) = server.get("/api/syncs").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = syncs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["people", "local"]);
    assert_eq!(syncs[0]["state"], "idle");
    assert_eq!(syncs[0]["config"]["destination_type"], "http");
    assert!(!syncs.to_string().contains(&api.url()), "{syncs}");
    let (status, doc) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");

    // 404s name what exists.
    let (status, body) = server.get("/api/syncs/peple").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("people"), "{body}");
    assert_eq!(
        server.post("/api/syncs/nope/runs", Value::Null).await.0,
        404
    );
    assert_eq!(server.get("/api/entities/people").await.0, 404);
    assert_eq!(server.get("/api/runs/0123abc").await.0, 404);
    assert_eq!(server.get("/api/nothing").await.0, 404);
    assert_eq!(
        server
            .post(
                "/api/syncs/people/runs",
                serde_json::json!({"full_resink": true})
            )
            .await
            .0,
        400
    );
    assert_eq!(server.get("/api/syncs/people/runs?limit=many").await.0, 400);

    // A run: 202 with its id, 409 while it goes, live counts, then its outcome.
    let (status, started) = server.post("/api/syncs/people/runs", Value::Null).await;
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    let (status, body) = server.post("/api/syncs/people/runs", Value::Null).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    let (_, summary) = server.get("/api/syncs/people").await;
    assert!(
        matches!(summary["state"].as_str(), Some("running" | "queued")),
        "{summary}"
    );
    let run = server.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counts"]["created"], 10, "{run}");
    assert_eq!(run["trigger"], "api");
    assert_eq!(api.records("people").len(), 10);
    let (_, history) = server.get("/api/syncs/people/runs?limit=5").await;
    assert_eq!(history[0]["run_id"], id.as_str(), "{history}");

    // A full resync sends everything again.
    let (status, started) = server
        .post(
            "/api/syncs/people/runs",
            serde_json::json!({"full_resync": true}),
        )
        .await;
    assert_eq!(status, 202);
    let run = server.finished(started["run_id"].as_str().unwrap()).await;
    assert_eq!(run["full_resync"], true, "{run}");
    assert_eq!(run["counts"]["updated"], 10, "{run}");

    // Rejected records with their reasons.
    f.write("people.csv", "id,name\n1,a\n,no key\n");
    let (_, started) = server.post("/api/syncs/local/runs", Value::Null).await;
    let id = started["run_id"].as_str().unwrap().to_string();
    let run = server.finished(&id).await;
    assert_eq!(run["counts"]["invalid"], 1, "{run}");
    let (status, records) = server.get(&format!("/api/runs/{id}/records")).await;
    assert_eq!(status, 200);
    assert_eq!(records[0]["kind"], "invalid", "{records}");
    assert!(
        records[0]["reason"].as_str().unwrap().contains("key"),
        "{records}"
    );

    // Metrics in the Prometheus text format.
    let r = server
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("backflow_runs_total{target=\"people\",status=\"succeeded\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("backflow_records_total{target=\"people\",operation=\"created\"} 10"),
        "{text}"
    );
    assert!(
        text.contains("backflow_invalid_records_total{target=\"local\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("backflow_last_success_timestamp_seconds"),
        "{text}"
    );

    // SIGTERM when idle: a clean exit.
    server.signal("-TERM");
    let status = server.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_refuses_an_open_address_without_a_token() {
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n");
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n",
    );
    let out = f
        .command(&["serve", "--listen", "0.0.0.0:0"])
        .env_remove("BACKFLOW_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BACKFLOW_API_TOKEN"), "{err}");
}

#[test]
fn check_refuses_bad_schedules_and_cycles() {
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n");
    let sync = |name: &str, extra: &str| {
        format!(
            "[syncs.{name}]\nfrom = \"people\"\nto = \"app\"\nobject = \"{name}\"\nbehavior = \"upsert\"\nkey = \"id\"\n{extra}\n"
        )
    };
    f.write(
        "backflow.toml",
        &format!(
            "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.app]\ntype = \"sqlite\"\npath = \"app.db\"\n\n{}{}{}{}{}",
            sync("a", "after = [\"b\"]"),
            sync("b", "after = [\"a\"]"),
            sync("c", "schedule = \"0 25 * * *\""),
            sync("d", "schedule = \"0 6 * * *\"\nschedule_tz = \"Europe/Berlinn\""),
            sync("e", "after = [\"ghost\"]"),
        ),
    );
    let (code, out, err) = f.cli(&["check", "--offline"]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("`after` makes a cycle: a → b → a"), "{err}");
    assert!(
        err.contains("\"0 25 * * *\" is not a valid cron line"),
        "{err}"
    );
    assert_eq!(err.matches("makes a cycle").count(), 1, "{err}");
    assert!(err.contains("Europe/Berlinn"), "{err}");
    assert!(
        err.contains("\"ghost\", which is no sync or entity"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_posted_while_a_run_goes_all_arrive_each_once() {
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=1000, "v1"));
    api_project(&f, &api, "");
    let server = Server::start(&f, &[], &[]);
    let (_, started) = server.post("/api/syncs/people/runs", Value::Null).await;
    let run = server.finished(started["run_id"].as_str().unwrap()).await;
    assert_eq!(run["counts"]["created"], 1000, "{run}");
    let before = api.log().len();

    // Every record changes; the app says so in 50 requests of 20 keys.
    f.write("people.csv", &csv(1..=1000, "v2"));
    for batch in 0..50u32 {
        let keys: Vec<Value> = (1..=20)
            .map(|i| {
                let id = batch * 20 + i;
                // Numbers and strings both name a key.
                if id % 2 == 0 {
                    Value::from(id)
                } else {
                    Value::from(id.to_string())
                }
            })
            .collect();
        let (status, body) = server
            .post(
                "/api/syncs/people/keys",
                serde_json::json!({ "keys": keys }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 20);
    }
    let started = Instant::now();
    loop {
        let v2 = api
            .records("people")
            .values()
            .filter(|r| r.to_string().contains("v2"))
            .count();
        let (_, summary) = server.get("/api/syncs/people").await;
        if v2 == 1000 && summary["keys_waiting"] == 0 && summary["state"] == "idle" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{v2} of 1000 arrived: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each changed record was sent once.
    let log = api.log();
    let mut sent: std::collections::BTreeMap<String, u32> = Default::default();
    for l in &log[before..] {
        if l.method == "PUT" {
            *sent.entry(l.path.clone()).or_default() += 1;
        }
    }
    assert_eq!(sent.len(), 1000);
    assert!(
        sent.values().all(|n| *n == 1),
        "{:?}",
        sent.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    // Nothing else ran: no run for the whole model (only keys runs and the first).
    let (_, runs) = server.get("/api/syncs/people/runs?limit=100").await;
    let runs = runs.as_array().unwrap();
    assert!(runs.len() >= 2, "{runs:#?}");
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");

    // A key the model no longer has is deleted by the mirror, only when named.
    f.write("people.csv", &csv(2..=999, "v2"));
    let (status, _) = server
        .post(
            "/api/syncs/people/keys",
            serde_json::json!({ "keys": [1, "77", 5000] }),
        )
        .await;
    assert_eq!(status, 202);
    let started = Instant::now();
    while api.records("people").contains_key("1") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "key 1 not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.records("people").contains_key("1000"),
        "a key not named was deleted"
    );
    assert_eq!(api.records("people").len(), 999);

    // Keys that are not keys of the sync.
    let (status, body) = server
        .post(
            "/api/syncs/people/keys",
            serde_json::json!({ "keys": [{"id": 1}] }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = server
        .post("/api/syncs/people/keys", serde_json::json!({ "ids": [1] }))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_accepted_before_a_sigkill_are_synced_after_the_restart() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=20, "v1"));
    api_project(&f, &api, "");
    let server = Server::start(&f, &[], &[]);
    let (_, started) = server.post("/api/syncs/people/runs", Value::Null).await;
    server.finished(started["run_id"].as_str().unwrap()).await;
    // The API answers slowly now: the keys run cannot finish before the kill.
    api.set_faults(Faults {
        latency: Duration::from_secs(3),
        ..Default::default()
    });
    f.write("people.csv", &csv(1..=20, "v2"));
    let (status, _) = server
        .post(
            "/api/syncs/people/keys",
            serde_json::json!({ "keys": [3, 4, 5] }),
        )
        .await;
    assert_eq!(status, 202);
    let mut server = server;
    server.signal("-KILL");
    server.wait(Duration::from_secs(10));
    drop(server);
    assert!(
        !api.records("people")["4"].to_string().contains("v2"),
        "sent before the kill: the test proves nothing"
    );
    api.set_faults(Faults::default());

    let server = Server::start(&f, &[], &[]);
    let started = Instant::now();
    loop {
        let records = api.records("people");
        let done = ["3", "4", "5"]
            .iter()
            .all(|k| records[*k].to_string().contains("v2"));
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the keys were lost: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only those keys: the others still have v1.
    assert!(api.records("people")["6"].to_string().contains("v1"));
    let (_, summary) = server.get("/api/syncs/people").await;
    let started = Instant::now();
    let mut summary = summary;
    while summary["keys_waiting"] != 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "{summary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        summary = server.get("/api/syncs/people").await.1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_exits_in_time_and_the_next_start_finishes_the_job() {
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=300, "v1"));
    api_project(&f, &api, "");
    let mut server = Server::start(&f, &["--shutdown-timeout", "20s"], &[]);
    let (_, started) = server.post("/api/syncs/people/runs", Value::Null).await;
    let id = started["run_id"].as_str().unwrap().to_string();
    let t = Instant::now();
    while api.log().len() < 5 {
        assert!(t.elapsed() < Duration::from_secs(60), "no requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    server.signal("-TERM");
    // While the run stops, the API still answers: stopping, and no new runs.
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(5) {
        let Ok(r) = server
            .request(reqwest::Method::GET, "/healthz")
            .send()
            .await
        else {
            break; // (already gone)
        };
        if r.json_value().await["status"] == "stopping" {
            if let Ok(r) = server
                .request(reqwest::Method::POST, "/api/syncs/local/runs")
                .send()
                .await
            {
                assert_eq!(r.status().as_u16(), 503);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = server.wait(Duration::from_secs(25));
    assert!(signalled.elapsed() < Duration::from_secs(21));
    assert_eq!(status.code(), Some(0));
    let sent = api.records("people").len();
    assert!(sent < 300, "the run was not stopped ({sent} sent)");
    let (code, out, _) = f.cli(&["history", "people", "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&id) && out.contains("\"status\":\"interrupted\""),
        "{out}"
    );
    drop(server);

    // The next start: one run leaves the destination equal to the model.
    let server = Server::start(&f, &[], &[]);
    let (_, started) = server.post("/api/syncs/people/runs", Value::Null).await;
    let run = server.finished(started["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let records = api.records("people");
    assert_eq!(records.len(), 300);
    assert!(records.values().all(|r| r.to_string().contains("v1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_state_never_run_a_sync_at_once() {
    let api = FakeApi::start(Faults {
        latency: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=10, "v1"));
    api_project(&f, &api, "schedule = \"every 1s\"");
    let one = Server::start(&f, &[], &[]);
    let two = Server::start(&f, &[], &[]);
    // Both tick every second; each run takes about a second.
    let runs = one
        .history_until("people", "runs of both", |runs| {
            runs.iter().filter(|r| r["status"] == "succeeded").count() >= 4
                && runs.iter().any(|r| r["status"] == "failed")
        })
        .await;
    drop((one, two));
    let refused: Vec<&Value> = runs.iter().filter(|r| r["status"] == "failed").collect();
    assert!(
        refused.iter().all(|r| r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already running")),
        "{refused:#?}"
    );
    assert_no_overlap(runs.iter().filter(|r| r["status"] == "succeeded"));
    assert_eq!(api.records("people").len(), 10);
}

/// schemathesis (PyPI) checks the live server against the OpenAPI document it serves: every
/// operation with generated valid and invalid inputs, the statuses, content types and response
/// bodies the document promises, and that the token is enforced. Its path is in
/// `BACKFLOW_TEST_SCHEMATHESIS` (`.ci/run` installs it); skipped without, except under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_to_its_openapi_document() {
    let Some(bin) = std::env::var_os("BACKFLOW_TEST_SCHEMATHESIS") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "BACKFLOW_TEST_SCHEMATHESIS is not set and CI=true (.ci/run installs schemathesis)"
            );
        }
        eprintln!("SKIPPED: schemathesis not installed (set BACKFLOW_TEST_SCHEMATHESIS)");
        return;
    };
    let f = Fixture::new();
    sync_and_entity_project(&f, &csv(1..=20, "v1"));
    let server = Server::start(&f, &[], &[("BACKFLOW_API_TOKEN", "schema-token")]);
    for path in ["/api/syncs/people/runs", "/api/entities/account/runs"] {
        let (status, started) = server.post(path, Value::Null).await;
        assert_eq!(status, 202, "{started}");
        let run = server.finished(started["run_id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    // Keys are checked against the sync's own key (a composite key is a list of its parts),
    // which the document's one schema for every sync cannot say: a key the sync cannot have is
    // refused with 400, which schemathesis would count as a valid request refused.
    f.write(
        "schemathesis.toml",
        "[[operations]]\ninclude-operation-id = \"post_keys\"\nchecks.positive_data_acceptance.enabled = false\n",
    );
    let config = f.path().join("schemathesis.toml");
    let dir = f.path().to_path_buf();
    let out = tokio::task::spawn_blocking({
        let url = server.url.clone();
        move || {
            std::process::Command::new(bin)
                .current_dir(dir)
                .arg("--config-file")
                .arg(config)
                .args([
                    "run",
                    &format!("{url}/api/openapi.json"),
                    "--header",
                    "Authorization: Bearer schema-token",
                    "--max-time",
                    "60",
                    // (One worker: with more, hypothesis 6's lambda descriptions race and
                    // schemathesis reports its own internal error now and then.)
                    "--workers",
                    "1",
                ])
                .env("SCHEMATHESIS_HOOKS", "")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the server differs from its document:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A webhook receiver on 127.0.0.1: keeps every JSON body; answers 500 to the first request
/// (deliveries are retried).
struct Webhook {
    url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, c) = (received.clone(), calls.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (r, c) = (r.clone(), c.clone());
                async move {
                    if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    r.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook { url, received }
    }

    fn of(&self, target: &str, condition: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["target"] == target && b["condition"] == condition)
            .count()
    }

    async fn until(&self, what: &str, check: impl Fn(&Webhook) -> bool) {
        let started = Instant::now();
        while !check(self) {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{what}: received {:#?}",
                self.received.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_go_out_once_per_transition_and_survive_a_restart() {
    let hook = Webhook::start().await;
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=5, "v1"));
    f.write(
        "backflow.toml",
        r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people]
from = "people"
to = "app"
object = "people"
behavior = "upsert"
key = "id"
schedule = "every 1s"

[syncs.forgotten]
from = "people"
to = "app"
object = "forgotten"
behavior = "upsert"
key = "id"

[alerts.oncall]
type = "webhook"
url_env = "BACKFLOW_TEST_WEBHOOK"
invalid_over = "20%"
no_success_for = "4s"
"#,
    );
    let env = [("BACKFLOW_TEST_WEBHOOK", hook.url.as_str())];
    let server = Server::start(&f, &[], &env);
    server
        .history_until("people", "a success", |r| {
            statuses(r).contains(&"succeeded")
        })
        .await;
    // A sync that never ran goes stale once.
    hook.until("staleness", |h| h.of("forgotten", "no_success_for") == 1)
        .await;

    // The upstream breaks: failing runs, one alert.
    std::fs::remove_file(f.path().join("people.csv")).unwrap();
    hook.until("a failure", |h| h.of("people", "failure") == 1)
        .await;
    server
        .history_until("people", "failures", |r| {
            statuses(r).iter().take_while(|s| **s == "failed").count() >= 3
        })
        .await;
    assert_eq!(hook.of("people", "failure"), 1);
    let text = hook
        .received
        .lock()
        .unwrap()
        .iter()
        .find(|b| b["condition"] == "failure")
        .unwrap()["text"]
        .clone();
    assert!(text.as_str().unwrap().contains("people.csv"), "{text}");

    // A restart does not alert again for the same failure.
    let mut server = server;
    server.signal("-TERM");
    server.wait(Duration::from_secs(30));
    drop(server);
    let server = Server::start(&f, &[], &env);
    server
        .history_until("people", "failures after the restart", |r| {
            statuses(r).iter().take_while(|s| **s == "failed").count() >= 6
        })
        .await;
    assert_eq!(hook.of("people", "failure"), 1);

    // Fixed, with 2 rows of 6 invalid (over 20%): one recovery, one invalid_over.
    f.write(
        "people.csv",
        "id,name\n1,a\n2,b\n3,c\n4,d\n,no key\n,no key either\n",
    );
    hook.until("recovery", |h| {
        h.of("people", "recovery") == 1 && h.of("people", "invalid_over") == 1
    })
    .await;
    server
        .history_until("people", "more successes", |r| {
            statuses(r)
                .iter()
                .take_while(|s| **s == "succeeded")
                .count()
                >= 3
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.of("people", "recovery"), 1);
    assert_eq!(hook.of("people", "invalid_over"), 1);
    assert_eq!(hook.of("people", "failure"), 1);
    assert_eq!(hook.of("forgotten", "no_success_for"), 1);

    // Every alert is recorded, the first after a retry.
    let (status, alerts) = server.get("/api/alerts?limit=100").await;
    assert_eq!(status, 200);
    let alerts = alerts.as_array().unwrap();
    assert!(alerts.iter().all(|a| a["delivered"] == true), "{alerts:#?}");
    assert!(alerts.iter().any(|a| a["attempts"] == 2), "{alerts:#?}");
    assert!(!serde_json::to_string(alerts).unwrap().contains(&hook.url));
}

#[test]
fn serve_names_an_alert_whose_url_variable_is_missing() {
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n");
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[alerts.team]\ntype = \"webhook\"\nurl_env = \"BACKFLOW_TEST_NO_SUCH_HOOK\"\n",
    );
    let out = f
        .command(&["serve", "--listen", "127.0.0.1:0"])
        .env_remove("BACKFLOW_TEST_NO_SUCH_HOOK")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alert \"team\"") && err.contains("BACKFLOW_TEST_NO_SUCH_HOOK"),
        "{err}"
    );
}

/// The page in a real browser: Debian's chromium driven by playwright-core (npm), from
/// `tests/browser/page.cjs`. `BACKFLOW_TEST_PLAYWRIGHT` is the `node_modules` folder holding
/// playwright-core (`.ci/run` installs it and chromium); skipped without, except under CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_runs_a_sync_and_shows_the_new_run_in_a_real_browser() {
    let Some(modules) = std::env::var_os("BACKFLOW_TEST_PLAYWRIGHT") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "BACKFLOW_TEST_PLAYWRIGHT is not set and CI=true (.ci/run installs playwright-core and chromium)"
            );
        }
        eprintln!("SKIPPED: playwright-core not installed (set BACKFLOW_TEST_PLAYWRIGHT)");
        return;
    };
    let f = Fixture::new();
    sync_and_entity_project(&f, "id,name\n1,Ada\n2,Bob\n3,Cy\n4,Di\n5,Ed\n,nobody\n");
    let server = Server::start(&f, &[], &[("BACKFLOW_API_TOKEN", "page-token")]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/page.cjs");
    let shots = f.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::task::spawn_blocking({
        let (url, shots) = (server.url.clone(), shots.clone());
        move || {
            std::process::Command::new("node")
                .arg(script)
                .arg(url)
                .arg("page-token")
                .arg(shots)
                .env("NODE_PATH", modules)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        seen["overview"],
        serde_json::json!(["account", "people"]),
        "{seen}"
    );
    // The new run's row: status, then read, created, updated, deleted, unchanged, rejected,
    // invalid.
    let cells = |k: &str| -> Vec<String> {
        seen[k]["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(seen["run_now"]["status"], "succeeded", "{seen}");
    assert_eq!(
        cells("run_now")[2..9],
        ["6", "5", "0", "0", "0", "0", "1"],
        "{seen}"
    );
    // Started by the page's button, through the API.
    assert_eq!(cells("run_now")[10], "api", "{seen}");
    assert!(
        seen["samples"][0][2].as_str().unwrap().contains("NULL"),
        "{seen}"
    );
    assert_eq!(seen["full_resync"]["status"], "succeeded", "{seen}");
    assert_eq!(cells("full_resync")[4], "5", "{seen}");
    assert_eq!(seen["entity_run"]["status"], "succeeded", "{seen}");
    assert!(
        seen["golden"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[0] == "name" && r[1] == "Acme" && r[2] == "crm"),
        "{seen}"
    );
    assert_eq!(f.sqlite("out/app.db", "people").len(), 5);
    assert!(shots.join("sync.png").exists());
    if let Some(keep) = std::env::var_os("BACKFLOW_TEST_SCREENSHOTS") {
        for png in ["overview.png", "sync.png", "entity.png"] {
            let _ = std::fs::copy(shots.join(png), std::path::Path::new(&keep).join(png));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_accepted_just_before_a_sigterm_are_synced_after_the_restart() {
    // A model large enough that opening it takes a while: the stop may come while the run for
    // the keys opens its sources, sends, or has not started; the keys must wait for the next
    // start whatever the moment.
    let f = Fixture::new();
    let rows = 200_000;
    f.write("people.csv", &csv(1..=rows, "v1"));
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.app]\ntype = \"sqlite\"\npath = \"out/app.db\"\n\n[syncs.people]\nfrom = \"people\"\nto = \"app\"\nobject = \"people\"\nbehavior = \"upsert\"\nkey = \"id\"\n",
    );
    let (code, _, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{err}");
    let mut model = csv(1..=rows, "v1");
    for (round, delay_ms) in [0u64, 300, 1500].into_iter().enumerate() {
        // This round's records change, and the app says so.
        let ids = [7 + round as u32, 70 + round as u32];
        for id in ids {
            model = model.replace(
                &format!("\n{id},name {id} v1\n"),
                &format!("\n{id},name {id} v2\n"),
            );
        }
        f.write("people.csv", &model);
        let mut server = Server::start(&f, &[], &[]);
        let (status, _) = server
            .post("/api/syncs/people/keys", serde_json::json!({ "keys": ids }))
            .await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.signal("-TERM");
        server.wait(Duration::from_secs(60));
        drop(server);

        let server = Server::start(&f, &[], &[]);
        let started = Instant::now();
        loop {
            let (_, summary) = server.get("/api/syncs/people").await;
            if summary["keys_waiting"] == 0 && summary["state"] == "idle" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{summary}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let table = f.sqlite("out/app.db", "people");
        let name =
            |id: u32| table.iter().find(|r| r["id"] == id.to_string()).unwrap()["name"].clone();
        for id in ids {
            assert_eq!(
                name(id),
                format!("name {id} v2"),
                "stop after {delay_ms} ms"
            );
        }
        assert_eq!(name(100), "name 100 v1");
        // No run in history "succeeded" without having run.
        let (_, runs) = server.get("/api/syncs/people/runs?limit=50").await;
        for r in runs.as_array().unwrap() {
            if r["status"] == "succeeded" {
                assert!(r["counts"]["read"].as_u64().unwrap() > 0, "{r}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_does_not_stop_the_server() {
    let f = Fixture::new();
    f.write("people.csv", &csv(1..=5, "v1"));
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.app]\ntype = \"sqlite\"\npath = \"out/app.db\"\n\n[syncs.people]\nfrom = \"people\"\nto = \"app\"\nobject = \"people\"\nbehavior = \"upsert\"\nkey = \"id\"\n",
    );
    // `serve 2>&1 | head -1`: the reader goes away after the first line.
    let mut child = f
        .command(&["serve", "--listen", "127.0.0.1:0", "-v"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
        while !first.contains("listening on http://") {
            first.clear();
            reader.read_line(&mut first).unwrap();
        }
    }
    let url = first[first.find("http://").unwrap()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let server = Server {
        child,
        url,
        token: None,
        client: reqwest::Client::new(),
    };
    for _ in 0..3 {
        let (status, started) = server.post("/api/syncs/people/runs", Value::Null).await;
        assert_eq!(status, 202, "{started}");
        let run = server.finished(started["run_id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
}

/// The value of `field` in a golden record as the API shows it.
fn golden_field<'a>(golden: &'a Value, field: &str) -> &'a Value {
    golden["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|f| f["field"] == field))
        .map_or(&Value::Null, |f| &f["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_posted_for_an_entity_source_are_read_now_whatever_its_watermark() {
    let f = Fixture::new();
    f.write(
        "crm.csv",
        "id,name,updated_at\n1,Acme,2026-01-01T00:00:00\n2,Globex,2026-01-01T00:00:00\n3,Initech,2026-02-01T00:00:00\n",
    );
    f.write(
        "backflow.toml",
        r#"
[sources.crm]
type = "csv"
path = "crm.csv"

[entities.account]
fields = { name = "text" }

[entities.account.sources.crm]
from = "crm"
id = "id"
watermark = "updated_at"
fields = { name = "name" }
"#,
    );
    let mut server = Server::start(&f, &[], &[]);
    let (status, started) = server.post("/api/entities/account/runs", Value::Null).await;
    assert_eq!(status, 202, "{started}");
    let run = server.finished(started["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counts"]["created"], 3, "{run}");

    // Two records change in the CRM, but their watermark does not move (a system that does
    // not keep it, a bulk fix): a scheduled read would not see them. The app names one.
    f.write(
        "crm.csv",
        "id,name,updated_at\n1,Acme Two,2026-01-01T00:00:00\n2,Globex Corp,2026-01-01T00:00:00\n3,Initech,2026-02-01T00:00:00\n",
    );
    let (status, body) = server
        .post(
            "/api/entities/account/sources/crm/ids",
            serde_json::json!({"ids": [2, "2", 404]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    let started = Instant::now();
    let runs = loop {
        let (_, runs) = server.get("/api/entities/account/runs?limit=10").await;
        let runs = runs.as_array().cloned().unwrap_or_default();
        if runs.len() >= 2 {
            break runs;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");
    // History keeps what started each run, and for how many ids (2 and 404: each once).
    assert_eq!(runs[0]["trigger"], "keys", "{runs:#?}");
    assert_eq!(runs[0]["keys"], 2, "{runs:#?}");
    assert_eq!(runs[1]["trigger"], "api", "{runs:#?}");
    assert_eq!(runs[0]["counts"]["read"], 1, "{runs:#?}");
    assert_eq!(runs[0]["counts"]["updated"], 1, "{runs:#?}");
    let (status, two) = server
        .get("/api/entities/account/golden?source=crm&id=2")
        .await;
    assert_eq!(status, 200, "{two}");
    assert_eq!(golden_field(&two, "name"), "Globex Corp", "{two}");
    let (_, one) = server
        .get("/api/entities/account/golden?source=crm&id=1")
        .await;
    assert_eq!(golden_field(&one, "name"), "Acme", "{one}");
    let (_, summary) = server.get("/api/entities/account").await;
    assert_eq!(summary["keys_waiting"], 0, "{summary}");

    // The source's position stayed where it was: a later read takes only the newest
    // watermark's record again, and record 1's change stays unseen (no one named it).
    let (_, started) = server.post("/api/entities/account/runs", Value::Null).await;
    let run = server.finished(started["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counts"]["read"], 1, "{run}");
    assert_eq!(run["counts"]["updated"], 0, "{run}");
    let (_, one) = server
        .get("/api/entities/account/golden?source=crm&id=1")
        .await;
    assert_eq!(golden_field(&one, "name"), "Acme", "{one}");

    // What is refused, and why.
    let (status, body) = server
        .post(
            "/api/entities/account/sources/erp/ids",
            serde_json::json!({"ids": [1]}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("crm"), "{body}");
    let (status, _) = server
        .post(
            "/api/entities/acount/sources/crm/ids",
            serde_json::json!({"ids": [1]}),
        )
        .await;
    assert_eq!(status, 404);
    for bad in [
        serde_json::json!({"ids": [1.5]}),
        serde_json::json!({"keys": [1]}),
        serde_json::json!([1]),
    ] {
        let (status, body) = server
            .post("/api/entities/account/sources/crm/ids", bad.clone())
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Ids whose run failed (the source is gone for a while) wait, across a restart, and are
    // read once it is back.
    let crm = std::fs::read_to_string(f.path().join("crm.csv")).unwrap();
    std::fs::remove_file(f.path().join("crm.csv")).unwrap();
    let (status, _) = server
        .post(
            "/api/entities/account/sources/crm/ids",
            serde_json::json!({"ids": ["1"]}),
        )
        .await;
    assert_eq!(status, 202);
    let started = Instant::now();
    loop {
        let (_, runs) = server.get("/api/entities/account/runs?limit=1").await;
        if runs[0]["trigger"] == "keys" && runs[0]["status"] == "failed" {
            assert_eq!(runs[0]["keys"], 1, "{runs}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{runs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.signal("-TERM");
    server.wait(Duration::from_secs(30));
    std::fs::write(f.path().join("crm.csv"), crm).unwrap();
    let server = Server::start(&f, &[], &[]);
    let started = Instant::now();
    loop {
        let (_, one) = server
            .get("/api/entities/account/golden?source=crm&id=1")
            .await;
        if golden_field(&one, "name") == "Acme Two" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{one}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, summary) = server.get("/api/entities/account").await;
    assert_eq!(summary["keys_waiting"], 0, "{summary}");
}
