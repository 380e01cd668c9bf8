//! The hub end to end: three systems (SQLite databases standing in for a CRM, a billing
//! system and a support tool) contribute and receive accounts; the golden records, the ID map,
//! each authority rule and merge policy, the transaction log, and what is written back to each
//! system (and what is not: no echo) are checked over several cycles with updates.

use std::collections::BTreeMap;

use backflow::history::RunStatus;
use backflow::hub::show::{GoldenRecord, Lookup};
use backflow::project::RunTarget;
use backflow::sync::{NoProgress, RunOptions};

use crate::common::Fixture;

/// Every system's database: its table, a trigger that stamps `updated_at` on every update (as
/// real systems do, so backflow reads its own writes back) and an audit of the updates.
fn system(f: &Fixture, db: &str, table: &str, key: &str, create: &str, rows: &[&str]) {
    let conn = rusqlite::Connection::open(f.path().join(db)).unwrap();
    conn.execute_batch(&format!(
        "{create};
         CREATE TABLE audit (id TEXT);
         CREATE TRIGGER stamp AFTER UPDATE ON {table} WHEN NEW.updated_at IS OLD.updated_at BEGIN
           INSERT INTO audit VALUES (NEW.{key});
           UPDATE {table} SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE {key} = NEW.{key};
         END;"
    ))
    .unwrap();
    for r in rows {
        conn.execute_batch(&format!("INSERT INTO {table} VALUES ({r})"))
            .unwrap();
    }
}

/// Run SQL against a system's database (as its users would).
pub fn edit(f: &Fixture, db: &str, sql: &str) {
    let conn = rusqlite::Connection::open(f.path().join(db)).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// The ids a run of backflow updated in a system (and clear the audit).
fn audited(f: &Fixture, db: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(f.path().join(db)).unwrap();
    let mut ids: Vec<String> = conn
        .prepare("SELECT id FROM audit")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    conn.execute_batch("DELETE FROM audit").unwrap();
    ids.sort();
    ids.dedup();
    ids
}

const CONFIG: &str = r#"
[sources.crm]
type = "sqlite"
path = "crm.db"
tables = ["accounts"]

[sources.billing]
type = "sqlite"
path = "billing.db"
tables = ["customers"]

[sources.support]
type = "sqlite"
path = "support.db"
tables = ["orgs"]

[destinations.crm_db]
type = "sqlite"
path = "crm.db"

[destinations.billing_db]
type = "sqlite"
path = "billing.db"

[destinations.support_db]
type = "sqlite"
path = "support.db"

[destinations.files]
type = "file"
path = "out"
format = "csv"

[entities.account]
fields = { name = "text", domain = "text", phone = "text", plan = "text", mrr = "double", segment = "text" }
match = [["domain"], ["name"]]

[entities.account.authority]
sources = ["crm", "billing"]
fields.domain = { rule = "first_non_null" }
fields.phone = { rule = "first_non_null", sources = ["billing", "crm"] }
fields.plan = { rule = "recent" }
fields.segment = { null_overwrites = true }

[entities.account.merge]
winner = "oldest"
policy = "fill"
fields = { phone = "override", segment = "keep" }

[entities.account.sources.crm]
from = "crm_accounts"
id = "id"
watermark = "updated_at"
fields = { name = "company_name", domain = "domain_of(website)", phone = "normalize_phone(phone)", plan = "plan", segment = "segment" }
writeback = { to = "crm_db", object = "accounts" }

[entities.account.sources.billing]
from = "billing_customers"
id = "customer_id"
watermark = "updated_at"
fields = { name = "name", domain = "domain_of(email)", phone = "normalize_phone(phone)", mrr = "mrr", plan = "plan", segment = "segment" }
writeback = { to = "billing_db", object = "customers" }

[entities.account.sources.support]
from = "support_orgs"
id = "org_id"
watermark = "updated_at"
role = "receive-only"
fields = { name = "name", domain = "domain", plan = "tier" }
writeback = { to = "support_db", object = "orgs", fields = { name = "name", tier = "plan" } }

[syncs.golden_out]
from = "account"
to = "files"
object = "accounts"
behavior = "mirror"
key = "golden_id"
fields = { exclude = ["golden_created_at", "golden_updated_at"] }
"#;

fn hub_project(f: &Fixture) {
    f.write("backflow.toml", CONFIG);
    // The systems keep times as text; the models read them as timestamps.
    f.write(
        "models/crm_accounts.sql",
        "SELECT id, company_name, website, phone, plan, segment, CAST(updated_at AS TIMESTAMP) AS updated_at FROM crm.accounts",
    );
    f.write(
        "models/billing_customers.sql",
        "SELECT customer_id, name, email, phone, mrr, plan, segment, CAST(updated_at AS TIMESTAMP) AS updated_at FROM billing.customers",
    );
    f.write(
        "models/support_orgs.sql",
        "SELECT org_id, name, domain, tier, CAST(updated_at AS TIMESTAMP) AS updated_at FROM support.orgs",
    );
    system(
        f,
        "crm.db",
        "accounts",
        "id",
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, company_name TEXT, website TEXT, phone TEXT, plan TEXT, segment TEXT, updated_at TEXT)",
        &[
            "1, 'Acme Corp', 'https://www.acme.com', '+1 555 010 1000', 'enterprise', 'smb', '2026-11-01 09:00:00'",
            "2, 'Globex', 'globex.io', NULL, 'pro', 'mid', '2026-11-01 09:05:00'",
            "3, 'Initech', 'initech.example', '555-0300', 'free', NULL, '2026-11-02 10:00:00'",
            // The CRM holds Acme twice.
            "5, 'Acme Corporation', 'acme.com', NULL, 'enterprise', 'ent', '2026-11-03 08:00:00'",
        ],
    );
    system(
        f,
        "billing.db",
        "customers",
        "customer_id",
        "CREATE TABLE customers (customer_id TEXT PRIMARY KEY, name TEXT, email TEXT, phone TEXT, mrr REAL, plan TEXT, segment TEXT, updated_at TEXT)",
        &[
            "'B-100', 'ACME', 'billing@acme.com', '+1 555 999 0000', 4200.0, 'enterprise', 'ent', '2026-11-04 12:00:00'",
            "'B-101', 'Globex Corporation', 'ap@globex.io', '555-0102', 990.0, 'business', 'mid', '2026-11-05 12:00:00'",
            "'B-102', 'Hooli', 'finance@hooli.xyz', NULL, 150.0, 'pro', 'smb', '2026-11-05 13:00:00'",
        ],
    );
    system(
        f,
        "support.db",
        "orgs",
        "org_id",
        "CREATE TABLE orgs (org_id TEXT PRIMARY KEY, name TEXT, domain TEXT, tier TEXT, updated_at TEXT)",
        &[
            "'S1', 'acme', 'acme.com', 'gold', '2026-10-01 00:00:00'",
            "'S2', 'hooli inc', 'HOOLI.xyz', 'silver', '2026-10-01 00:00:00'",
            "'S3', 'Pied Piper', 'piedpiper.com', 'bronze', '2026-10-01 00:00:00'",
        ],
    );
}

