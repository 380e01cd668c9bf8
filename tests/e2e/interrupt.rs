//! SIGINT and SIGTERM during `backflow run`: the sync in progress stops at the next safe point
//! and is recorded as `interrupted`, the syncs after it are not started, the exit code is 130,
//! and the next run ends with exactly the model in the destination. Clean-copy folders that a
//! killed run left in the project are removed by the next command.

use std::time::{Duration, Instant};

use crate::common::api::{FakeApi, Faults};
use crate::common::*;

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stops_the_run_at_a_safe_point_and_records_it_as_interrupted() {
    for signal in ["-INT", "-TERM"] {
        let api = FakeApi::start(Faults {
            latency: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        let f = Fixture::new();
        let mut csv = String::from("id,name\n");
        for id in 1..=60 {
            csv.push_str(&format!("{id},name {id}\n"));
        }
        f.write("people.csv", &csv);
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

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.people]
from = "people"
to = "api"
object = "people"
behavior = "upsert"
key = "id"

[syncs.later]
from = "people"
to = "app"
object = "people"
behavior = "upsert"
key = "id"
"#,
                url = api.url()
            ),
        );
        let mut child = f
            .command(&["run", "people", "later"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once a few records have arrived, the signal.
        let started = Instant::now();
        while api.log().len() < 3 {
            assert!(started.elapsed() < Duration::from_secs(60), "no requests");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let killed = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::task::block_in_place(|| {
            wait_or_kill(
                &mut child,
                Duration::from_secs(60),
                &format!("run after {signal}"),
            )
        });
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        let sent = api.records("people").len();
        assert!(
            sent < 60,
            "{signal}: the run was not stopped early ({sent} sent)"
        );

        let (code, out, err) = f.cli(&["history", "people", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("\"status\":\"interrupted\""), "{out}");
        assert!(
            f.manifests().is_empty(),
            "nothing committed: {:?}",
            f.manifests()
        );
        assert!(
            !f.path().join("out/app.db").exists(),
            "the sync after the interrupted one was started"
        );

        // The next run ends with exactly the model.
        let reports = f.run_with(&["people", "later"], Default::default()).await;
        assert!(
            reports
                .iter()
                .all(|r| r.status == backflow::history::RunStatus::Succeeded),
            "{reports:?}"
        );
        assert_eq!(api.records("people").len(), 60);
        assert_eq!(f.sqlite("out/app.db", "people").len(), 60);
    }
}

#[test]
fn clean_copies_a_dead_run_left_are_removed_by_the_next_command() {
    let f = Fixture::new();
    f.write("people.csv", "id,name\n1,a\n");
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n",
    );
    // No process has this id (above Linux's largest pid); this test's process is alive.
    let dead = f.path().join(".backflow-clean-4194305-abc123");
    let alive = f
        .path()
        .join(format!(".backflow-clean-{}-def456", std::process::id()));
    for d in [&dead, &alive] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("people.csv"), "id,name\n").unwrap();
    }
    let (code, _, err) = f.cli(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !dead.exists(),
        "the dead run's clean copies are still there"
    );
    assert!(alive.exists(), "a live run's clean copies were removed");
}
