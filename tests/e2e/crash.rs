//! A crash between the destination write and the state commit loses nothing: the next run
//! sends again what was not committed (at-least-once) and the destination ends equal to the
//! model. Needs the `failpoints` feature (the README's test command turns it on).

use crate::common::*;
#[cfg(feature = "failpoints")]
use backflow::history::RunStatus;

#[cfg(feature = "failpoints")]
const V1: &str = "id,email,name,plan\n1,a,Ada,pro\n2,b,Bob,free\n3,c,Cy,pro\n";
#[cfg(feature = "failpoints")]
const V2: &str = "id,email,name,plan\n1,a,Ada L.,pro\n3,c,Cy,pro\n4,d,Di,pro\n";

#[cfg(feature = "failpoints")]
fn expected_v2() -> Vec<(String, String)> {
    vec![
        ("1".into(), "Ada L.".into()),
        ("3".into(), "Cy".into()),
        ("4".into(), "Di".into()),
    ]
}

#[cfg(feature = "failpoints")]
async fn crash_then_recover(point: &str, sync: &str, panic: bool) {
    let f = Fixture::new();
    let t = {
        people_project(&f, "mirror", "");
        std::fs::read_to_string(f.path().join("backflow.toml")).unwrap()
    };
    f.write("backflow.toml", &t.replace("people_sync", sync));
    f.write("people.csv", V1);
    f.run_ok(sync).await;
    let manifests_before = f.manifests();

    f.write("people.csv", V2);
    let arg = if panic {
        format!("panic:{sync}")
    } else {
        sync.to_string()
    };
    let failpoints = FAILPOINTS.lock().await;
    fail::cfg(point, &format!("return({arg})")).unwrap();
    let outcome = {
        let path = f.path().to_path_buf();
        let sync = sync.to_string();
        tokio::spawn(async move {
            let project = backflow::Project::load(&path).unwrap();
            let ctx = project.session().await.unwrap();
            backflow::sync::run(
                &project,
                &ctx,
                &sync,
                Default::default(),
                std::sync::Arc::new(backflow::sync::NoProgress),
            )
            .await
        })
        .await
    };
    fail::remove(point);
    drop(failpoints);
    match outcome {
        Ok(report) => {
            assert!(!panic);
            assert_eq!(report.status, RunStatus::Failed, "{report:?}");
            assert!(report.error.unwrap().contains(point));
        }
        Err(join) => assert!(panic && join.is_panic()),
    }
    // The state did not move.
    assert_eq!(f.manifests(), manifests_before);

    let r = f.run_ok(sync).await;
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name"),
        expected_v2()
    );
    assert_eq!(r.counts.read, 3);
    // And the run after is clean.
    let r = f.run_ok(sync).await;
    assert_eq!(cudu(&r), (0, 0, 0, 3));
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn crash_after_destination_write_before_commit() {
    crash_then_recover("before_commit", "crash_before_commit", false).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn panic_after_destination_write_before_commit() {
    crash_then_recover("before_commit", "panic_before_commit", true).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn crash_after_first_batch() {
    crash_then_recover("after_batch", "crash_after_batch", false).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn panic_after_first_batch() {
    crash_then_recover("after_batch", "panic_after_batch", true).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn crash_after_diff() {
    crash_then_recover("after_diff", "crash_after_diff", false).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn crash_after_commit_is_already_durable() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &t.replace("people_sync", "crash_after_commit"),
    );
    f.write("people.csv", V1);
    let failpoints = FAILPOINTS.lock().await;
    fail::cfg("after_commit", "return(crash_after_commit)").unwrap();
    let r = f
        .run_with(&["crash_after_commit"], Default::default())
        .await
        .remove(0);
    fail::remove("after_commit");
    drop(failpoints);
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(f.manifests().len(), 1);
    let r = f.run_ok("crash_after_commit").await;
    assert_eq!(r.counts.unchanged, 3);
}

#[tokio::test]
async fn concurrent_runs_of_one_sync_never_interleave() {
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let t = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write("backflow.toml", &t.replace("people_sync", "concurrent"));
    let mut csv = String::from("id,email,name,plan\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{i},e{i},n{i},p\n"));
    }
    f.write("people.csv", &csv);
    let mut handles = Vec::new();
    for _ in 0..4 {
        let path = f.path().to_path_buf();
        handles.push(tokio::spawn(async move {
            let project = backflow::Project::load(&path).unwrap();
            let ctx = project.session().await.unwrap();
            backflow::sync::run(
                &project,
                &ctx,
                "concurrent",
                Default::default(),
                std::sync::Arc::new(backflow::sync::NoProgress),
            )
            .await
        }));
    }
    let mut succeeded = 0;
    for h in handles {
        let r = h.await.unwrap();
        match &r.error {
            None => succeeded += 1,
            Some(e) => assert!(e.contains("already running"), "{e}"),
        }
    }
    assert!(succeeded >= 1);
    // One version per successful run, no gaps, and the destination equals the model.
    let project = f.load().unwrap();
    let latest = project.state.latest("concurrent").await.unwrap().unwrap();
    assert_eq!(latest.version, succeeded);
    assert_eq!(latest.rows, 20_000);
    assert_eq!(f.sqlite("out/app.db", "people").len(), 20_000);
}

/// Real process kills: `backflow run` as a child process, killed with SIGKILL at pseudo-random
/// moments while the model keeps changing; after a clean run the destination equals the model
/// (no gaps, no duplicates) and the state loads without repair.
#[cfg(unix)]
#[tokio::test]
async fn sigkill_at_random_moments_loses_nothing() {
    use std::time::Duration;
    let f = Fixture::new();
    people_project(&f, "mirror", "");
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut model: std::collections::BTreeMap<u64, u64> = (0..3000).map(|i| (i, 0)).collect();
    let (mut killed, mut finished) = (0, 0);
    for round in 1..=30u64 {
        // Change, add and remove some rows.
        for _ in 0..200 {
            let k = next() % 4000;
            if next() % 5 == 0 {
                model.remove(&k);
            } else {
                model.insert(k, round);
            }
        }
        let mut csv = String::from("id,email,name,plan\n");
        for (k, v) in &model {
            csv.push_str(&format!("{k},e{k},v{v},p\n"));
        }
        f.write("people.csv", &csv);
        let mut child = f
            .command(&["run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(next() % 120)).await;
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap();
                killed += 1;
            }
        }
        child.wait().unwrap();
    }
    eprintln!("sigkill: {killed} runs killed, {finished} finished");
    assert!(
        killed >= 5,
        "only {killed} of 30 runs were killed: the test proved little"
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.read as usize, model.len());
    let got: Vec<(u64, String)> = f
        .sqlite("out/app.db", "people")
        .iter()
        .map(|m| (m["id"].parse().unwrap(), m["name"].clone()))
        .collect();
    let mut got = got;
    got.sort();
    let want: Vec<(u64, String)> = model.iter().map(|(k, v)| (*k, format!("v{v}"))).collect();
    assert_eq!(got.len(), want.len(), "rows lost or duplicated");
    assert_eq!(got, want);
}

/// A newest manifest lost or torn after the destination took the run's changes (a power cut
/// before the disk flushed): the last intact version is used and the changes since are sent
/// again, so the destination still ends equal to the model.
#[tokio::test]
async fn a_torn_newest_manifest_falls_back_and_resends() {
    let f = people_fixture(
        "mirror",
        "",
        "id,email,name,plan\n1,a,Ada,pro\n2,b,Bob,free\n3,c,Cy,pro\n",
    );
    f.run_ok("people_sync").await;
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a,Ada L.,pro\n3,c,Cy,pro\n4,d,Di,pro\n",
    );
    f.run_ok("people_sync").await;
    let newest = f.manifests().pop().unwrap();
    let text = std::fs::read_to_string(&newest).unwrap();
    std::fs::write(&newest, &text[..text.len() / 3]).unwrap();
    // Someone also reverted the destination to what it held before the second run.
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute_batch(
        "DELETE FROM people; INSERT INTO people (id, email, name, plan) VALUES \
         (1, 'a', 'Ada', 'pro'), (2, 'b', 'Bob', 'free'), (3, 'c', 'Cy', 'pro');",
    )
    .unwrap();
    let r = f.run_ok("people_sync").await;
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (1, 1, 1),
        "the changes since the intact version are sent again: {r:?}"
    );
    assert_eq!(
        pairs(&f.sqlite("out/app.db", "people"), "id", "name"),
        vec![
            ("1".into(), "Ada L.".into()),
            ("3".into(), "Cy".into()),
            ("4".into(), "Di".into())
        ]
    );
    // A version number is never reused: the torn file stays until vacuumed.
    assert!(r.state_version.unwrap() >= 3);
}

