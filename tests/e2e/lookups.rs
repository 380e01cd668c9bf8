//! Lookups (`fields.lookup`): a field whose value is found in the destination by another
//! field, as CRMs associate a contact with its company by the company's domain. Found,
//! missing (rejected, then sent on the run after the record appears), ambiguous (two records
//! with the value: rejected, never a guess), `on_missing = "null"`, against SQLite, PostgreSQL,
//! MySQL and an HTTP API (one request per value, and batched searches), and the settings
//! refused where a lookup cannot work.

use crate::common::api::{FakeApi, Faults};
use crate::common::db::{self, pg_rows};
use crate::common::*;
use backflow::history::RecordKind;

const CONTACTS: &str = "id,email,company_domain\n\
1,ada@acme.com,acme.com\n\
2,bob@nowhere.io,nowhere.io\n\
3,cy@dup.com,dup.com\n\
4,dee@home.net,\n\
5,eve@acme.com,ACME.com\n\
6,fay@acme.com,acme.com\n";

const COMPANIES: &str = "id,domain,name\n10,acme.com,Acme\n20,globex.com,Globex\n30,dup.com,Dup One\n31,dup.com,Dup Two\n";

fn reasons(r: &backflow::SyncReport) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r
        .samples
        .iter()
        .filter(|s| s.kind == RecordKind::Rejected)
        .map(|s| (s.key.clone().unwrap_or_default(), s.reason.clone()))
        .collect();
    out.sort();
    out
}

/// Companies synced into `companies` by one sync, contacts into `contacts` by another that
/// looks up each contact's company id by its domain.
fn project(f: &Fixture, destination: &str, lookup_extra: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.companies]
type = "csv"
path = "companies.csv"

[sources.contacts]
type = "csv"
path = "contacts.csv"

{destination}

[syncs.companies]
from = "companies"
to = "crm"
object = "companies"
behavior = "mirror"
key = "id"

[syncs.contacts]
from = "contacts"
to = "crm"
object = "contacts"
behavior = "mirror"
key = "id"
fields.exclude = ["company_domain"]

[syncs.contacts.fields.lookup.company_id]
object = "companies"
by = "domain"
value = "company_domain"
{lookup_extra}
"#
        ),
    );
    f.write("companies.csv", COMPANIES);
    f.write("contacts.csv", CONTACTS);
}

/// Found, missing, ambiguous, NULL, exact case; then the missing company appears and its
/// contact is sent; a run with nothing new tries the rejected rows again.
async fn found_missing_ambiguous(
    f: &Fixture,
    mut company_of: impl AsyncFnMut(&Fixture) -> Vec<(String, String)>,
) {
    f.run_ok("companies").await;
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (3, 3), "{r:?}");
    let why = reasons(&r);
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(
        why[0].0 == "2" && why[0].1.contains("record has domain = nowhere.io"),
        "{why:?}"
    );
    assert!(
        why[1].0 == "3"
            && why[1].1.contains("companies records have domain = dup.com")
            && why[1].1.contains("ambiguous"),
        "{why:?}"
    );
    assert!(why[2].0 == "5" && why[2].1.contains("ACME.com"), "{why:?}");
    assert_eq!(
        company_of(f).await,
        vec![
            ("1".into(), "10".into()),
            ("4".into(), "NULL".into()),
            ("6".into(), "10".into())
        ]
    );

    // Nothing changed: the rejected rows are tried again, and still refused.
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (0, 3), "{r:?}");

    // The missing company appears (and a duplicate leaves): both contacts go now.
    f.write(
        "companies.csv",
        "id,domain,name\n10,acme.com,Acme\n20,globex.com,Globex\n30,dup.com,Dup One\n40,nowhere.io,Nowhere\n",
    );
    f.run_ok("companies").await;
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 1), "{r:?}");
    assert_eq!(
        company_of(f).await,
        vec![
            ("1".into(), "10".into()),
            ("2".into(), "40".into()),
            ("3".into(), "30".into()),
            ("4".into(), "NULL".into()),
            ("6".into(), "10".into())
        ]
    );

    // A contact moves to another company: the field is looked up again.
    f.write(
        "contacts.csv",
        &CONTACTS.replace("1,ada@acme.com,acme.com", "1,ada@acme.com,globex.com"),
    );
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.updated, r.counts.rejected), (1, 1), "{r:?}");
    assert_eq!(company_of(f).await[0], ("1".into(), "20".into()));
}

