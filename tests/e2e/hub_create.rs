//! Write-backs that create (`writeback.create = true`): golden records that a CRM-like SQLite
//! table and an HTTP API (the fake API; its records come back to the hub through an export, as
//! a warehouse copy of a SaaS tool would) have no record of are created there, each with the id
//! the hub chose and linked into the ID map in the cycle that found it missing; the next reads
//! attach the created records to their golden records, and further cycles create nothing
//! twice, also after a crash at every step of the create path.

use backflow::history::RunStatus;
use backflow::hub::show::{GoldenRecord, Lookup};
use backflow::project::RunTarget;
use backflow::sync::{NoProgress, RunOptions};

use crate::common::Fixture;
use crate::common::api::{FakeApi, Faults};
use crate::e2e::hub::lines;

fn project(f: &Fixture, url: &str, entity: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.app]
type = "csv"
path = "app.csv"

[sources.crm]
type = "sqlite"
path = "crm.db"
tables = ["contacts"]

[sources.api_export]
type = "csv"
path = "api_contacts.csv"

[destinations.crm_db]
type = "sqlite"
path = "crm.db"

[destinations.api]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"
max_attempts = 2

[destinations.api.create]
path = "/{{object}}"
per_record = true

[destinations.api.update]
method = "PATCH"
path = "/{{object}}/{{key}}"

[entities.{entity}]
fields = {{ email = "text", name = "text" }}
match = [["email"]]

[entities.{entity}.sources.app]
from = "app"
id = "id"
fields = {{ email = "email", name = "name" }}

[entities.{entity}.sources.crm]
from = "crm.contacts"
id = "id"
fields = {{ email = "email", name = "name" }}
writeback = {{ to = "crm_db", object = "contacts", create = true }}

[entities.{entity}.sources.api]
from = "api_export"
id = "id"
role = "receive-only"
fields = {{ email = "email", name = "name" }}
writeback = {{ to = "api", object = "contacts", create = true, create_id = "'api-' || golden_id", filter = "email NOT LIKE '%@internal.io'" }}
"#
        ),
    );
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann\n2,b@x.io,Bob\n3,c@x.io,Cy\n4,ops@internal.io,Ops\n",
    );
    let conn = rusqlite::Connection::open(f.path().join("crm.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, email TEXT, name TEXT);
         INSERT INTO contacts VALUES ('c1', 'b@x.io', 'Bobby');",
    )
    .unwrap();
    export(f, &FakeApiRecords(Vec::new()));
}

/// The API's contacts as a warehouse copy would have them.
struct FakeApiRecords(Vec<(String, String, String)>);

fn api_records(api: &FakeApi) -> FakeApiRecords {
    FakeApiRecords(
        api.records("contacts")
            .values()
            .map(|r| {
                let text = |k: &str| match &r[k] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    v => v.to_string(),
                };
                (text("id"), text("email"), text("name"))
            })
            .collect(),
    )
}

fn export(f: &Fixture, records: &FakeApiRecords) {
    let mut csv = "id,email,name\n".to_string();
    for (id, email, name) in &records.0 {
        csv.push_str(&format!("{id},{email},{name}\n"));
    }
    f.write("api_contacts.csv", &csv);
}

/// One `backflow run` (the entity, then its write-backs), then the API's export.
async fn run_all(f: &Fixture, api: &FakeApi) {
    let project = f.load().expect("project loads");
    let ctx = project.session().await.expect("session");
    for target in project.select_targets(&[]).unwrap() {
        match target {
            RunTarget::Entity(name) => {
                let r = backflow::hub::run(&project, &ctx, &name, Default::default()).await;
                assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
            }
            RunTarget::Sync(name) => {
                let r = backflow::sync::run(
                    &project,
                    &ctx,
                    &name,
                    RunOptions::default(),
                    std::sync::Arc::new(NoProgress),
                )
                .await;
                assert_eq!(r.status, RunStatus::Succeeded, "{name}: {r:?}");
            }
        }
    }
    export(f, &api_records(api));
}