/// State in an object store has no file lock: a run holds a lease instead (renewed while it
/// goes), and the create-if-absent put of each manifest still decides. Runs started together:
/// one runs, the others are told it is already running. A run frozen past its lease (its
/// renewals stopped): another takes the expired lease over and commits; the frozen one wakes,
/// finds its lease gone and commits nothing. No key's state goes backwards.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_on_object_store_state_hold_a_lease_and_a_frozen_run_commits_nothing() {
    let f = Fixture::new();
    let shared: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(object_store::memory::InMemory::new());
    overlapping_runs(&f, "memory:///shared", "overlap", shared).await;
}

/// A project of one mirror sync, `sync`, with its state at `state` (an object-store URL) read
/// and written through `shared`, run as above: four runs together, one frozen past its lease.
/// The sync's name names its failpoint, so use one no other test uses.
#[cfg(feature = "failpoints")]
pub async fn overlapping_runs(
    f: &Fixture,
    state: &str,
    sync: &'static str,
    shared: std::sync::Arc<dyn object_store::ObjectStore>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    f.write(
        "backflow.toml",
        &format!(
            r#"
[state]
path = "{state}"
lease = "3s"

[sources.people]
type = "csv"
path = "people.csv"

[destinations.app]
type = "sqlite"
path = "out/app.db"

[syncs.{sync}]
from = "people"
to = "app"
object = "people"
behavior = "mirror"
key = "id"
"#
        ),
    );
    let start = |path: std::path::PathBuf, shared: Arc<dyn object_store::ObjectStore>| {
        tokio::spawn(async move {
            let mut project = backflow::Project::load(&path).unwrap();
            project.state =
                backflow::state::StateStore::with_store(project.state.location().clone(), shared)
                    .unwrap()
                    .with_lease_ttl(Duration::from_secs(3));
            let ctx = project.session().await.unwrap();
            backflow::sync::run(
                &project,
                &ctx,
                sync,
                Default::default(),
                Arc::new(backflow::sync::NoProgress),
            )
            .await
        })
    };
    let failpoint = format!("before_commit:{sync}");
    // Runs reaching their commit wait there: the first `pause_first` ms when given, else all.
    let pause = |ms: u64, only_first: bool| {
        let arrived = Arc::new(AtomicUsize::new(0));
        fail::cfg_callback(failpoint.as_str(), move || {
            if !only_first || arrived.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
        })
        .unwrap();
    };
    let store = || {
        let project = backflow::Project::load(f.path()).unwrap();
        backflow::state::StateStore::with_store(project.state.location().clone(), shared.clone())
            .unwrap()
    };
    let _failpoints = FAILPOINTS.lock().await;

    // Four runs started together: one holds the lease, the others are turned away.
    f.write("people.csv", &numbered_csv(500, "a"));
    pause(1500, false);
    let runs: Vec<_> = (0..4)
        .map(|_| start(f.path().to_path_buf(), shared.clone()))
        .collect();
    let mut outcomes = Vec::new();
    for r in runs {
        outcomes.push(r.await.unwrap());
    }
    fail::remove(failpoint.as_str());
    let won: Vec<_> = outcomes.iter().filter(|r| r.error.is_none()).collect();
    assert_eq!(won.len(), 1, "{outcomes:#?}");
    assert_eq!(won[0].state_version, Some(1));
    for r in outcomes.iter().filter(|r| r.error.is_some()) {
        let e = r.error.clone().unwrap();
        assert!(
            e.contains("is already running") && e.contains("lease"),
            "{e}"
        );
    }

    // The commit itself is create-if-absent in the store: version 1 cannot be written twice.
    let committed = store().latest(sync).await.unwrap().unwrap();
    assert_eq!((committed.version, committed.rows), (1, 500));
    let again = store().commit(&committed).await.unwrap_err().to_string();
    assert!(again.contains("committed state version 1 first"), "{again}");

    // A run frozen at its commit past its lease; another takes the lease over meanwhile.
    f.write("people.csv", &numbered_csv(400, "b"));
    fail::cfg("lease_renew", "return").unwrap();
    pause(5000, true);
    let frozen = start(f.path().to_path_buf(), shared.clone());
    tokio::time::sleep(Duration::from_millis(3800)).await;
    let other = start(f.path().to_path_buf(), shared.clone()).await.unwrap();
    let frozen = frozen.await.unwrap();
    fail::remove(failpoint.as_str());
    fail::remove("lease_renew");
    assert_eq!(other.error, None, "{other:#?}");
    assert_eq!(other.state_version, Some(2));
    let e = frozen.error.clone().unwrap_or_default();
    assert!(e.contains("lost its lease"), "{frozen:#?}");
    let state = store().latest(sync).await.unwrap().unwrap();
    assert_eq!((state.version, state.rows), (2, 400));

    // The next run (re-checking what the frozen one sent) leaves the table equal to the model.
    let clean = start(f.path().to_path_buf(), shared.clone()).await.unwrap();
    assert_eq!(clean.error, None, "{clean:#?}");
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(rows.len(), 400);
    assert!(rows.iter().all(|r| r["name"].starts_with('b')));
    assert_eq!(store().latest(sync).await.unwrap().unwrap().rows, 400);
}
