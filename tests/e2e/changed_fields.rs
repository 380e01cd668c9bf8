//! `send = "changed"`: an update carries only the fields whose values changed since the last
//! sync, so that what others edit in the destination's other fields survives. Against SQLite
//! (with a cursor, so the per-field hashes go through state deltas too), PostgreSQL and an
//! HTTP API; `send = "all"` for contrast.

use crate::common::api::{FakeApi, Faults};
use crate::common::db::{self, pg_rows};
use crate::common::*;

const V1: &str =
    "id,email,name,plan,updated\n1,a@x.io,Ada,pro,1\n2,b@x.io,Bob,free,1\n3,c@x.io,Cy,pro,1\n";
/// Ada's name and Bob's plan change; Cy does not.
const V2: &str =
    "id,email,name,plan,updated\n1,a@x.io,Ada L,pro,2\n2,b@x.io,Bob,team,2\n3,c@x.io,Cy,pro,1\n";

fn sqlite_edit(f: &Fixture, sql: &str) {
    let conn = rusqlite::Connection::open(f.path().join("out/app.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn row(f: &Fixture, id: &str) -> (String, String, String) {
    let rows = f.sqlite("out/app.db", "people");
    let r = rows.iter().find(|r| r["id"] == id).unwrap();
    (r["email"].clone(), r["name"].clone(), r["plan"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_to_fields_the_model_did_not_change_survive() {
    let f = people_fixture(
        "upsert",
        "send = \"changed\"\ncursor = \"updated\"\nrecord_log = true",
        V1,
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.created, 3);
    // Someone edits the CRM: Ada's plan and email, Bob's name.
    sqlite_edit(
        &f,
        "UPDATE people SET plan = 'edited', email = 'ada@crm' WHERE id = 1; \
         UPDATE people SET name = 'Robert' WHERE id = 2",
    );
    f.write("people.csv", V2);
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 2, "{r:?}");
    assert_eq!(
        row(&f, "1"),
        ("ada@crm".into(), "Ada L".into(), "edited".into())
    );
    assert_eq!(
        row(&f, "2"),
        ("b@x.io".into(), "Robert".into(), "team".into())
    );
    assert_eq!(row(&f, "3"), ("c@x.io".into(), "Cy".into(), "pro".into()));

    // A third version through the state's delta: Ada's plan changes in the model now, so it
    // is sent (the edit is overwritten by the model's new value); her name is not.
    sqlite_edit(&f, "UPDATE people SET name = 'Lady Ada' WHERE id = 1");
    f.write(
        "people.csv",
        "id,email,name,plan,updated\n1,a@x.io,Ada L,enterprise,3\n2,b@x.io,Bob,team,2\n3,c@x.io,Cy,pro,1\n",
    );
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 1, "{r:?}");
    assert_eq!(
        row(&f, "1"),
        ("ada@crm".into(), "Lady Ada".into(), "enterprise".into())
    );
    // The record log says what was sent.
    let (code, out, err) = f.cli(&["history", "people_sync", "--records", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("upsert").count(), 3, "{out}");

    // A full resync knows no field hashes: every field is sent again.
    let r = f
        .run_with(
            &["people_sync"],
            backflow::RunOptions {
                full_resync: true,
                ..Default::default()
            },
        )
        .await
        .remove(0);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        row(&f, "1"),
        ("a@x.io".into(), "Ada L".into(), "enterprise".into())
    );
    assert_eq!(row(&f, "2"), ("b@x.io".into(), "Bob".into(), "team".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_overwrites_and_a_new_mapping_sends_everything_once() {
    // Contrast: the default sends every field, and an edit is overwritten.
    let f = people_fixture("mirror", "", V1);
    f.run_ok("people_sync").await;
    sqlite_edit(&f, "UPDATE people SET plan = 'edited' WHERE id = 1");
    f.write("people.csv", V2);
    f.run_ok("people_sync").await;
    assert_eq!(row(&f, "1").2, "pro");

    // Switching a sync to "changed": its state has no field hashes yet, so the first changed
    // rows carry every field; from then on only what changed.
    let g = people_fixture("mirror", "send = \"changed\"", V1);
    g.run_ok("people_sync").await;
    sqlite_edit(&g, "UPDATE people SET plan = 'edited' WHERE id = 1");
    // A field added to the mapping: the state's hashes were made under another mapping.
    let toml = std::fs::read_to_string(g.path().join("backflow.toml")).unwrap();
    g.write(
        "backflow.toml",
        &toml.replace(
            "send = \"changed\"",
            "send = \"changed\"\n[syncs.people_sync.fields]\ncomputed = { shout = \"upper(name)\" }",
        ),
    );
    let r = g.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 3);
    assert_eq!(
        row(&g, "1").2,
        "pro",
        "every field is sent after a mapping change"
    );
    sqlite_edit(&g, "UPDATE people SET plan = 'edited' WHERE id = 1");
    g.write("people.csv", V2);
    let r = g.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 2);
    assert_eq!(row(&g, "1").2, "edited");
    let rows = g.sqlite("out/app.db", "people");
    assert_eq!(
        rows.iter().find(|r| r["id"] == "1").unwrap()["shout"],
        "ADA L"
    );
}

#[test]
fn send_changed_is_refused_where_it_means_nothing() {
    for (behavior, extra, says) in [
        ("create-only", "send = \"changed\"", "sends no updates"),
        ("append-only", "send = \"changed\"", "sends no updates"),
        ("upsert", "send = \"sometimes\"", "unknown variant"),
    ] {
        let f = people_fixture(behavior, extra, V1);
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains(says), "{behavior} {extra}: {e}");
    }
    let f = people_fixture("upsert", "send = \"changed\"", V1);
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            "type = \"sqlite\"\npath = \"out/app.db\"",
            "type = \"file\"\npath = \"out\"\nformat = \"parquet\"",
        ),
    );
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("is a file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_edits_to_unchanged_fields() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_changed";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    people_pg_project(&f, schema, "mirror");
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write("backflow.toml", &format!("{toml}send = \"changed\"\n"));
    f.write("people.csv", V1);
    f.run_ok("people_sync").await;
    pg.batch_execute(&format!(
        "UPDATE {schema}.people SET plan = 'edited' WHERE id = 1; \
         UPDATE {schema}.people SET name = 'Robert' WHERE id = 2"
    ))
    .await
    .unwrap();
    f.write("people.csv", V2);
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 2);
    let rows = pg_rows(
        &pg,
        &format!("SELECT id::text, email, name, plan FROM {schema}.people ORDER BY id"),
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["1", "a@x.io", "Ada L", "edited"],
            vec!["2", "b@x.io", "Robert", "team"],
            vec!["3", "c@x.io", "Cy", "pro"],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_gets_only_the_changed_fields() {
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

[destinations.api.create]
path = "/{{object}}"
per_record = true

[destinations.api.update]
method = "PATCH"
path = "/{{object}}/{{key}}"

[syncs.people_sync]
from = "people"
to = "api"
object = "people"
behavior = "update-only"
key = "id"
send = "changed"

[syncs.seed]
from = "people"
to = "api"
object = "people"
behavior = "create-only"
key = "id"
"#,
            url = api.url()
        ),
    );
    f.write("people.csv", V1);
    f.run_ok("seed").await;
    f.run_ok("people_sync").await;
    let requests = api.log().len();
    f.write("people.csv", V2);
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 2);
    let sent: Vec<serde_json::Value> = api.log()[requests..]
        .iter()
        .map(|l| serde_json::from_str(&l.body).unwrap())
        .collect();
    assert!(
        sent.contains(&serde_json::json!({"id": 1, "name": "Ada L", "updated": 2})),
        "{sent:?}"
    );
    assert!(
        sent.contains(&serde_json::json!({"id": 2, "plan": "team", "updated": 2})),
        "{sent:?}"
    );
    // A template naming a field that an update may not carry is refused before any request
    // (it would send the placeholder itself).
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            "path = \"/{object}/{key}\"\n",
            "path = \"/{object}/{key}\"\nrecord = { plan = \"{field.plan}\", name = \"{field.name}\" }\n",
        ),
    );
    f.write("people.csv", V1);
    let requests = api.log().len();
    let r = f
        .run_with(&["people_sync"], backflow::RunOptions::default())
        .await
        .remove(0);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("{field.plan}") && error.contains("send = \"all\""),
        "{error}"
    );
    assert_eq!(api.log().len(), requests);
}

