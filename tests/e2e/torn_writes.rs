//! Torn and lost writes: a storage wrapper (tests/common/faulty.rs) makes one write of a run
//! arrive cut short, empty, or not at all while reporting success — at every write a run makes,
//! in turn. Each such run either fails before committing (the write is read back and found
//! wanting) or commits state that is whole; the next runs on a sound storage then end with the
//! destination equal to the model and the state readable without repair.

use std::sync::Arc;

use backflow::history::RunStatus;
use backflow::state::StateStore;
use backflow::sync::{NoProgress, RunOptions};
use object_store::local::LocalFileSystem;

use crate::common::faulty::{Fault, FaultyStore};
use crate::common::*;

/// Run `sync` with the project's state behind `store`; returns the run's status and error.
async fn run_through(f: &Fixture, sync: &str, store: FaultyStore) -> (RunStatus, Option<String>) {
    let mut project = f.load().unwrap();
    project.state =
        StateStore::with_store(project.state.location().clone(), Arc::new(store)).unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::sync::run(
        &project,
        &ctx,
        sync,
        RunOptions::default(),
        Arc::new(NoProgress),
    )
    .await;
    (r.status, r.error)
}

fn sound() -> Arc<LocalFileSystem> {
    Arc::new(LocalFileSystem::new())
}

const V1: &str = "id,email,name,plan\n1,a,Ada,pro\n2,b,Bob,free\n3,c,Cy,pro\n";
const V2: &str = "id,email,name,plan\n1,a,Ada L.,pro\n3,c,Cy,team\n4,d,Di,pro\n";
const V3: &str = "id,email,name,plan\n1,a,Ada L.,pro\n4,d,Di,free\n5,e,Eve,pro\n";

fn names(f: &Fixture) -> Vec<(String, String)> {
    pairs(&f.sqlite("out/app.db", "people"), "id", "name")
}

#[tokio::test]
async fn a_torn_or_lost_state_write_is_caught_and_nothing_is_lost() {
    // How many writes a run of v2 makes.
    let probe = Fixture::new();
    people_project(&probe, "mirror", "");
    probe.write("people.csv", V1);
    probe.run_ok("people_sync").await;
    probe.write("people.csv", V2);
    let counter = FaultyStore::new(sound(), None);
    let (status, _) = run_through(&probe, "people_sync", counter.clone()).await;
    assert_eq!(status, RunStatus::Succeeded);
    let writes = counter.plan.lock().unwrap().writes.clone();
    assert!(writes.len() >= 5, "{writes:#?}");

    let (mut caught, mut whole) = (0, 0);
    for at in 0..writes.len() {
        for fault in [Fault::Torn(0.5), Fault::Torn(0.0), Fault::Lost] {
            let f = people_fixture("mirror", "", V1);
            f.run_ok("people_sync").await;
            f.write("people.csv", V2);
            let store = FaultyStore::new(sound(), Some((at, fault)));
            let (status, error) = run_through(&f, "people_sync", store.clone()).await;
            let hit = store
                .plan
                .lock()
                .unwrap()
                .faulted
                .clone()
                .unwrap_or_default();
            match status {
                RunStatus::Failed => {
                    caught += 1;
                    let e = error.unwrap_or_default();
                    assert!(
                        e.contains("did not arrive whole"),
                        "write {at} ({hit}, {fault:?}): {e}"
                    );
                }
                RunStatus::Succeeded => {
                    // Only a write after the commit may go unnoticed by the run (its history),
                    // and then the run says so.
                    whole += 1;
                    assert!(
                        hit.contains("/history/"),
                        "write {at} ({hit}, {fault:?}) went unnoticed"
                    );
                    assert!(
                        error
                            .unwrap_or_default()
                            .contains("history was not recorded")
                    );
                }
                RunStatus::Interrupted | RunStatus::Guarded | RunStatus::Skipped => {
                    panic!("a run ended as {status:?}")
                }
                RunStatus::Other(s) => panic!("a run ended as {s}"),
            }
            // The state is readable as it is, and the next runs make up for the fault.
            let project = f.load().unwrap();
            project.state.latest("people_sync").await.unwrap();
            f.run_ok("people_sync").await;
            assert_eq!(
                names(&f),
                vec![
                    ("1".to_string(), "Ada L.".to_string()),
                    ("3".into(), "Cy".into()),
                    ("4".into(), "Di".into())
                ],
                "after write {at} ({hit}, {fault:?})"
            );
            f.write("people.csv", V3);
            f.run_ok("people_sync").await;
            assert_eq!(
                names(&f),
                vec![
                    ("1".to_string(), "Ada L.".to_string()),
                    ("4".into(), "Di".into()),
                    ("5".into(), "Eve".into())
                ],
                "after write {at} ({hit}, {fault:?})"
            );
        }
    }
    eprintln!(
        "torn/lost writes: {} cases over {} writes, {caught} caught by the run, {whole} after its commit",
        caught + whole,
        writes.len()
    );
    assert!(caught > whole);
}