fn sqlite_companies(f: &Fixture) -> Vec<(String, String)> {
    pairs(&f.sqlite("out/crm.db", "contacts"), "id", "company_id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lookups_find_reject_and_retry() {
    let f = Fixture::new();
    project(
        &f,
        "[destinations.crm]\ntype = \"sqlite\"\npath = \"out/crm.db\"",
        "",
    );
    found_missing_ambiguous(&f, async |f: &Fixture| sqlite_companies(f)).await;
    // The field has the type of the column it returns.
    let conn = rusqlite::Connection::open(f.path().join("out/crm.db")).unwrap();
    let t: String = conn
        .query_row(
            "SELECT typeof(company_id) FROM contacts WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(t, "integer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_missing_null_sends_the_row_without_the_field() {
    let f = Fixture::new();
    project(
        &f,
        "[destinations.crm]\ntype = \"sqlite\"\npath = \"out/crm.db\"",
        "on_missing = \"null\"",
    );
    f.run_ok("companies").await;
    let r = f.run_ok("contacts").await;
    // Only the ambiguous one is refused.
    assert_eq!((r.counts.created, r.counts.rejected), (5, 1), "{r:?}");
    let got = sqlite_companies(&f);
    assert!(got.contains(&("2".into(), "NULL".into())), "{got:?}");
    assert!(got.contains(&("5".into(), "NULL".into())), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_names_what_it_cannot_find_before_sending() {
    let f = Fixture::new();
    project(
        &f,
        "[destinations.crm]\ntype = \"sqlite\"\npath = \"out/crm.db\"",
        "",
    );
    f.run_ok("companies").await;
    // A column the table does not have.
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace("by = \"domain\"", "by = \"domian\""),
    );
    let r = f
        .run_with(&["contacts"], Default::default())
        .await
        .remove(0);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("by = \"domian\" is not a column of table \"companies\"")
            && e.contains("domain"),
        "{e}"
    );
    // A table the destination does not have.
    f.write(
        "backflow.toml",
        &toml.replace("object = \"companies\"\nby", "object = \"firms\"\nby"),
    );
    let r = f
        .run_with(&["contacts"], Default::default())
        .await
        .remove(0);
    let e = r.error.unwrap_or_default();
    assert!(e.contains("firms"), "{e}");
    assert!(f.sqlite("out/crm.db", "companies").len() == 4);
    // A file destination has nothing to look up in.
    f.write(
        "backflow.toml",
        &toml.replace(
            "type = \"sqlite\"\npath = \"out/crm.db\"",
            "type = \"file\"\npath = \"out\"\nformat = \"csv\"",
        ),
    );
    let e = f.load().unwrap_err().to_string();
    assert!(
        e.contains("fields.lookup.company_id") && e.contains("file destination"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lookups_join_the_destination_table() {
    let Some(pg) = db::postgres().await else {
        return;
    };
    let schema = "bf_lookups";
    db::pg_schema(&pg, schema).await;
    let f = Fixture::new();
    project(
        &f,
        &format!(
            "[destinations.crm]\ntype = \"postgres\"\nurl_env = \"BACKFLOW_TEST_POSTGRES_URL\"\nschema = \"{schema}\""
        ),
        "",
    );
    found_missing_ambiguous(&f, async |_: &Fixture| {
        pg_rows(
            &pg,
            &format!("SELECT id::text, coalesce(company_id::text, 'NULL') FROM {schema}.contacts"),
        )
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
    })
    .await;
    let t = pg_rows(
        &pg,
        &format!("SELECT data_type FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'contacts' AND column_name = 'company_id'"),
    )
    .await;
    assert_eq!(t, vec![vec!["bigint".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_lookups_join_the_destination_table() {
    let Some(mut my) = db::mysql().await else {
        return;
    };
    use mysql_async::prelude::Queryable;
    my.query_drop("DROP TABLE IF EXISTS lk_contacts, lk_companies")
        .await
        .unwrap();
    let f = Fixture::new();
    project(
        &f,
        "[destinations.crm]\ntype = \"mysql\"\nurl_env = \"BACKFLOW_TEST_MYSQL_URL\"",
        "",
    );
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml
            .replace("object = \"companies\"", "object = \"lk_companies\"")
            .replace("object = \"contacts\"", "object = \"lk_contacts\""),
    );
    let mut my2 = db::mysql().await.unwrap();
    found_missing_ambiguous(&f, async |_: &Fixture| {
        db::my_rows(
            &mut my2,
            "SELECT id, coalesce(company_id, 'NULL') FROM lk_contacts",
        )
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
    })
    .await;
    my.query_drop("DROP TABLE IF EXISTS lk_contacts, lk_companies")
        .await
        .unwrap();
}

fn api_project(f: &Fixture, url: &str, lookup: &str, extra: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.contacts]
type = "csv"
path = "contacts.csv"

[destinations.crm]
type = "http"
base_url = "{url}/api"
token_env = "BACKFLOW_TEST_API_TOKEN"

[destinations.crm.upsert]
path = "/{{object}}/batch"
wrap = "records"
errors = "errors"
error_match = "index"
error_field = "index"

[destinations.crm.delete]
path = "/{{object}}/{{key}}"

[destinations.crm.lookups.companies]
{lookup}

[syncs.contacts]
from = "contacts"
to = "crm"
object = "contacts"
behavior = "mirror"
key = "id"
fields.exclude = ["company_domain"]

[syncs.contacts.fields.lookup.company_id]
object = "companies"
by = "domain"
value = "company_domain"
{extra}
"#
        ),
    );
    f.write("contacts.csv", CONTACTS);
}

fn seed_companies(api: &FakeApi, rows: &[(i64, &str)]) {
    let mut s = api.state.lock().unwrap();
    let m = s.objects.entry("companies".into()).or_default();
    m.clear();
    for (id, domain) in rows {
        m.insert(
            id.to_string(),
            serde_json::json!({"id": id, "domain": domain}),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_is_asked_once_per_value_and_run() {
    let api = FakeApi::start(Faults::default()).await;
    seed_companies(
        &api,
        &[
            (10, "acme.com"),
            (20, "globex.com"),
            (30, "dup.com"),
            (31, "dup.com"),
        ],
    );
    let f = Fixture::new();
    api_project(
        &f,
        &api.url(),
        "path = \"/companies?{by}={value}\"",
        "type = \"bigint\"",
    );
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (3, 3), "{r:?}");
    let searches: Vec<String> = api
        .log()
        .iter()
        .filter(|l| l.method == "GET" && l.path.contains('?'))
        .map(|l| l.path.clone())
        .collect();
    // acme.com (two contacts), nowhere.io, dup.com, ACME.com: once each.
    assert_eq!(searches.len(), 4, "{searches:?}");
    let contacts = api.records("contacts");
    assert_eq!(contacts["1"]["company_id"], serde_json::json!(10));
    assert_eq!(contacts["6"]["company_id"], serde_json::json!(10));
    assert_eq!(contacts["4"]["company_id"], serde_json::Value::Null);
    assert!(!contacts.contains_key("2") && !contacts.contains_key("3"));
    let why = reasons(&r);
    assert!(
        why.iter().any(|(k, w)| k == "3" && w.contains("ambiguous")),
        "{why:?}"
    );

    // The company appears in the API: the next run sends its contact.
    seed_companies(
        &api,
        &[(10, "acme.com"), (40, "nowhere.io"), (30, "dup.com")],
    );
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (2, 1), "{r:?}");
    assert_eq!(
        api.records("contacts")["2"]["company_id"],
        serde_json::json!(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_searched_in_batches() {
    let api = FakeApi::start(Faults::default()).await;
    seed_companies(&api, &[(10, "acme.com"), (30, "dup.com"), (31, "dup.com")]);
    let f = Fixture::new();
    api_project(
        &f,
        &api.url(),
        "path = \"/companies/search\"\nwrap = \"values\"\nextra = { field = \"{by}\" }\nresults = \"results\"\nbatch_size = 2",
        "",
    );
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (3, 3), "{r:?}");
    let searches = api
        .log()
        .iter()
        .filter(|l| l.path.ends_with("/search"))
        .count();
    // Four distinct values, two per request.
    assert_eq!(searches, 2);
    // Found as text by default.
    assert_eq!(
        api.records("contacts")["1"]["company_id"],
        serde_json::json!("10")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_cannot_be_asked_fails_the_run() {
    let api = FakeApi::start(Faults::default()).await;
    let f = Fixture::new();
    // A lookup answer without the field compared is not taken for "nothing found".
    seed_companies(&api, &[(10, "acme.com")]);
    api_project(
        &f,
        &api.url(),
        "path = \"/companies?domain={value}\"\nresult_by = \"website\"",
        "",
    );
    let r = f
        .run_with(&["contacts"], Default::default())
        .await
        .remove(0);
    let e = r.error.unwrap_or_default();
    assert!(e.contains("without \"website\""), "{e}");
    assert!(api.records("contacts").is_empty());
    assert!(f.manifests().is_empty());
    // No [lookups.OBJECT]: refused when the project loads.
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            "[destinations.crm.lookups.companies]",
            "[destinations.crm.lookups.firms]",
        ),
    );
    let e = f.load().unwrap_err().to_string();
    assert!(e.contains("no [lookups.companies]"), "{e}");
}

/// Values of two types meet only when their text is the same: no conversion makes 42.9 find
/// 42, or 7.0 find 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_other_types_are_compared_as_text() {
    let f = Fixture::new();
    project(
        &f,
        "[destinations.crm]\ntype = \"sqlite\"\npath = \"out/crm.db\"",
        "",
    );
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml
            .replace("by = \"domain\"", "by = \"code\"")
            .replace("value = \"company_domain\"", "value = \"company_code\""),
    );
    f.write("companies.csv", "id,code\n10,42.9\n20,7.5\n30,13.25\n");
    f.write(
        "contacts.csv",
        "id,email,company_code\n1,a@x.io,42\n2,b@x.io,7\n3,c@x.io,\n",
    );
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            "fields.exclude = [\"company_domain\"]",
            "fields.exclude = [\"company_code\"]",
        ),
    );
    f.run_ok("companies").await;
    let r = f.run_ok("contacts").await;
    assert_eq!((r.counts.created, r.counts.rejected), (1, 2), "{r:?}");
    assert_eq!(
        sqlite_companies(&f),
        vec![("3".to_string(), "NULL".to_string())]
    );
}