/// The live golden records as `email|name`.
async fn golden(f: &Fixture, entity: &str) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    lines(
        &ctx.sql(&format!("SELECT email, name FROM {entity} ORDER BY email"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

fn crm(f: &Fixture) -> Vec<String> {
    f.sqlite_cells("crm.db", "contacts", &["id", "email", "name"])
}

fn api_held(api: &FakeApi) -> Vec<String> {
    let mut v: Vec<String> = api_records(api)
        .0
        .into_iter()
        .map(|(i, e, n)| format!("{i}|{e}|{n}"))
        .collect();
    v.sort();
    v
}

/// Creates the API performed per key: none twice.
fn creates_per_key(api: &FakeApi) -> Vec<u32> {
    let s = api.state.lock().unwrap();
    let mut v: Vec<u32> = s.creates.values().copied().collect();
    v.sort();
    v
}

async fn show(f: &Fixture, email_owner: (&str, &str)) -> GoldenRecord {
    show_in(f, "person", email_owner).await
}

async fn show_in(f: &Fixture, entity: &str, email_owner: (&str, &str)) -> GoldenRecord {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let lookup = Lookup::SourceRecord {
        source: email_owner.0.into(),
        id: email_owner.1.into(),
    };
    backflow::hub::show::golden_record(&project, &ctx, entity, &lookup)
        .await
        .unwrap()
}

/// `source:id (how)` of each record linked to a golden record.
fn links(r: &GoldenRecord) -> Vec<String> {
    let mut v: Vec<String> = r
        .links
        .iter()
        .map(|l| {
            let how = l.linked_by.as_deref().unwrap_or("");
            format!("{}:{} ({how})", l.source, l.source_id)
        })
        .collect();
    v.sort();
    v
}

/// How many golden records the entity has, retired and merged ones included (a duplicate
/// golden record would show here even if merged later).
async fn golden_ever(f: &Fixture, entity: &str) -> i64 {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let manifest = backflow::hub::latest(&project, entity).await.unwrap();
    let all = backflow::hub::golden_table(&project, &ctx, entity, manifest.as_ref())
        .await
        .unwrap();
    all.count().await.unwrap() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_records_are_created_in_a_table_and_an_api_and_linked_without_duplicates() {
    const E: &str = "person";
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    project(&f, &api.url(), E);
    run_all(&f, &api).await;
    assert_eq!(
        golden(&f, E).await,
        [
            "a@x.io|Ann",
            "b@x.io|Bob",
            "c@x.io|Cy",
            "ops@internal.io|Ops"
        ]
    );
    // The CRM had Bob; it gets the three others, with the ids the hub chose.
    let ann = show(&f, ("app", "1")).await;
    let cy = show(&f, ("app", "3")).await;
    let ops = show(&f, ("app", "4")).await;
    assert_eq!(
        crm(&f),
        [
            "c1|b@x.io|Bob".to_string(),
            format!("hub-{}|a@x.io|Ann", ann.golden_id),
            format!("hub-{}|c@x.io|Cy", cy.golden_id),
            format!("hub-{}|ops@internal.io|Ops", ops.golden_id),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    // The API gets every golden record its filter lets through.
    assert_eq!(api_held(&api).len(), 3, "{:?}", api_held(&api));
    assert!(api_held(&api).contains(&format!("api-{}|a@x.io|Ann", ann.golden_id)));
    assert!(!api_held(&api).iter().any(|r| r.contains("internal.io")));
    // The created ids are in the ID map from the cycle that created them.
    assert_eq!(
        links(&ann),
        [
            format!("api:api-{} (created (write-back))", ann.golden_id),
            "app:1 (new)".to_string(),
            format!("crm:hub-{} (created (write-back))", ann.golden_id),
        ]
    );

    // The next reads attach the created records to their golden records; three further cycles
    // (with a new person and an edit in between) create no duplicate anywhere.
    let crm_before = crm(&f);
    run_all(&f, &api).await;
    assert_eq!(golden_ever(&f, E).await, 4);
    assert_eq!(crm(&f), crm_before);
    let ann = show(&f, ("crm", &format!("hub-{}", ann.golden_id))).await;
    let name = ann.fields.iter().find(|v| v.field == "name").unwrap();
    assert_eq!(name.value.as_deref(), Some("Ann"), "{ann:?}");
    assert_eq!(
        links(&ann).len(),
        3,
        "the created records are read and attached by id: {:?}",
        links(&ann)
    );
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann\n2,b@x.io,Bob\n3,c@x.io,Cyrus\n4,ops@internal.io,Ops\n5,d@x.io,Dee\n",
    );
    for _ in 0..3 {
        run_all(&f, &api).await;
    }
    assert_eq!(golden_ever(&f, E).await, 5);
    let dee = show(&f, ("app", "5")).await;
    let rows = crm(&f);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.contains(&format!("hub-{}|d@x.io|Dee", dee.golden_id)));
    assert!(
        rows.contains(&format!("hub-{}|c@x.io|Cyrus", cy.golden_id)),
        "{rows:?}"
    );
    let held = api_held(&api);
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(
        held.contains(&format!("api-{}|c@x.io|Cyrus", cy.golden_id)),
        "{held:?}"
    );
    assert!(held.contains(&format!("api-{}|d@x.io|Dee", dee.golden_id)));
    assert_eq!(creates_per_key(&api), [1, 1, 1, 1]);

    // A person deletes a created record in the CRM: it is created again (create means the CRM
    // has every golden record), under the same id.
    let ann_id = format!("hub-{}", ann.golden_id);
    crate::e2e::hub::edit(
        &f,
        "crm.db",
        &format!("DELETE FROM contacts WHERE id = '{ann_id}'"),
    );
    run_all(&f, &api).await;
    run_all(&f, &api).await;
    assert!(
        crm(&f).contains(&format!("{ann_id}|a@x.io|Ann")),
        "{:?}",
        crm(&f)
    );

    // A create the CRM refuses is tried again; when a person types the record in meanwhile,
    // the typed record is linked and the create is dropped: one record per person.
    crate::e2e::hub::edit(
        &f,
        "crm.db",
        "CREATE TRIGGER refuse BEFORE INSERT ON contacts WHEN NEW.id LIKE 'hub-%' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    );
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann\n2,b@x.io,Bob\n3,c@x.io,Cyrus\n4,ops@internal.io,Ops\n5,d@x.io,Dee\n6,e@x.io,Eve\n7,,\n",
    );
    run_all(&f, &api).await;
    assert!(
        !crm(&f).iter().any(|r| r.contains("e@x.io")),
        "{:?}",
        crm(&f)
    );
    crate::e2e::hub::edit(
        &f,
        "crm.db",
        "INSERT INTO contacts VALUES ('typed-1', 'e@x.io', 'Eve'); DROP TRIGGER refuse;",
    );
    run_all(&f, &api).await;
    run_all(&f, &api).await;
    let eves: Vec<String> = crm(&f)
        .into_iter()
        .filter(|r| r.contains("e@x.io"))
        .collect();
    assert_eq!(eves, ["typed-1|e@x.io|Eve"]);
    assert!(
        links(&show(&f, ("app", "6")).await).contains(&"crm:typed-1 (match: email)".to_string()),
        "{:?}",
        links(&show(&f, ("app", "6")).await)
    );

    // A golden record with no values is created empty, read back, and updated once it has
    // some.
    let blank = show(&f, ("app", "7")).await;
    let blank_id = format!("hub-{}", blank.golden_id);
    assert!(
        crm(&f).contains(&format!("{blank_id}|∅|∅")),
        "{:?}",
        crm(&f)
    );
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann\n2,b@x.io,Bob\n3,c@x.io,Cyrus\n4,ops@internal.io,Ops\n5,d@x.io,Dee\n6,e@x.io,Eve\n7,g@x.io,Gus\n",
    );
    run_all(&f, &api).await;
    run_all(&f, &api).await;
    assert!(
        crm(&f).contains(&format!("{blank_id}|g@x.io|Gus")),
        "{:?}",
        crm(&f)
    );
    assert_eq!(
        crm(&f).len(),
        7,
        "one record per golden record: {:?}",
        crm(&f)
    );
    assert_eq!(golden_ever(&f, E).await, 7);
    assert!(
        creates_per_key(&api).iter().all(|n| *n == 1),
        "{:?}",
        creates_per_key(&api)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_id_that_fails_on_some_values_holds_up_its_creates_not_the_hub() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    project(&f, &api.url(), "person");
    let text = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &text.replace(
            "object = \"contacts\", create = true }",
            "object = \"contacts\", create = true, create_id = \"CAST(name AS BIGINT)\" }",
        ),
    );
    run_all(&f, &api).await;
    assert_eq!(golden(&f, "person").await.len(), 4);
    assert_eq!(crm(&f), ["c1|b@x.io|Bob"]);
    assert_eq!(api_held(&api).len(), 3, "the other source's creates go on");
}

#[test]
fn a_create_id_that_does_not_fit_the_source_id_is_refused_with_the_way_out() {
    let f = Fixture::new();
    f.write(
        "backflow.toml",
        r#"
[sources.app]
type = "csv"
path = "app.csv"

[sources.crm]
type = "csv"
path = "crm.csv"

[destinations.crm_db]
type = "sqlite"
path = "crm.db"

[entities.person]
fields = { email = "text" }
match = [["email"]]

[entities.person.sources.app]
from = "app"
id = "id"
fields = { email = "email" }

[entities.person.sources.crm]
from = "crm"
id = "id"
fields = { email = "email" }
writeback = { to = "crm_db", object = "contacts", create = true }
"#,
    );
    f.write("app.csv", "id,email\n1,a@x.io\n");
    f.write("crm.csv", "id,email\n7,b@x.io\n");
    let (code, _, err) = f.cli(&["run", "person"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("create_id") && err.contains("Int64"),
        "the error names the setting and the id's type: {err}"
    );
}

/// A crash at any step of the create path (the cycle that links, the create syncs before and
/// after sending, before and after their commit), then runs again: the same golden records,
/// the same records in the CRM and the API, and no record created twice.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_anywhere_on_the_create_path_creates_nothing_twice() {
    // (Another entity name than the other tests': failpoints are set for one process.)
    const E: &str = "member";
    let expected = {
        let api = FakeApi::start(Faults::default()).await;
        let f = Fixture::new();
        project(&f, &api.url(), E);
        run_all(&f, &api).await;
        run_all(&f, &api).await;
        (
            golden(&f, E).await,
            crm(&f),
            api_held(&api),
            golden_ever(&f, E).await,
        )
    };
    let mut cases = Vec::new();
    for point in ["hub_after_merge", "hub_before_commit", "hub_after_commit"] {
        cases.push((point, E, false));
        cases.push((point, E, true));
    }
    for point in [
        "after_diff",
        "after_destination_write",
        "before_commit",
        "after_commit",
    ] {
        cases.push((point, "member-to-crm-create", false));
        cases.push((point, "member-to-api-create", true));
    }
    for (point, target, panic) in cases {
        let api = FakeApi::start(Faults::default()).await;
        let f = Fixture::new();
        project(&f, &api.url(), E);
        assert!(
            crate::e2e::hub::run_faulted_all(&f, point, target, panic).await,
            "{point} for {target} never stopped the run"
        );
        export(&f, &api_records(&api));
        run_all(&f, &api).await;
        run_all(&f, &api).await;
        let got = (
            golden(&f, E).await,
            crm(&f),
            api_held(&api),
            golden_ever(&f, E).await,
        );
        assert_eq!(got, expected, "after {point} for {target} (panic: {panic})");
        assert!(
            creates_per_key(&api).iter().all(|n| *n == 1),
            "after {point} for {target}: {:?}",
            creates_per_key(&api)
        );
    }
}

/// A project whose API source creates records with ids the API gives (`result_id`): the
/// records are sent without an id (`{fields_without_key}`), under a stand-in id the API
/// never gives (`-golden_id`).
fn assigned_project(f: &Fixture, url: &str, entity: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.app]
type = "csv"
path = "app.csv"

[sources.api_export]
type = "csv"
path = "api_contacts.csv"

[destinations.api]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"
max_attempts = 2

[destinations.api.create]
path = "/{{object}}"
per_record = true
record = "{{fields_without_key}}"
result_id = "id"

[destinations.api.update]
method = "PATCH"
path = "/{{object}}/{{key}}"

[entities.{entity}]
fields = {{ email = "text", name = "text" }}
match = [["email"]]

[entities.{entity}.sources.app]
from = "app"
id = "id"
fields = {{ email = "email", name = "name" }}

[entities.{entity}.sources.api]
from = "api_export"
id = "id"
role = "receive-only"
fields = {{ email = "email", name = "name" }}
writeback = {{ to = "api", object = "contacts", create = true, create_id = "-golden_id", filter = "email NOT LIKE '%@internal.io'" }}
"#
        ),
    );
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann\n2,b@x.io,Bob\n3,c@x.io,Cy\n4,ops@internal.io,Ops\n",
    );
    export(f, &FakeApiRecords(Vec::new()));
}

