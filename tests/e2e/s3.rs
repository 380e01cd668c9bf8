//! Object storage for real: sources, file destinations and the state on an S3-compatible server
//! (moto, see `common/s3.rs`), reached the way a user reaches S3: `s3://` URLs and credentials in
//! the environment of the `backflow` process.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::s3::S3Server;
use crate::common::{Fixture, numbered_csv, sqlite_rows};

fn backflow(f: &Fixture, s3: &S3Server, args: &[&str]) -> Command {
    let mut c = f.command(args);
    for (k, v) in s3.env() {
        c.env(k, v);
    }
    c
}

/// Run `backflow run --json` against the server: exit code, one JSON report per sync (by
/// name), stderr.
fn run(
    f: &Fixture,
    s3: &S3Server,
    extra_env: &[(&str, &str)],
) -> (i32, BTreeMap<String, serde_json::Value>, String) {
    let mut c = backflow(f, s3, &["run", "--json"]);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out = c.output().expect("run backflow");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["sync"].as_str().unwrap_or_default().to_string(), v)
        })
        .collect();
    (
        out.status.code().unwrap_or(-1),
        reports,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn parquet_rows(file: bytes::Bytes) -> usize {
    parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum()
}

fn counts(r: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    (n("created"), n("updated"), n("deleted"), n("unchanged"))
}

/// The bundled example, copied with its sources, file outputs and state moved to the bucket.
async fn example_on_s3(f: &Fixture, s3: &S3Server) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/example");
    for file in ["people.csv", "accounts.parquet"] {
        s3.put(
            &format!("example/in/{file}"),
            std::fs::read(example.join(file)).unwrap(),
        )
        .await;
    }
    for model in ["customers.sql", "accounts_summary.sql"] {
        let sql = std::fs::read_to_string(example.join("models").join(model)).unwrap();
        f.write(&format!("models/{model}"), &sql);
    }
    let toml = std::fs::read_to_string(example.join("backflow.toml"))
        .unwrap()
        .replace(
            "path = \"people.csv\"",
            &format!("path = \"{}\"", s3.url("example/in/people.csv")),
        )
        .replace(
            "path = \"accounts.parquet\"",
            &format!("path = \"{}\"", s3.url("example/in/accounts.parquet")),
        )
        .replace(
            "path = \"out\"",
            &format!("path = \"{}\"", s3.url("example/out")),
        );
    assert_eq!(toml.matches("s3://").count(), 4, "{toml}");
    f.write(
        "backflow.toml",
        &format!(
            "[state]\npath = \"{}\"\nlease = \"3s\"\n\n{toml}",
            s3.url("example/state")
        ),
    );
}