/// What one `backflow run` did: each entity's and each sync's report, by name.
struct Ran {
    hubs: BTreeMap<String, backflow::hub::HubReport>,
    syncs: BTreeMap<String, backflow::SyncReport>,
}

/// Run everything, in the order `backflow run` does, through the library; insist on success.
async fn run_all(f: &Fixture) -> Ran {
    let project = f.load().expect("project loads");
    let ctx = project.session().await.expect("session");
    let mut ran = Ran {
        hubs: BTreeMap::new(),
        syncs: BTreeMap::new(),
    };
    for target in project.select_targets(&[]).unwrap() {
        match target {
            RunTarget::Entity(name) => {
                let r = backflow::hub::run(&project, &ctx, &name, Default::default()).await;
                assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
                ran.hubs.insert(name, r);
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
                ran.syncs.insert(name, r);
            }
        }
    }
    ran
}

/// The live golden records as `id|name|domain|phone|plan|mrr|segment` lines.
pub async fn golden(f: &Fixture) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let batches = ctx
        .sql(
            "SELECT golden_id, name, domain, phone, plan, CAST(mrr AS VARCHAR) AS mrr, segment \
             FROM account ORDER BY golden_id",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    crate::e2e::hub::lines(&batches)
}

/// Rows as `|`-joined text, NULL as `∅`.
pub fn lines(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| {
                    use arrow::array::{Array, AsArray};
                    if c.is_null(r) {
                        "∅".to_string()
                    } else {
                        c.as_string::<i32>().value(r).to_string()
                    }
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

async fn show(f: &Fixture, lookup: Lookup) -> GoldenRecord {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    backflow::hub::show::golden_record(&project, &ctx, "account", &lookup)
        .await
        .unwrap()
}

/// `source:id→how` for every link of a golden record.
fn links(r: &GoldenRecord) -> Vec<String> {
    r.links
        .iter()
        .map(|l| {
            format!(
                "{}:{}→{}",
                l.source,
                l.source_id,
                l.linked_by.clone().unwrap_or_default()
            )
        })
        .collect()
}

fn field_source(r: &GoldenRecord, field: &str) -> Option<String> {
    r.fields
        .iter()
        .find(|f| f.field == field)
        .and_then(|f| f.source.clone())
}

#[tokio::test]
async fn golden_records_authority_merges_log_and_write_backs_over_several_cycles() {
    // The crash test's failpoints name this entity too.
    let _serial = crate::common::FAILPOINTS.lock().await;
    let f = Fixture::new();
    hub_project(&f);

    // Cycle 1: the initial load.
    let ran = run_all(&f).await;
    let hub = &ran.hubs["account"];
    assert_eq!(hub.cycles, 1);
    assert_eq!(hub.created, 4, "{hub:?}");
    assert_eq!(hub.sources["crm"].read, 4);
    assert_eq!(
        hub.sources["support"].unlinked, 1,
        "Pied Piper matches nothing"
    );
    assert_eq!(
        golden(&f).await,
        vec![
            // crm 1 and 5 and billing B-100 share the domain acme.com: one record. The name is
            // the CRM's (priority), its most recent one (record 5); the phone billing's
            // (first non-NULL, billing first); the plan whoever changed it last (billing);
            // the segment the CRM's.
            "1|Acme Corporation|acme.com|+15559990000|enterprise|4200.0|ent",
            "2|Globex|globex.io|5550102|business|990.0|mid",
            "3|Initech|initech.example|5550300|free|∅|∅",
            "4|Hooli|hooli.xyz|∅|pro|150.0|smb",
        ]
    );
    let acme = show(
        &f,
        Lookup::SourceRecord {
            source: "crm".into(),
            id: "1".into(),
        },
    )
    .await;
    assert_eq!(acme.golden_id, 1);
    assert_eq!(
        links(&acme),
        vec![
            "billing:B-100→new",
            "crm:1→new",
            "crm:5→new",
            "support:S1→match: domain"
        ]
    );
    assert_eq!(field_source(&acme, "phone").as_deref(), Some("billing"));
    assert_eq!(field_source(&acme, "name").as_deref(), Some("crm"));
    assert_eq!(field_source(&acme, "plan").as_deref(), Some("billing"));
    // The support tool's HOOLI.xyz matches hooli.xyz (rules compare case-insensitively).
    let hooli = show(&f, Lookup::Golden(4)).await;
    assert_eq!(
        links(&hooli),
        vec!["billing:B-102→new", "support:S2→match: domain"]
    );

    // Written back: only what differs from what each system has.
    assert_eq!(ran.syncs["account-to-crm"].counts.updated, 2);
    assert_eq!(audited(&f, "crm.db"), vec!["1", "2"]);
    assert_eq!(audited(&f, "billing.db"), vec!["B-100", "B-101"]);
    assert_eq!(audited(&f, "support.db"), vec!["S1", "S2"]);
    let crm = |id: &str| {
        f.sqlite("crm.db", "accounts")
            .into_iter()
            .find(|r| r["id"] == id)
            .unwrap()
    };
    assert_eq!(crm("1")["company_name"], "Acme Corporation");
    assert_eq!(crm("1")["segment"], "ent");
    assert_eq!(crm("2")["plan"], "business");
    let support = f.sqlite("support.db", "orgs");
    assert_eq!(
        crate::common::pairs(&support, "org_id", "tier"),
        vec![
            ("S1".to_string(), "enterprise".to_string()),
            ("S2".into(), "pro".into()),
            ("S3".into(), "bronze".into())
        ]
    );

    // Cycle 2: the systems stamped the updates backflow made; reading them back changes
    // nothing and sends nothing (no ping-pong).
    let ran = run_all(&f).await;
    assert_eq!(ran.hubs["account"].updated, 0);
    for (db, sync) in [
        ("crm.db", "account-to-crm"),
        ("billing.db", "account-to-billing"),
        ("support.db", "account-to-support"),
    ] {
        assert_eq!(audited(&f, db), Vec::<String>::new(), "{db}");
        assert_eq!(ran.syncs[sync].counts.updated, 0, "{sync}");
    }
    let version_after_echo = ran.hubs["account"].state_version;

    // Cycle 3: changes in the systems.
    // The CRM renames Initech (its name wins) and clears Globex's segment (a NULL from the
    // CRM overwrites: null_overwrites); billing renames Globex (the CRM's name wins: it is
    // put back), moves Hooli to enterprise (the most recent plan wins) and adds an Initech
    // LLC without an e-mail, which becomes a new golden record and is then merged into
    // Initech by the name rule.
    edit(
        &f,
        "crm.db",
        "UPDATE accounts SET company_name = 'Initech LLC' WHERE id = 3;
         UPDATE accounts SET segment = NULL WHERE id = 2;",
    );
    edit(
        &f,
        "billing.db",
        "UPDATE customers SET name = 'Globex Corp Intl' WHERE customer_id = 'B-101';
         UPDATE customers SET plan = 'enterprise' WHERE customer_id = 'B-102';
         INSERT INTO customers VALUES ('B-105', 'Initech LLC', NULL, '555-0199', 75.0, 'pro', 'smb', strftime('%Y-%m-%d %H:%M:%f', 'now'));",
    );
    for db in ["crm.db", "billing.db"] {
        audited(&f, db);
    }
    let ran = run_all(&f).await;
    let hub = &ran.hubs["account"];
    assert!(hub.state_version > version_after_echo);
    assert_eq!(hub.merged, 1, "{hub:?}");
    assert_eq!(
        golden(&f).await,
        vec![
            "1|Acme Corporation|acme.com|+15559990000|enterprise|4200.0|ent",
            "2|Globex|globex.io|5550102|business|990.0|∅",
            // Merged: phone from the loser (override), mrr filled from it (fill), the
            // segment and the plan kept as the winner had them (keep; fill of a value).
            "3|Initech LLC|initech.example|5550199|free|75.0|∅",
            "4|Hooli|hooli.xyz|∅|enterprise|150.0|smb",
        ]
    );
    let initech = show(&f, Lookup::Golden(3)).await;
    assert_eq!(initech.absorbed, vec![5]);
    assert_eq!(links(&initech), vec!["billing:B-105→merge", "crm:3→new"]);
    let loser = show(&f, Lookup::Golden(5)).await;
    assert_eq!(loser.merged_into, Some(3));
    let ops: Vec<String> = initech
        .history
        .iter()
        .filter(|e| e.version == hub.state_version.unwrap() as i64)
        .map(|e| {
            format!(
                "{} {} {} {}→{} {}",
                e.golden_id,
                e.op,
                e.field.clone().unwrap_or_default(),
                e.old_value.clone().unwrap_or_default(),
                e.new_value.clone().unwrap_or_default(),
                e.source.clone().unwrap_or_default()
            )
        })
        .collect();
    for expected in [
        "5 create  → ",
        "5 merge  →3 ",
        "3 link  →3 billing",
        "3 set name Initech→Initech LLC crm",
        "3 set phone 5550300→5550199 billing",
        "3 set mrr →75.0 billing",
    ] {
        assert!(
            ops.iter().any(|o| o == expected),
            "missing log entry {expected:?} in {ops:#?}"
        );
    }
    assert!(
        !ops.iter()
            .any(|o| o.contains("set segment") || o.contains("set plan")),
        "segment and plan were kept: {ops:#?}"
    );
    let globex = show(&f, Lookup::Golden(2)).await;
    assert!(globex.history.iter().any(|e| e.op == "set"
        && e.field.as_deref() == Some("segment")
        && e.old_value.as_deref() == Some("mid")
        && e.new_value.is_none()
        && e.source.as_deref() == Some("crm")));

    // Written back: the CRM gets nothing (it made its changes itself); billing gets Globex's
    // name back and its segment cleared, and the merged Initech's plan and segment; the
    // support tool gets Hooli's new plan.
    assert_eq!(audited(&f, "crm.db"), Vec::<String>::new());
    assert_eq!(audited(&f, "billing.db"), vec!["B-101", "B-105"]);
    assert_eq!(audited(&f, "support.db"), vec!["S2"]);
    let billing = f.sqlite("billing.db", "customers");
    let b101 = billing
        .iter()
        .find(|r| r["customer_id"] == "B-101")
        .unwrap();
    assert_eq!(b101["name"], "Globex");
    assert_eq!(b101["segment"], "NULL");
    let b105 = billing
        .iter()
        .find(|r| r["customer_id"] == "B-105")
        .unwrap();
    assert_eq!(
        (b105["plan"].as_str(), b105["segment"].as_str()),
        ("free", "NULL")
    );

    // Cycle 4: again, nothing comes back.
    let ran = run_all(&f).await;
    assert_eq!(ran.hubs["account"].updated, 0);
    for db in ["crm.db", "billing.db", "support.db"] {
        assert_eq!(audited(&f, db), Vec::<String>::new(), "{db}");
    }

    // Cycle 5: billing changes the merged record's plan: the most recent plan wins, and goes
    // to the CRM (not back to billing).
    edit(
        &f,
        "billing.db",
        "UPDATE customers SET plan = 'business' WHERE customer_id = 'B-105'",
    );
    audited(&f, "billing.db");
    let ran = run_all(&f).await;
    assert_eq!(ran.hubs["account"].updated, 1);
    assert_eq!(
        golden(&f).await[2],
        "3|Initech LLC|initech.example|5550199|business|75.0|∅"
    );
    assert_eq!(audited(&f, "crm.db"), vec!["3"]);
    assert_eq!(crm("3")["plan"], "business");
    assert_eq!(audited(&f, "billing.db"), Vec::<String>::new());

    // The golden records reached their file too.
    let out = std::fs::read_to_string(f.path().join("out/accounts.csv")).unwrap();
    assert!(out.contains("Initech LLC") && !out.contains(",5,"), "{out}");
    assert_eq!(out.lines().count(), 5, "{out}");
}

/// The ID map: every golden record (live or not) with its source records.
async fn id_map(f: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for line in golden(f).await {
        let id: i64 = line.split('|').next().unwrap().parse().unwrap();
        let r = show(f, Lookup::Golden(id)).await;
        out.push(format!("{id}: {}", links(&r).join(", ")));
    }
    out
}

/// A system's table without its `updated_at` stamps (they differ between runs).
fn contents(f: &Fixture, db: &str, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = f
        .sqlite(db, table)
        .into_iter()
        .map(|mut r| {
            r.remove("updated_at");
            format!("{r:?}")
        })
        .collect();
    rows.sort();
    rows
}

/// The changes of cycle 3 of the main test.
fn changes(f: &Fixture) {
    edit(
        f,
        "crm.db",
        "UPDATE accounts SET company_name = 'Initech LLC' WHERE id = 3;
         UPDATE accounts SET segment = NULL WHERE id = 2;",
    );
    edit(
        f,
        "billing.db",
        "UPDATE customers SET name = 'Globex Corp Intl' WHERE customer_id = 'B-101';
         UPDATE customers SET plan = 'enterprise' WHERE customer_id = 'B-102';
         INSERT INTO customers VALUES ('B-105', 'Initech LLC', NULL, '555-0199', 75.0, 'pro', 'smb', strftime('%Y-%m-%d %H:%M:%f', 'now'));",
    );
}

/// Everything one `backflow run` would do, with failpoint `point` set to fail `target` (an
/// error, or a panic that ends the run). Returns whether some part of the run stopped there.
#[cfg(feature = "failpoints")]
pub async fn run_faulted_all(f: &Fixture, point: &str, target: &str, panic: bool) -> bool {
    let arg = if panic {
        format!("panic:{target}")
    } else {
        target.to_string()
    };
    let _failpoints = crate::common::FAILPOINTS.lock().await;
    fail::cfg(point, &format!("return({arg})")).unwrap();
    let path = f.path().to_path_buf();
    let point_name = point.to_string();
    let outcome = tokio::spawn(async move {
        let project = backflow::Project::load(&path).unwrap();
        let ctx = project.session().await.unwrap();
        let mut stopped = false;
        for t in project.select_targets(&[]).unwrap() {
            let error = match t {
                RunTarget::Entity(name) => {
                    backflow::hub::run(&project, &ctx, &name, Default::default())
                        .await
                        .error
                }
                RunTarget::Sync(name) => {
                    backflow::sync::run(
                        &project,
                        &ctx,
                        &name,
                        RunOptions::default(),
                        std::sync::Arc::new(NoProgress),
                    )
                    .await
                    .error
                }
            };
            stopped |= error.is_some_and(|e| e.contains(&point_name));
        }
        stopped
    })
    .await;
    fail::remove(point);
    match outcome {
        Ok(stopped) => stopped,
        Err(join) => join.is_panic(),
    }
}

/// A cycle that dies anywhere — in the hub (as an error or a panic) or in a write-back — and is
/// run again ends with the same golden records, ID map and systems as one that did not.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_crash_anywhere_in_a_cycle_then_a_rerun_equals_an_uninterrupted_run() {
    let clean = Fixture::new();
    hub_project(&clean);
    run_all(&clean).await;
    changes(&clean);
    run_all(&clean).await;
    let expected = (
        golden(&clean).await,
        id_map(&clean).await,
        contents(&clean, "crm.db", "accounts"),
        contents(&clean, "billing.db", "customers"),
        contents(&clean, "support.db", "orgs"),
    );
    assert_eq!(expected.0.len(), 4);

    let mut cases = Vec::new();
    for point in [
        "hub_after_read",
        "hub_after_attach",
        "hub_after_merge",
        "hub_before_commit",
        "hub_after_commit",
    ] {
        for panic in [false, true] {
            cases.push((point, "account", panic));
        }
    }
    for point in [
        "after_diff",
        "after_destination_write",
        "before_commit",
        "after_commit",
    ] {
        cases.push((point, "account-to-billing", false));
        cases.push((point, "account-to-support", true));
    }
    for (point, target, panic) in cases {
        let f = Fixture::new();
        hub_project(&f);
        run_all(&f).await;
        changes(&f);
        assert!(
            run_faulted_all(&f, point, target, panic).await,
            "{point} for {target} never stopped the run"
        );
        run_all(&f).await;
        let got = (
            golden(&f).await,
            id_map(&f).await,
            contents(&f, "crm.db", "accounts"),
            contents(&f, "billing.db", "customers"),
            contents(&f, "support.db", "orgs"),
        );
        assert_eq!(got, expected, "after {point} for {target} (panic: {panic})");
    }
}

/// Copy a bundled example into the fixture.
fn copy_example(f: &Fixture, name: &str) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name);
    let mut todo = vec![src.clone()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(&src).unwrap();
            if rel.starts_with("out") || rel.starts_with(".backflow") {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else {
                let to = f.path().join(rel);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&p, to).unwrap();
            }
        }
    }
}

