//! What a sync owns in its destination: a sync without state (its first run, or after the
//! state was lost) counts records already there as updates and leaves the ones outside the
//! model alone, with a warning; `state adopt` takes them over deliberately; `state rebind`
//! follows a destination to a new address without starting over. Against SQLite and
//! PostgreSQL.

use backflow::history::RunStatus;

use crate::common::db::{self, pg_rows, row};
use crate::common::*;

const THREE: &str = "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n";
/// Row 3 left the model and row 1 changed.
const TWO: &str = "id,email,name,plan\n1,a@x.io,Ada L,pro\n2,b@x.io,Bob,free\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_lost_its_state_leaves_unowned_records_until_adopted() {
    let f = people_fixture("mirror", "", THREE);
    assert_eq!(cudu(&f.run_ok("people_sync").await), (3, 0, 0, 0));
    std::fs::remove_dir_all(f.path().join(".backflow")).unwrap();
    f.write("people.csv", TWO);

    // Without state: the records already there are updates, not creates, and record 3, which
    // nothing says backflow created, is left alone with a warning everywhere.
    let plan = f.plan("people_sync").await;
    assert_eq!(
        (
            plan.counts.created,
            plan.counts.updated,
            plan.counts.deleted
        ),
        (0, 2, 0),
        "{plan:?}"
    );
    assert_eq!(plan.counts.unowned, 1);
    assert!(
        plan.warnings.iter().any(|w| w.contains("state adopt")),
        "{plan:?}"
    );
    let (code, out, err) = f.cli(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning") && err.contains("state adopt people_sync"),
        "{err}"
    );
    let (code, out, err) = f.cli(&["plan"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("are left alone"), "{err}");
    let r = f.run_ok("people_sync").await;
    assert_eq!(cudu(&r), (0, 2, 0, 0), "{r:?}");
    assert_eq!(r.counts.unowned, 1);
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    // The warning is kept in history too.
    let (_, history, _) = f.cli(&["history", "people_sync", "--json"]);
    let last: serde_json::Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    assert!(
        last["warnings"][0]
            .as_str()
            .unwrap()
            .contains("state adopt"),
        "{last}"
    );
    let rows = f.sqlite("out/app.db", "people");
    assert_eq!(
        pairs(&rows, "id", "name"),
        [("1", "Ada L"), ("2", "Bob"), ("3", "Cy")].map(|(a, b)| (a.into(), b.into()))
    );

    // The user asserts ownership: the next run deletes what left the model.
    let (code, out, err) = f.cli(&["state", "adopt", "people_sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("adopted 1 record"), "{out}");
    let plan = f.plan("people_sync").await;
    assert_eq!(plan.counts.deleted, 1, "{plan:?}");
    assert!(plan.warnings.is_empty(), "{plan:?}");
    let r = f.run_ok("people_sync").await;
    assert_eq!(cudu(&r), (0, 0, 1, 2), "{r:?}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 2);
    // Adopting again finds nothing new.
    let (code, out, _) = f.cli(&["state", "adopt", "people_sync", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["adopted"].as_u64(), v["keys"].as_u64()),
        (Some(0), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_without_state_counts_existing_records_as_updates() {
    let f = people_fixture("upsert", "", THREE);
    f.run_ok("people_sync").await;
    std::fs::remove_dir_all(f.path().join(".backflow")).unwrap();
    f.write(
        "people.csv",
        "id,email,name,plan\n1,a@x.io,Ada,pro\n2,b@x.io,Bob,free\n3,c@x.io,Cy,pro\n4,d@x.io,Di,free\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(cudu(&r), (1, 3, 0, 0), "{r:?}");
    // Upserts never delete, so nothing to warn about.
    assert!(r.warnings.is_empty(), "{r:?}");
    assert_eq!(f.sqlite("out/app.db", "people").len(), 4);
}

/// A destination that can not list its records (a change feed) keeps the old behaviour, and
/// adopt says why it cannot.
#[test]
fn adopt_refuses_a_destination_that_cannot_list_its_records() {
    let f = people_fixture(
        "mirror",
        "\n[destinations.feed]\ntype = \"file\"\npath = \"feed\"\nformat = \"csv\"\nmode = \"changes\"\n\n[syncs.to_feed]\nfrom = \"people\"\nto = \"feed\"\nobject = \"people\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
        THREE,
    );
    let (code, out, err) = f.cli(&["state", "adopt", "to_feed"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot list the records"), "{err}");
    assert!(f.manifests().is_empty());
}

/// The destination moved (here: an SQLite file outside the project, moved elsewhere): a run
/// refuses the state and says how to follow it; `state rebind` does, and the mirror still
/// deletes what leaves the model, with no full resync.
#[test]
fn rebind_follows_a_destination_to_a_new_address() {
    let place = tempfile::tempdir().unwrap();
    let old = place.path().join("old.db");
    let new = place.path().join("new.db");
    let f = Fixture::new();
    let toml = |db: &std::path::Path| {
        format!(
            "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.app]\ntype = \"sqlite\"\npath = \"{}\"\n\n[syncs.people_sync]\nfrom = \"people\"\nto = \"app\"\nobject = \"people\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
            db.display()
        )
    };
    f.write("backflow.toml", &toml(&old))
        .write("people.csv", THREE);
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = f.cli(&["state", "rebind", "people_sync"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");

    std::fs::rename(&old, &new).unwrap();
    f.write("backflow.toml", &toml(&new));
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("backflow state rebind people_sync"), "{err}");

    // An address with none of the records is refused.
    f.write("backflow.toml", &toml(&place.path().join("empty.db")));
    let (code, out, err) = f.cli(&["state", "rebind", "people_sync"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("holds none"), "{err}");
    f.write("backflow.toml", &toml(&new));
    let (code, out, err) = f.cli(&["state", "rebind", "people_sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rebound") && out.contains("new.db"), "{out}");
    f.write("people.csv", TWO);
    let (code, out, err) = f.cli(&["run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            v["created"].as_u64(),
            v["updated"].as_u64(),
            v["deleted"].as_u64()
        ),
        (Some(0), Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(sqlite_rows(&new, "people").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mirror_after_state_loss_and_adopt() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_ownership";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    people_pg_project(&f, schema, "mirror");
    f.write("people.csv", THREE);
    assert_eq!(cudu(&f.run_ok("people_sync").await), (3, 0, 0, 0));
    std::fs::remove_dir_all(f.path().join(".backflow")).unwrap();
    f.write("people.csv", TWO);
    let r = f.run_ok("people_sync").await;
    assert_eq!(cudu(&r), (0, 2, 0, 0), "{r:?}");
    assert_eq!(r.counts.unowned, 1);
    let (code, out, err) = f.cli(&["state", "adopt", "people_sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("adopted 1 record"), "{out}");
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(cudu(&r), (0, 0, 1, 2), "{r:?}");
    let sql = format!("SELECT id::text, name FROM {schema}.people ORDER BY id");
    assert_eq!(
        pg_rows(&pg, &sql).await,
        vec![row(&["1", "Ada L"]), row(&["2", "Bob"])]
    );
}

/// A new key: the run says what works, and doing it works (a key the destination's records do
/// not hold yet needs a new object; one they hold needs only --full-resync).
#[test]
fn a_changed_key_is_explained_and_the_advice_works() {
    let f = people_fixture("mirror", "", THREE);
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            "key = \"id\"",
            "key = { source = \"id\", destination = \"customer_id\" }",
        ),
    );
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("new identity") && err.contains("new object") && err.contains("--full-resync"),
        "{err}"
    );
    // Following it: a new object, then a full resync.
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("object = \"people\"", "object = \"people_by_customer\""),
    );
    let (code, out, err) = f.cli(&["run", "--full-resync"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = f.sqlite("out/app.db", "people_by_customer");
    assert_eq!(pairs(&rows, "customer_id", "name").len(), 3);
    // A key the records already hold (email): --full-resync alone.
    let g = people_fixture("mirror", "", THREE);
    assert_eq!(g.cli(&["run"]).0, 0);
    let toml = std::fs::read_to_string(g.path().join("backflow.toml")).unwrap();
    g.write(
        "backflow.toml",
        &toml.replace("key = \"id\"", "key = \"email\""),
    );
    assert_eq!(g.cli(&["run"]).0, 1);
    let (code, out, err) = g.cli(&["run", "--full-resync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(g.sqlite("out/app.db", "people").len(), 3);
}

/// A dotted object name for a database destination is taken whole, which is never what was
/// meant: refused, pointing to the `schema` setting.
#[test]
fn a_dotted_table_name_is_refused_with_the_schema_setting_named() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.pg]\ntype = \"postgres\"\nurl_env = \"BACKFLOW_TEST_POSTGRES_URL\"\n\n[syncs.people_sync]\nfrom = \"people\"\nto = \"pg\"\nobject = \"crm.people\"\nbehavior = \"mirror\"\nkey = \"id\"\n",
    )
    .write("people.csv", THREE);
    let e = f.load().unwrap_err().to_string();
    assert!(
        e.contains("set schema = \"crm\"") && e.contains("object = \"people\""),
        "{e}"
    );
}