#[tokio::test]
async fn the_bundled_example_runs_with_its_files_and_state_on_s3() {
    let Some(s3) = S3Server::start("example-bucket").await else {
        return;
    };
    let f = Fixture::new();
    example_on_s3(&f, &s3).await;
    let (code, out, _) = {
        let o = backflow(&f, &s3, &["check"]).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out}");

    let (code, first, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{first:#?}\n{err}");
    assert_eq!(counts(&first["paying_to_app"]), (5, 0, 0, 0));
    assert_eq!(counts(&first["customers_to_lake"]).0, 7);
    assert_eq!(
        sqlite_rows(&f.path().join("out/app.db"), "customers").len(),
        5
    );
    let rows = parquet_rows(s3.get("example/out/customers.parquet").await.unwrap());
    assert_eq!(rows, 7);
    let csv = s3.get("example/out/accounts_summary.csv").await.unwrap();
    let summary = String::from_utf8_lossy(&csv).to_string();
    assert!(summary.starts_with("company,"), "{summary}");
    // The state is in the bucket, and no lease or probe object is left behind.
    let state = s3.keys("example/state").await;
    assert!(
        state
            .iter()
            .any(|k| k.contains("syncs/paying_to_app/_manifests/")),
        "{state:#?}"
    );
    assert!(!state.iter().any(|k| k.contains("/locks/")), "{state:#?}");
    assert!(!f.path().join(".backflow").exists());

    // Nothing changed: nothing is sent.
    let (code, second, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(counts(&second["paying_to_app"]), (0, 0, 0, 5));
    assert_eq!(counts(&second["accounts_to_csv"]).0, 0);

    // One customer stops paying and one is added in the bucket's export: only they move.
    let people = String::from_utf8_lossy(&s3.get("example/in/people.csv").await.unwrap()).replace(
        "1,ada@analytical.io,Ada Lovelace,Analytical Engines,pro,",
        "1,ada@analytical.io,Ada Lovelace,Analytical Engines,free,",
    ) + "99,kay@xerox.com,Alan Kay,Xerox PARC,pro,300.0,2026-02-01T00:00:00\n";
    s3.put("example/in/people.csv", people.into_bytes()).await;
    let (code, third, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(counts(&third["paying_to_app"]), (1, 0, 1, 4));
    let app = sqlite_rows(&f.path().join("out/app.db"), "customers");
    assert_eq!(app.len(), 5);
    assert!(app.iter().any(|r| r["email"] == "kay@xerox.com"));
    assert!(!app.iter().any(|r| r["email"] == "ada@analytical.io"));
    let rows = parquet_rows(s3.get("example/out/customers.parquet").await.unwrap());
    assert_eq!(rows, 8);

    // history reads the runs back from the bucket.
    let o = backflow(&f, &s3, &["history", "paying_to_app", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let history = String::from_utf8_lossy(&o.stdout);
    assert_eq!(history.matches("\"run_id\"").count(), 3, "{history}");
}

#[tokio::test]
async fn a_glob_of_parquet_objects_feeds_a_change_feed_in_the_bucket() {
    let Some(s3) = S3Server::start("feed-bucket").await else {
        return;
    };
    let f = Fixture::new();
    let part = |rows: &[(i64, &str)]| {
        let batch = arrow::record_batch::RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(arrow::array::Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )) as arrow::array::ArrayRef,
            ),
            (
                "name",
                Arc::new(arrow::array::StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )) as arrow::array::ArrayRef,
            ),
        ])
        .unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        buf
    };
    s3.put("in/part-1.parquet", part(&[(1, "Ada"), (2, "Grace")]))
        .await;
    s3.put("in/part-2.parquet", part(&[(3, "Alan")])).await;
    s3.put("in/other.parquet", part(&[(9, "not in the glob")]))
        .await;
    // A name holding `=` matches like any other; a file in a subfolder is not in the glob.
    s3.put("in/part-k=v.parquet", part(&[(4, "Kay")])).await;
    s3.put(
        "in/date=2026/part-5.parquet",
        part(&[(8, "in a subfolder")]),
    )
    .await;
    f.write(
        "backflow.toml",
        &format!(
            r#"
[state]
path = "{state}"

[sources.people]
type = "parquet"
path = "{glob}"

[destinations.feed]
type = "file"
path = "{out}"
format = "jsonl"
mode = "changes"

[syncs.people_feed]
from = "people"
to = "feed"
object = "people"
behavior = "mirror"
key = "id"
"#,
            state = s3.url("state"),
            glob = s3.url("in/part-*.parquet"),
            out = s3.url("out"),
        ),
    );
    let (code, first, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(counts(&first["people_feed"]), (4, 0, 0, 0));
    s3.put("in/part-2.parquet", part(&[(3, "Alan Turing")]))
        .await;
    s3.put("in/part-1.parquet", part(&[(1, "Ada")])).await;
    let (code, second, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(counts(&second["people_feed"]), (0, 1, 1, 2));
    let feed = s3.keys("out/people").await;
    assert_eq!(feed.len(), 2, "{feed:#?}");
    let last = String::from_utf8_lossy(&s3.get(&feed[1]).await.unwrap()).to_string();
    let mut lines: Vec<&str> = last.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{last}");
    assert!(
        lines[0].contains("\"id\":2") && lines[0].contains("delete"),
        "{last}"
    );
    assert!(
        lines[1].contains("Alan Turing") && lines[1].contains("\"id\":3"),
        "{last}"
    );
}

/// A killed run leaves its lease to expire; the next run after it finishes the job, and the
/// destination ends equal to the model whatever moment the kill came at.
#[tokio::test]
async fn runs_killed_at_random_moments_on_s3_state_lose_nothing() {
    let Some(s3) = S3Server::start("kill-bucket").await else {
        return;
    };
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        &format!(
            r#"
[state]
path = "{state}"
lease = "3s"

[sources.people]
type = "csv"
path = "{people}"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[destinations.lake]
type = "file"
path = "{out}"
format = "csv"

[syncs.to_app]
from = "people"
to = "app"
object = "people"
behavior = "mirror"
key = "id"

[syncs.to_lake]
from = "people"
to = "lake"
object = "people.csv"
behavior = "mirror"
key = "id"
"#,
            state = s3.url("state"),
            people = s3.url("people.csv"),
            out = s3.url("out"),
        ),
    );
    let mut tag = String::new();
    for (round, delay_ms) in [150u64, 400, 700, 1000, 1500, 2500].into_iter().enumerate() {
        tag = format!("r{round}-");
        s3.put(
            "people.csv",
            numbered_csv(5_000 + round * 300, &tag).into_bytes(),
        )
        .await;
        let mut child = backflow(&f, &s3, &["run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        let _ = child.wait();
    }
    // The last kill may have left a lease: the run after it waits it out.
    let mut last = None;
    for _ in 0..20 {
        let (code, reports, err) = run(&f, &s3, &[]);
        if code == 0 {
            last = Some(reports);
            break;
        }
        assert!(
            err.contains("already running")
                || reports.values().any(|r| r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("already running"))),
            "{reports:#?}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = last.expect("a run after the kills succeeds once the lease expires");
    assert!(last["to_app"]["error"].is_null(), "{last:#?}");
    let n = 5_000 + 5 * 300;
    let app = sqlite_rows(&f.path().join("out/app.db"), "people");
    assert_eq!(app.len(), n);
    assert!(app.iter().all(|r| r["name"].starts_with(&tag)));
    let lake = String::from_utf8_lossy(&s3.get("out/people.csv").await.unwrap()).to_string();
    assert_eq!(lake.lines().count(), n + 1);
    assert!(lake.lines().skip(1).all(|l| l.contains(&tag)), "{lake}");
    // And the state agrees: one more run sends nothing.
    let (code, again, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(counts(&again["to_app"]), (0, 0, 0, n as u64));
    assert_eq!(counts(&again["to_lake"]), (0, 0, 0, n as u64));
}

/// The lease and the create-if-absent commit against the server (see `crash.rs`): four runs
/// together, one runs; version 1 cannot be committed twice; a run frozen past its lease
/// commits nothing.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_on_s3_state_hold_a_lease_and_commit_each_version_once() {
    let Some(s3) = S3Server::start("lease-bucket").await else {
        return;
    };
    let f = Fixture::new();
    crate::e2e::crash::overlapping_runs(&f, &s3.url("state"), "s3_overlap", s3.store()).await;
}

/// A small S3 front that drops the conditional headers (If-None-Match, If-Match) before passing
/// each request on: an S3-compatible server that ignores conditional writes.
async fn unconditional_proxy(upstream: String) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let url = format!(
                "{upstream}{}",
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut headers = parts.headers.clone();
            headers.remove("if-none-match");
            headers.remove("if-match");
            headers.remove("host");
            let got = client
                .request(parts.method, url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let mut out = Response::builder().status(got.status());
            for (k, v) in got.headers() {
                if k != "content-length" && k != "transfer-encoding" {
                    out = out.header(k, v);
                }
            }
            out.body(Body::from(got.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_conditional_writes_is_refused_before_anything_runs() {
    let Some(s3) = S3Server::start("plain-bucket").await else {
        return;
    };
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,Ada\n");
    f.write(
        "backflow.toml",
        &format!(
            r#"
[state]
path = "{state}"

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
behavior = "mirror"
key = "id"
"#,
            state = s3.url("state")
        ),
    );
    // The client told not to write conditionally.
    let (code, reports, err) = run(&f, &s3, &[("AWS_CONDITIONAL_PUT", "disabled")]);
    assert_ne!(code, 0);
    let e = reports["people"]["error"]
        .as_str()
        .unwrap_or(&err)
        .to_string();
    assert!(
        e.contains("cannot hold backflow's state") && e.contains("AWS_CONDITIONAL_PUT"),
        "{e}"
    );
    assert!(!f.path().join("out/app.db").exists());

    // A server that takes If-None-Match and ignores it (the proxy runs on another worker
    // while `run` waits for the process).
    let proxy = unconditional_proxy(s3.endpoint.clone()).await;
    let (code, reports, err) = run(&f, &s3, &[("AWS_ENDPOINT_URL", &proxy)]);
    assert_ne!(code, 0);
    let e = reports["people"]["error"]
        .as_str()
        .unwrap_or(&err)
        .to_string();
    assert!(e.contains("ignores If-None-Match"), "{e}\n{err}");
    assert!(!f.path().join("out/app.db").exists());
    // No probe object is left in the bucket.
    assert!(s3.keys("state/locks").await.is_empty());

    // The same server with conditional writes runs it.
    let (code, reports, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{reports:#?}\n{err}");
    assert_eq!(counts(&reports["people"]), (1, 0, 0, 0));
}

/// A run that resumes after another writer replaced its snapshot file (a newer run, while this
/// one was frozen past its lease) must not overwrite it: the upload is conditional on the
/// version the run read, so it fails and the newer file stays.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_stale_run_cannot_overwrite_a_snapshot_file_a_newer_run_wrote() {
    use std::io::BufRead;
    let Some(s3) = S3Server::start("stale-bucket").await else {
        return;
    };
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,Ada\n2,Bob\n");
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.people]
type = "csv"
path = "people.csv"

[destinations.lake]
type = "file"
path = "{out}"
format = "csv"

[syncs.people]
from = "people"
to = "lake"
object = "people.csv"
behavior = "mirror"
key = "id"
"#,
            out = s3.url("out")
        ),
    );
    let (code, _, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{err}");
    f.write("people.csv", "id,name\n1,Ada L.\n3,Cy\n");
    let mut child = backflow(&f, &s3, &["run", "-v", "--json"])
        .env("FAILPOINTS", "file_before_put=sleep(6000)")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the run has read the file and is about to upload, another writer replaces it.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("diff and apply done") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run reaches its destination's finish");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let newer = "id,name\n1,Ada (newer run)\n3,Cy\n";
    s3.put("out/people.csv", newer.as_bytes().to_vec()).await;
    let out = child.wait_with_output().unwrap();
    let log = reader.join().unwrap();
    assert!(!out.status.success(), "{log}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("the file changed since this run read it"),
        "{report}\n{log}"
    );
    let kept = s3.get("out/people.csv").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&kept), newer);
    // The next run goes on from the last commit and makes the file equal to the model.
    let (code, reports, err) = run(&f, &s3, &[]);
    assert_eq!(code, 0, "{reports:#?}\n{err}");
    let file = String::from_utf8_lossy(&s3.get("out/people.csv").await.unwrap()).to_string();
    let mut lines: Vec<&str> = file.lines().skip(1).collect();
    lines.sort();
    assert_eq!(lines, vec!["1,Ada L.", "3,Cy"], "{file}");
}