/// Field hashes kept in a cursor sync's state deltas (a few rows of a larger state) and folded
/// into its snapshot: edits survive either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_hashes_survive_state_deltas() {
    let csv = |ada: &str, plan: &str, at: u32| {
        let mut s = format!("id,email,name,plan,updated\n1,a@x.io,{ada},{plan},{at}\n");
        for i in 2..=20 {
            s.push_str(&format!("{i},p{i}@x.io,P{i},free,1\n"));
        }
        s
    };
    let f = people_fixture(
        "upsert",
        "send = \"changed\"\ncursor = \"updated\"",
        &csv("Ada", "pro", 1),
    );
    f.run_ok("people_sync").await;
    for (run, (name, plan)) in [("Ada L", "pro"), ("Ada L", "team"), ("Ada K", "team")]
        .into_iter()
        .enumerate()
    {
        // Someone else's edit of the email each time; the model never changes the email.
        sqlite_edit(
            &f,
            &format!("UPDATE people SET email = 'edit{run}@crm' WHERE id = 1"),
        );
        f.write("people.csv", &csv(name, plan, 2 + run as u32));
        let r = f.run_ok("people_sync").await;
        assert_eq!(r.counts.updated, 1, "{r:?}");
        assert_eq!(
            row(&f, "1"),
            (format!("edit{run}@crm"), name.to_string(), plan.to_string())
        );
        let project = f.load().unwrap();
        let state = project.state.latest("people_sync").await.unwrap().unwrap();
        assert_eq!(state.deltas.len(), run + 1, "the run added a delta");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_keeps_edits_to_unchanged_fields() {
    use mysql_async::prelude::Queryable;
    let Some(mut my) = db::mysql().await else {
        return;
    };
    my.query_drop("DROP TABLE IF EXISTS bf_changed_people")
        .await
        .unwrap();
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        "[sources.people]\ntype = \"csv\"\npath = \"people.csv\"\n\n[destinations.my]\ntype = \"mysql\"\nurl_env = \"BACKFLOW_TEST_MYSQL_URL\"\n\n[syncs.people_sync]\nfrom = \"people\"\nto = \"my\"\nobject = \"bf_changed_people\"\nbehavior = \"upsert\"\nkey = \"id\"\nsend = \"changed\"\n",
    );
    f.write("people.csv", V1);
    f.run_ok("people_sync").await;
    my.query_drop(
        "UPDATE bf_changed_people SET plan = 'edited' WHERE id = 1; \
         UPDATE bf_changed_people SET name = 'Robert' WHERE id = 2",
    )
    .await
    .unwrap();
    f.write("people.csv", V2);
    let r = f.run_ok("people_sync").await;
    assert_eq!(r.counts.updated, 2);
    let rows = db::my_rows(
        &mut my,
        "SELECT CAST(id AS CHAR), email, name, plan FROM bf_changed_people ORDER BY id",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["1", "a@x.io", "Ada L", "edited"],
            vec!["2", "b@x.io", "Robert", "team"],
            vec!["3", "c@x.io", "Cy", "pro"],
        ]
    );
}