#[test]
fn the_bundled_hub_example_runs_end_to_end_and_shows_its_records() {
    let f = Fixture::new();
    copy_example(&f, "example-hub");
    let (code, out, err) = f.cli(&["run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The seeds run before the entity, the write-backs right after it, the export last.
    let order: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("✓ "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        order,
        vec![
            "crm_seed",
            "support_seed",
            "account",
            "account-to-crm",
            "account-to-support",
            "golden_accounts"
        ],
        "{out}"
    );
    assert!(
        out.contains("golden: created 6") && out.contains("merged 1"),
        "{out}"
    );
    let golden = std::fs::read_to_string(f.path().join("out/golden_accounts.csv")).unwrap();
    assert_eq!(golden.lines().count(), 6, "{golden}");
    assert!(
        golden.contains("Acme Corporation,acme.com,+15550101000,enterprise,4200.0"),
        "{golden}"
    );
    // The CRM's duplicate Acme records both carry the unified name now.
    let crm = f.sqlite("out/crm.db", "accounts");
    assert_eq!(
        crm.iter()
            .filter(|r| r["company_name"] == "Acme Corporation")
            .count(),
        2
    );

    let (code, out, err) = f.cli(&["hub", "show", "account", "--source", "crm", "--id", "5"]);
    assert_eq!(code, 0, "{err}");
    for part in [
        "Acme Corporation",
        "billing   B-100",
        "support   S1",
        "match: domain",
        "set",
    ] {
        assert!(out.contains(part), "{part:?} missing in\n{out}");
    }
    let (code, out, _) = f.cli(&["hub", "show", "account", "1", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["golden_id"], 1);
    assert!(v["links"].as_array().unwrap().len() >= 2, "{v}");
    let (code, out, _) = f.cli(&["hub", "log", "account", "--limit", "5", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5);
    let (code, _, err) = f.cli(&["hub", "show", "acount", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean \"account\""), "{err}");
    let (code, _, err) = f.cli(&["hub", "show", "account", "99"]);
    assert_ne!(code, 0);
    assert!(err.contains("no golden record 99"), "{err}");

    // `plan ENTITY` says what its next cycle would do: nothing changed since the run.
    let (code, out, err) = f.cli(&["plan", "account"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("account  (hub plan)") && out.contains("create 0"),
        "{out}"
    );
    let (code, out, _) = f.cli(&["plan", "account-to-crm"]);
    assert_eq!(code, 0, "{out}");

    // History lists the entity's runs by its name.
    let (code, out, _) = f.cli(&["history", "account"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("hub.account") && out.contains("succeeded"),
        "{out}"
    );

    // A second run finds nothing new and sends nothing.
    let (code, out, _) = f.cli(&["run"]);
    assert_eq!(code, 0);
    assert!(out.contains("account  (hub, 0 cycles)"), "{out}");
    assert!(
        !out.contains("updated 1") && !out.contains("updated 2"),
        "{out}"
    );
}

/// A project with one entity over CSV sources, for configuration and reading tests.
fn csv_entity(f: &Fixture, entity: &str) {
    f.write(
        "backflow.toml",
        &format!(
            r#"
[sources.a]
type = "csv"
path = "a.csv"

[sources.b]
type = "csv"
path = "b.csv"

[destinations.db]
type = "sqlite"
path = "out/db.sqlite"

{entity}
"#
        ),
    );
}

#[test]
fn entity_configuration_mistakes_are_all_reported_before_anything_runs() {
    let f = Fixture::new();
    csv_entity(
        &f,
        r#"
[entities.person]
fields = { email = "text", name = "txt", golden_id = "bigint" }
match = [["emial"]]
authority = { sources = ["x"], fields = { nme = { rule = "recent" } } }
merge = { winner = "oldest", rules = [[]] }

[entities.person.sources.a]
from = "aa"
id = "id"
fields = { email = "email", phone = "phone" }
role = "contribute-only"
writeback = { to = "nowhere", object = "people", create_id = "'p-' || golden_id" }

[entities.person.sources.b]
from = "b"
id = "id"
role = "receive-only"
fields = { email = "email" }
writeback = { to = "db", object = "people", fields = { id = "email" } }
"#,
    );
    let err = f.load().unwrap_err().to_string();
    for part in [
        "field \"name\": unknown type \"txt\"",
        "field \"golden_id\": the name is reserved",
        "match rule 1 names unknown field \"emial\" (did you mean \"email\"?)",
        "authority.sources names unknown source \"x\"",
        "authority.fields names unknown field \"nme\"",
        "merge rule 1 names no field",
        "source \"a\": reads from unknown model, segment or source \"aa\" (did you mean \"a\"?)",
        "source \"a\": fields maps unknown entity field \"phone\"",
        "source \"a\": it is contribute-only, so nothing is written back to it",
        "writeback goes to unknown destination \"nowhere\"",
        "source \"b\": writeback.fields writes the key field \"id\"",
        "source \"a\": writeback.create_id is set but create is not",
    ] {
        assert!(err.contains(part), "{part:?} missing in:\n{err}");
    }
    assert!(err.contains("backflow.toml"), "{err}");
}

#[tokio::test]
async fn reads_are_bounded_per_cycle_and_invalid_records_are_reported() {
    let f = Fixture::new();
    csv_entity(
        &f,
        r#"
[entities.person]
fields = { email = "text", name = "text" }
match = [["email"]]
batch_size = 3

[entities.person.sources.a]
from = "a"
id = "id"
watermark = "updated_at"
fields = { email = "normalize_email(email)", name = "name" }

[entities.person.sources.b]
from = "b"
id = "id"
fields = { email = "lower(email)", name = "name" }
"#,
    );
    // Seven records in a, three tied at one watermark; one without an id, one id twice at the
    // same watermark. b has no watermark: it is read whole, in id order.
    f.write(
        "a.csv",
        "id,email,name,updated_at\n\
         1,Ann@x.io,Ann,2026-01-01T00:00:00\n\
         2,bo@x.io,Bo,2026-01-02T00:00:00\n\
         3,cy@x.io,Cy,2026-01-02T00:00:00\n\
         4,di@x.io,Di,2026-01-02T00:00:00\n\
         ,nobody@x.io,Nobody,2026-01-03T00:00:00\n\
         5,ed@x.io,Ed,2026-01-04T00:00:00\n\
         5,ed@y.io,Ed Y,2026-01-04T00:00:00\n\
         6,fay@x.io,Fay,2026-01-05T00:00:00\n",
    );
    f.write(
        "b.csv",
        "id,email,name\n10,ANN@X.IO,Ann B\n11,gus@x.io,Gus\n",
    );
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert!(r.cycles >= 3, "8 records at 3 per cycle: {r:?}");
    assert_eq!(r.sources["a"].read, 8, "{r:?}");
    assert_eq!(r.sources["a"].invalid, 3, "{r:?}");
    assert_eq!(r.sources["b"].read, 2, "{r:?}");
    let reasons: Vec<&str> = r.samples.iter().map(|s| s.reason.as_str()).collect();
    assert!(reasons.contains(&"the id is NULL"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|s| s.contains("more than once with the same watermark")),
        "{reasons:?}"
    );
    assert!(r.samples.iter().any(|s| s.key.as_deref() == Some("a:5")));
    drop(ctx);
    // Every valid record is in: a's 1, 2, 3, 4 and 6, with b's Ann on a's Ann.
    let batches = project
        .session()
        .await
        .unwrap()
        .sql("SELECT email, name FROM person ORDER BY email")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        lines(&batches),
        vec![
            "ann@x.io|Ann",
            "bo@x.io|Bo",
            "cy@x.io|Cy",
            "di@x.io|Di",
            "fay@x.io|Fay",
            "gus@x.io|Gus"
        ]
    );
    // The run history keeps the invalid records.
    let runs = backflow::history::runs(&project.state, "hub.person", 5)
        .await
        .unwrap();
    assert_eq!(runs[0].counts.invalid, 3);

    // A record added at an old watermark value still tied with the last one read is seen;
    // records read again unchanged commit nothing.
    let mut a = std::fs::read_to_string(f.path().join("a.csv")).unwrap();
    a.push_str("7,hal@x.io,Hal,2026-01-05T00:00:00\n");
    f.write("a.csv", &a);
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!((r.cycles, r.created), (1, 1), "{r:?}");
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!((r.cycles, r.created, r.updated), (0, 0, 0), "{r:?}");
}

/// A write-back field the source does not read back (here the golden id, into a column the
/// CRM never reports) cannot be compared with what the source has: the write-back compares
/// with what it last sent. Its own changes reach the CRM once, and nothing loops.
#[tokio::test]
async fn a_write_back_of_a_field_never_read_back_is_sent_once_per_change() {
    let _serial = crate::common::FAILPOINTS.lock().await;
    let f = Fixture::new();
    hub_project(&f);
    let toml = std::fs::read_to_string(f.path().join("backflow.toml")).unwrap();
    f.write(
        "backflow.toml",
        &toml.replace(
            r#"writeback = { to = "crm_db", object = "accounts" }"#,
            r#"writeback = { to = "crm_db", object = "accounts", fields = { company_name = "name", master_id = "golden_id" } }"#,
        ),
    );
    run_all(&f).await;
    // Every CRM record gets its golden id (the column is added).
    assert_eq!(audited(&f, "crm.db"), vec!["1", "2", "3", "5"]);
    let crm = f.sqlite("crm.db", "accounts");
    assert_eq!(
        crate::common::pairs(&crm, "id", "master_id"),
        vec![
            ("1".to_string(), "1".to_string()),
            ("2".into(), "2".into()),
            ("3".into(), "3".into()),
            ("5".into(), "1".into())
        ]
    );
    // Reading those writes back sends nothing.
    run_all(&f).await;
    assert_eq!(audited(&f, "crm.db"), Vec::<String>::new());
    // A change the CRM made is written back to it once (no comparison with its report), then
    // nothing more.
    edit(
        &f,
        "crm.db",
        "UPDATE accounts SET company_name = 'Initech LLC' WHERE id = 3",
    );
    audited(&f, "crm.db");
    run_all(&f).await;
    assert_eq!(audited(&f, "crm.db"), vec!["3"]);
    run_all(&f).await;
    assert_eq!(audited(&f, "crm.db"), Vec::<String>::new());
}

#[tokio::test]
async fn blank_values_match_nothing_and_odd_records_are_reported() {
    let f = Fixture::new();
    csv_entity(
        &f,
        r#"
[entities.person]
fields = { email = "text", name = "text", score = "double" }
match = [["email"]]
batch_size = 2

[entities.person.sources.a]
from = "a"
id = "id"
watermark = "updated_at"
fields = { email = "email", name = "name", score = "score" }

[entities.person.sources.b]
from = "b"
id = "id"
fields = { email = "email", name = "name" }
"#,
    );
    // Blank e-mails are no key (nobody shares one); a NULL id at the end of a batch does not
    // stop the reading; a value that is not a number is named.
    f.write(
        "a.csv",
        "id,email,name,score,updated_at\n\
         1,,Ann,1.5,2026-01-01T00:00:00\n\
         ,x@y.io,Nobody,2,2026-01-02T00:00:00\n\
         3,  ,Cy,n/a,2026-01-02T00:00:00\n\
         4,  ,Di,4,2026-01-02T00:00:00\n\
         5,e@y.io,Ed,5,2026-01-03T00:00:00\n",
    );
    f.write("b.csv", "id,email,name\n10,,Bo\n11,e@y.io,Ed B\n");
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let r = backflow::hub::run(&project, &ctx, "person", Default::default()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.sources["a"].read, 5, "{r:?}");
    assert_eq!(r.sources["a"].invalid, 2, "{r:?}");
    let reasons: Vec<&str> = r.samples.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|s| s.contains("field(s) score cannot be read")),
        "{reasons:?}"
    );
    drop(ctx);
    let batches = project
        .session()
        .await
        .unwrap()
        .sql("SELECT name, score FROM person ORDER BY name")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // Ann, Di and Bo stay apart (blank e-mails); Ed B joins Ed by e-mail.
    assert_eq!(lines(&batches), vec!["Ann|1.5", "Bo|∅", "Di|4.0", "Ed|5.0"]);
}

#[tokio::test]
async fn a_full_resync_decides_every_field_again_over_every_cycle() {
    let f = Fixture::new();
    let entity = |order: &str| {
        format!(
            r#"
[entities.person]
fields = {{ email = "text", name = "text" }}
match = [["email"]]
batch_size = 2
authority = {{ sources = [{order}] }}

[entities.person.sources.a]
from = "a"
id = "id"
fields = {{ email = "email", name = "name" }}

[entities.person.sources.b]
from = "b"
id = "id"
fields = {{ email = "email", name = "name" }}
"#
        )
    };
    csv_entity(&f, &entity(r#""a", "b""#));
    f.write(
        "a.csv",
        "id,email,name\n1,p@x.io,A1\n2,q@x.io,A2\n3,r@x.io,A3\n4,s@x.io,A4\n",
    );
    f.write(
        "b.csv",
        "id,email,name\n1,p@x.io,B1\n2,q@x.io,B2\n3,r@x.io,B3\n4,s@x.io,B4\n",
    );
    person_run(&f, false).await;
    assert_eq!(person_names(&f).await, vec!["A1", "A2", "A3", "A4"]);
    // b first now: nothing changed in the sources, so nothing is decided again…
    csv_entity(&f, &entity(r#""b", "a""#));
    person_run(&f, false).await;
    assert_eq!(person_names(&f).await, vec!["A1", "A2", "A3", "A4"]);
    // …until a full resync, over all of its cycles.
    let r = person_run(&f, true).await;
    assert!(r.cycles >= 2, "{r:?}");
    assert_eq!(person_names(&f).await, vec!["B1", "B2", "B3", "B4"]);
}

async fn person_names(f: &Fixture) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    lines(
        &ctx.sql("SELECT name FROM person ORDER BY email")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

async fn person_run(f: &Fixture, full_resync: bool) -> backflow::hub::HubReport {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    let options = backflow::hub::HubOptions {
        full_resync,
        ..Default::default()
    };
    let r = backflow::hub::run(&project, &ctx, "person", options).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    r
}

/// The live golden records of `person` as `email|name`, read from a fresh session.
async fn person_lines(f: &Fixture) -> Vec<String> {
    let project = f.load().unwrap();
    let ctx = project.session().await.unwrap();
    lines(
        &ctx.sql("SELECT email, name FROM person ORDER BY email")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_writes_the_golden_records_and_id_maps_it_changed_not_all_of_them() {
    let entity = r#"
[entities.person]
fields = { email = "text", name = "text" }
match = [["email"]]

[entities.person.sources.a]
from = "a"
id = "id"
fields = { email = "email", name = "name" }

[entities.person.sources.b]
from = "b"
id = "id"
fields = { email = "email", name = "name" }
"#;
    let people = |names: &dyn Fn(usize) -> String, n: usize| {
        let mut csv = "id,email,name\n".to_string();
        for i in 0..n {
            csv.push_str(&format!("{i},p{i}@x.io,{}\n", names(i)));
        }
        csv
    };
    let f = Fixture::new();
    csv_entity(&f, entity);
    f.write("a.csv", &people(&|i| format!("A{i}"), 3000));
    f.write("b.csv", &people(&|i| format!("B{i}"), 1500));
    person_run(&f, false).await;
    let manifest = |f: &Fixture| {
        let project = f.load().unwrap();
        async move {
            backflow::hub::latest(&project, "person")
                .await
                .unwrap()
                .unwrap()
        }
    };
    let first = manifest(&f).await;
    assert!(first.golden_deltas.is_empty());
    assert_eq!(first.golden.rows, 3000);

    // Each later cycle changes a few records of `a`: a layer of those golden records only,
    // and `b`'s ID map file stays as it was. The ninth layer folds them all into one file.
    let mut edited = std::collections::BTreeMap::new();
    for round in 1..=10usize {
        for k in 0..3 {
            edited.insert(round * 7 + k, format!("R{round}"));
        }
        f.write(
            "a.csv",
            &people(
                &|i| edited.get(&i).cloned().unwrap_or(format!("A{i}")),
                3000,
            ),
        );
        let before = manifest(&f).await;
        person_run(&f, false).await;
        let after = manifest(&f).await;
        assert_eq!(
            after.sources["b"].contributions,
            before.sources["b"].contributions
        );
        assert_ne!(
            after.sources["a"].contributions,
            before.sources["a"].contributions
        );
        if round < 9 {
            assert_eq!(after.golden_deltas.len(), round, "round {round}");
            assert_eq!(after.golden, first.golden);
            assert_eq!(after.golden_deltas.last().unwrap().rows, 3, "round {round}");
        } else {
            assert_eq!(after.golden_deltas.len(), round - 9, "round {round}");
        }
        // The version's data folder keeps only the files its manifest names.
        let project = f.load().unwrap();
        let dir = after
            .golden_deltas
            .last()
            .map_or(&after.golden.path, |d| &d.path);
        let dir = dir.rsplit_once('/').unwrap().0;
        let mut named = after.clone();
        let named: Vec<String> = backflow::state::Versioned::files_mut(&mut named)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        for file in project.state.list_files(dir).await.unwrap() {
            let rel = format!("{dir}/{file}");
            assert!(named.contains(&rel), "round {round}: {rel} is left over");
        }
    }
    // The layered golden records are those a fresh hub makes of the same files.
    let layered = person_lines(&f).await;
    let fresh = Fixture::new();
    csv_entity(&fresh, entity);
    for file in ["a.csv", "b.csv"] {
        fresh.write(file, &std::fs::read_to_string(f.path().join(file)).unwrap());
    }
    person_run(&fresh, false).await;
    assert_eq!(layered, person_lines(&fresh).await);
    assert_eq!(layered.len(), 3000);
    assert!(
        layered.contains(&"p70@x.io|R10".to_string()),
        "{:?}",
        &layered[..5]
    );
}