/// The API's records as `email|name`, sorted (the ids it gives depend on the order of the
/// requests).
fn api_people(api: &FakeApi) -> Vec<String> {
    let mut v: Vec<String> = api_records(api)
        .0
        .into_iter()
        .map(|(_, e, n)| format!("{e}|{n}"))
        .collect();
    v.sort();
    v
}

async fn run_one(f: &Fixture, sync: &str) {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::sync::run(
        &project,
        &ctx,
        sync,
        RunOptions::default(),
        std::sync::Arc::new(NoProgress),
    )
    .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{sync}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_created_with_ids_the_api_gives_are_linked_by_those_ids() {
    const E: &str = "client";
    let api = FakeApi::start(Faults {
        ignore_idempotency: true,
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    assigned_project(&f, &api.url(), E);
    let people = vec!["a@x.io|Ann", "b@x.io|Bob", "c@x.io|Cy"];

    // The first run creates the three records the filter lets through; the API numbers them.
    run_all(&f, &api).await;
    assert_eq!(api_people(&api), people);
    let mut ids: Vec<String> = api_records(&api).0.into_iter().map(|r| r.0).collect();
    ids.sort();
    assert_eq!(ids, ["1001", "1002", "1003"]);
    // Running the create sync again before the hub has linked the ids sends nothing.
    run_one(&f, &format!("{E}-to-api-create")).await;
    assert_eq!(api_people(&api), people);

    // The next cycle links each record by the API's id before reading the export, which then
    // attaches them to their golden records: no golden record is made for them.
    run_all(&f, &api).await;
    let ann = show_in(&f, E, ("app", "1")).await;
    let ann_api = api_records(&api)
        .0
        .into_iter()
        .find(|r| r.1 == "a@x.io")
        .unwrap()
        .0;
    assert_eq!(
        links(&ann),
        [
            format!("api:{ann_api} (created (write-back), id given by the destination)"),
            "app:1 (new)".to_string()
        ]
    );
    assert_eq!(golden_ever(&f, E).await, 4);

    // Further runs, with a new person and an edit: one more create, no duplicate anywhere.
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann B\n2,b@x.io,Bob\n3,c@x.io,Cy\n4,ops@internal.io,Ops\n5,d@x.io,Di\n",
    );
    for _ in 0..3 {
        run_all(&f, &api).await;
    }
    assert_eq!(
        api_people(&api),
        ["a@x.io|Ann B", "b@x.io|Bob", "c@x.io|Cy", "d@x.io|Di"]
    );
    assert!(creates_per_key(&api).iter().all(|n| *n == 1));
    assert_eq!(golden_ever(&f, E).await, 5);
    assert_eq!(
        golden(&f, E).await,
        [
            "a@x.io|Ann B",
            "b@x.io|Bob",
            "c@x.io|Cy",
            "d@x.io|Di",
            "ops@internal.io|Ops"
        ]
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_anywhere_around_an_api_given_id_creates_nothing_twice() {
    // (Another entity name than the other tests': failpoints are set for one process.)
    const E: &str = "patron";
    let faults = || Faults {
        ignore_idempotency: true,
        ..Faults::default()
    };
    let expected = {
        let api = FakeApi::start(faults()).await;
        let f = Fixture::new();
        assigned_project(&f, &api.url(), E);
        for _ in 0..3 {
            run_all(&f, &api).await;
        }
        (
            golden(&f, E).await,
            api_people(&api),
            golden_ever(&f, E).await,
        )
    };
    let sync = format!("{E}-to-api-create");
    // A crash of the create sync in the first run, or of the cycle that links the API's ids
    // in the second.
    let mut cases: Vec<(&str, &str, bool, usize)> = Vec::new();
    for point in [
        "after_batch",
        "before_finish",
        "after_destination_write",
        "before_commit",
        "after_commit",
    ] {
        cases.push((point, sync.as_str(), false, 0));
        cases.push((point, sync.as_str(), true, 0));
    }
    for point in [
        "hub_after_read",
        "hub_after_merge",
        "hub_before_commit",
        "hub_after_commit",
    ] {
        cases.push((point, E, false, 1));
        cases.push((point, E, true, 1));
    }
    for (point, target, panic, runs_before) in cases {
        let api = FakeApi::start(faults()).await;
        let f = Fixture::new();
        assigned_project(&f, &api.url(), E);
        for _ in 0..runs_before {
            run_all(&f, &api).await;
        }
        assert!(
            crate::e2e::hub::run_faulted_all(&f, point, target, panic).await,
            "{point} for {target} never stopped the run"
        );
        export(&f, &api_records(&api));
        for _ in 0..3 {
            run_all(&f, &api).await;
        }
        let got = (
            golden(&f, E).await,
            api_people(&api),
            golden_ever(&f, E).await,
        );
        assert_eq!(got, expected, "after {point} for {target} (panic: {panic})");
        assert!(
            creates_per_key(&api).iter().all(|n| *n == 1),
            "after {point} for {target}: {:?}",
            creates_per_key(&api)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_the_api_gives_twice_is_never_linked_to_two_records() {
    const E: &str = "guest";
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    assigned_project(&f, &api.url(), E);
    run_all(&f, &api).await;
    run_all(&f, &api).await;
    // Cy's record leaves the API, whose next id is then Cy's again (json-server gives the
    // largest id + 1), while the export the hub reads still has Cy there.
    let cy = {
        let mut s = api.state.lock().unwrap();
        let m = s.objects.get_mut("contacts").unwrap();
        let cy = m
            .iter()
            .find(|(_, r)| r["email"] == "c@x.io")
            .map(|(k, _)| k.clone())
            .unwrap();
        m.remove(&cy);
        s.next_id = cy.parse::<u64>().unwrap() - 1001;
        cy
    };
    f.write(
        "app.csv",
        "id,email,name\n1,a@x.io,Ann\n2,b@x.io,Bob\n3,c@x.io,Cy\n4,ops@internal.io,Ops\n5,d@x.io,Di\n",
    );
    let stale = std::fs::read(f.path().join("api_contacts.csv")).unwrap();
    run_all(&f, &api).await;
    assert_eq!(api_records(&api).0.iter().filter(|r| r.0 == cy).count(), 1);
    // The next cycle reads the stale export, where Cy's id is still Cy's: the API's answer is
    // newer, so Di's record takes the id and Cy's link leaves.
    std::fs::write(f.path().join("api_contacts.csv"), &stale).unwrap();
    run_all(&f, &api).await;
    for _ in 0..3 {
        run_all(&f, &api).await;
    }
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let manifest = backflow::hub::latest(&project, E).await.unwrap().unwrap();
    // One row per id in the source's ID map.
    let map = &manifest.sources["api"].contributions;
    let ids = ctx
        .read_parquet(project.state.table_url(&map.path), Default::default())
        .await
        .unwrap();
    let rows = ids.clone().count().await.unwrap();
    let distinct = ids
        .select_columns(&["__bf_sid"])
        .unwrap()
        .distinct()
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(rows, distinct);
    assert!(rows <= 5, "{rows}");
    // Cy's record, gone from the API, is created again; Di's is the one with Cy's old id.
    assert_eq!(
        api_people(&api),
        ["a@x.io|Ann", "b@x.io|Bob", "c@x.io|Cy", "d@x.io|Di"]
    );
    let di = api_records(&api)
        .0
        .into_iter()
        .find(|r| r.1 == "d@x.io")
        .unwrap();
    assert_eq!(di.0, cy);
    assert_eq!(golden_ever(&f, E).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_records_created_before_the_api_goes_down_are_kept() {
    const E: &str = "visitor";
    let api = FakeApi::start(Faults {
        ignore_idempotency: true,
        latency: std::time::Duration::from_millis(30),
        ..Faults::default()
    })
    .await;
    let f = Fixture::new();
    assigned_project(&f, &api.url(), E);
    let mut csv = "id,email,name\n".to_string();
    for i in 0..40 {
        csv.push_str(&format!("{i},p{i}@x.io,P{i}\n"));
    }
    f.write("app.csv", &csv);
    // The API goes down once it has created some of the records (one destination batch).
    let state = api.state.clone();
    let url = api.url();
    let watcher = {
        let api_faults = api.faults_handle();
        tokio::spawn(async move {
            loop {
                if state.lock().unwrap().creates.len() >= 10 {
                    api_faults.lock().unwrap().down_status = Some(503);
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    for target in project.select_targets(&[]).unwrap() {
        if let RunTarget::Entity(name) = target {
            backflow::hub::run(&project, &ctx, &name, Default::default()).await;
        }
    }
    let r = backflow::sync::run(
        &project,
        &ctx,
        &format!("{E}-to-api-create"),
        RunOptions::default(),
        std::sync::Arc::new(NoProgress),
    )
    .await;
    assert_eq!(r.status, RunStatus::Failed, "{r:?} ({url})");
    watcher.await.unwrap();
    let created = api_people(&api).len();
    assert!((10..40).contains(&created), "{created}");
    api.set_faults(Faults {
        ignore_idempotency: true,
        ..Faults::default()
    });
    export(&f, &api_records(&api));
    for _ in 0..3 {
        run_all(&f, &api).await;
    }
    assert_eq!(api_people(&api).len(), 40);
    assert!(creates_per_key(&api).iter().all(|n| *n == 1));
    assert_eq!(golden_ever(&f, E).await, 40);
}