/// A run that dies after its destination batch and before its commit: the next run cannot know
/// what that batch changed, so it sends every field of those rows (an edit of another field
/// made before is then overwritten, as documented), and the destination ends equal to the model.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_sends_every_field_of_its_rows_again() {
    let f = people_fixture("mirror", "send = \"changed\"", V1);
    // A sync name of its own: failpoints are process-wide, and other tests run syncs named
    // people_sync at the same time.
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("[syncs.people_sync", "[syncs.changed_interrupted"),
    );
    f.run_ok("changed_interrupted").await;
    sqlite_edit(&f, "UPDATE people SET plan = 'edited' WHERE id = 1");
    f.write("people.csv", V2);
    run_faulted(&f, "changed_interrupted", "after_batch", false).await;
    // Ada's name and Bob's plan changed: two destination batches (one per set of fields
    // changed), in the diff's order; the run died after the first.
    let ada_sent = row(&f, "1").1 == "Ada L";
    let bob_sent = row(&f, "2").2 == "team";
    assert!(ada_sent != bob_sent, "one batch reached the destination");
    assert_eq!(row(&f, "1").2, "edited");
    let r = f.run_ok("changed_interrupted").await;
    assert_eq!(r.counts.updated, 2, "{r:?}");
    // The rows of the interrupted batch get every field again (Ada's plan edit is overwritten
    // when hers was that batch); the other's only what changed.
    let plan = if ada_sent { "pro" } else { "edited" };
    assert_eq!(row(&f, "1"), ("a@x.io".into(), "Ada L".into(), plan.into()));
    assert_eq!(row(&f, "2"), ("b@x.io".into(), "Bob".into(), "team".into()));
    // From then on, only changes again.
    sqlite_edit(&f, "UPDATE people SET plan = 'edited' WHERE id = 1");
    f.write(
        "people.csv",
        "id,email,name,plan,updated\n1,a@x.io,Ada M,pro,3\n2,b@x.io,Bob,team,2\n3,c@x.io,Cy,pro,1\n",
    );
    f.run_ok("changed_interrupted").await;
    assert_eq!(
        row(&f, "1"),
        ("a@x.io".into(), "Ada M".into(), "edited".into())
    );
}
