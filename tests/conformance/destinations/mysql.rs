//! MySQL/MariaDB: tables named `bfc_<check>_…` in the test database (the URL's database is the
//! one written; see `tests/common/db.rs`; skipped when unreachable, except under `CI=true`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use tokio::sync::Mutex;

use crate::common::db;
use crate::conformance::{
    Capabilities, DestinationFixture, Fault, KEY, NULL, ObjectSchema, Seed, Setup,
};

pub struct MysqlFixture {
    conn: Mutex<Conn>,
    prefix: String,
}

pub async fn open(setup: Setup) -> Option<Box<dyn DestinationFixture>> {
    let conn = db::mysql().await?;
    // Short (a table name has at most 64 characters) and unique per check.
    let prefix = format!("bfc_{}_", setup.check.chars().take(6).collect::<String>());
    let fx = MysqlFixture {
        conn: Mutex::new(conn),
        prefix,
    };
    fx.drop_tables().await;
    Some(Box::new(fx))
}

fn q(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

fn text(v: &Value) -> String {
    match v {
        Value::NULL => NULL.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.as_sql(true).trim_matches('\'').to_string(),
    }
}

impl MysqlFixture {
    /// Every table of this check, left by an earlier run or made by this one.
    async fn drop_tables(&self) {
        let mut conn = self.conn.lock().await;
        let tables: Vec<String> = conn
            .exec(
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND LEFT(table_name, CHAR_LENGTH(?)) = ?",
                (&self.prefix, &self.prefix),
            )
            .await
            .unwrap();
        for t in tables {
            conn.query_drop(format!("DROP TABLE IF EXISTS {}", q(&t)))
                .await
                .unwrap();
        }
    }
}

#[async_trait]
impl DestinationFixture for MysqlFixture {
    fn toml(&self) -> String {
        format!(
            "[destinations.dest]\ntype = \"mysql\"\nurl_env = \"{}\"\n",
            db::MY_ENV
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checks_records: true,
            editable: true,
            lists_records: true,
            // No unique e-mail: an upsert refuses a table with unique indexes besides the key
            // (ON DUPLICATE KEY UPDATE would fire on them).
            refuses: vec![
                (Fault::EmailWithoutAt, "email_has_at"),
                (Fault::NullName, "cannot be null"),
                (Fault::NameTooLong, "too long"),
                (Fault::OutOfRange, "Out of range"),
            ],
            types: Some(vec![
                (KEY, "bigint(20)"),
                ("i16", "smallint(6)"),
                ("i32", "int(11)"),
                ("i64", "bigint(20)"),
                ("f64", "double"),
                ("dec", "decimal(38,10)"),
                ("flag", "tinyint(1)"),
                ("day", "date"),
                ("at", "datetime(6)"),
                ("at_utc", "datetime(6)"),
                ("txt", "longtext"),
            ]),
            primary_key: true,
            min_date: "0001-01-01",
            empty_text_is_null: false,
            column_defaults: true,
            applies_per_batch: true,
            composite_keys: true,
        }
    }

    fn object(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    async fn seed(&self, object: &str, seed: Seed<'_>) {
        let cols: Vec<String> = seed
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (i, seed.keyed) {
                (0, true) => format!("{} BIGINT PRIMARY KEY", q(c)),
                (0, false) => format!("{} BIGINT", q(c)),
                _ => match seed.defaults.iter().find(|(d, _)| d == c) {
                    Some((_, v)) => format!("{} TEXT DEFAULT '{}'", q(c), v.replace('\'', "''")),
                    None => format!("{} TEXT", q(c)),
                },
            })
            .collect();
        let mut conn = self.conn.lock().await;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            q(object),
            cols.join(", ")
        ))
        .await
        .unwrap();
        let names: Vec<String> = seed.columns.iter().map(|c| q(c)).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            q(object),
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        );
        if seed.keyed {
            let set: Vec<String> = names[1..]
                .iter()
                .map(|c| format!("{c} = VALUES({c})"))
                .collect();
            sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {}", set.join(", ")));
        }
        for row in &seed.rows {
            let values: Vec<Value> = row
                .iter()
                .enumerate()
                .map(|(i, v)| match (i, v.as_str()) {
                    (_, NULL) => Value::NULL,
                    (0, v) => Value::Int(v.parse().unwrap()),
                    (_, v) => Value::Bytes(v.as_bytes().to_vec()),
                })
                .collect();
            conn.exec_drop(&sql, values).await.unwrap();
        }
    }

    async fn create_refusing(&self, object: &str) {
        self.conn
            .lock()
            .await
            .query_drop(format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, email VARCHAR(100), \
                 name VARCHAR(5) NOT NULL, n INT, CONSTRAINT email_has_at CHECK (email LIKE '%@%'))",
                q(object)
            ))
            .await
            .unwrap();
    }

    async fn read(&self, object: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("CAST({} AS CHAR)", q(c)))
            .collect();
        let rows: Vec<mysql_async::Row> = self
            .conn
            .lock()
            .await
            .query(format!("SELECT {} FROM {}", cols.join(", "), q(object)))
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.as_ref(i).map_or(NULL.to_string(), text))
                    .collect()
            })
            .collect()
    }

    async fn schema(&self, object: &str) -> Option<ObjectSchema> {
        let rows: Vec<(String, String, String)> = self
            .conn
            .lock()
            .await
            .exec(
                "SELECT CAST(column_name AS CHAR), CAST(LOWER(column_type) AS CHAR), CAST(column_key AS CHAR) \
                 FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
                (object,),
            )
            .await
            .unwrap();
        Some(ObjectSchema {
            primary_key: rows
                .iter()
                .filter(|(_, _, k)| k == "PRI")
                .map(|(n, _, _)| n.clone())
                .collect(),
            columns: rows
                .into_iter()
                .map(|(n, t, _)| (n, t))
                .collect::<BTreeMap<_, _>>(),
        })
    }

    async fn touched(&self, _object: &str) -> Option<String> {
        // InnoDB keeps no row versions a client can read: the counts and contents decide.
        None
    }

    async fn cleanup(&self) {
        self.drop_tables().await;
    }
}
