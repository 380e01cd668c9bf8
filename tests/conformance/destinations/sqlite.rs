//! SQLite: a database file in the project (`out/app.db`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use rusqlite::types::Value;

use crate::conformance::{
    Capabilities, DestinationFixture, Fault, KEY, NULL, ObjectSchema, Seed, Setup,
};

pub struct SqliteFixture {
    db: PathBuf,
}

pub async fn open(setup: Setup) -> Option<Box<dyn DestinationFixture>> {
    Some(Box::new(SqliteFixture {
        db: setup.dir.join("out/app.db"),
    }))
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl SqliteFixture {
    fn connect(&self) -> rusqlite::Connection {
        std::fs::create_dir_all(self.db.parent().unwrap()).unwrap();
        rusqlite::Connection::open(&self.db).unwrap()
    }
}

#[async_trait]
impl DestinationFixture for SqliteFixture {
    fn toml(&self) -> String {
        "[destinations.dest]\ntype = \"sqlite\"\npath = \"out/app.db\"\n".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checks_records: true,
            editable: true,
            lists_records: true,
            refuses: vec![
                (
                    Fault::EmailWithoutAt,
                    "CHECK constraint failed: email_has_at",
                ),
                (Fault::NullName, "NOT NULL constraint failed"),
                (Fault::NameTooLong, "CHECK constraint failed: name_short"),
                (Fault::DuplicateEmail, "UNIQUE constraint failed"),
            ],
            // Declared types only: SQLite stores decimals, dates and timestamps as text.
            types: Some(vec![
                (KEY, "integer"),
                ("i16", "integer"),
                ("i32", "integer"),
                ("i64", "integer"),
                ("f64", "real"),
                ("dec", "text"),
                ("flag", "integer"),
                ("day", "text"),
                ("at", "text"),
                ("at_utc", "text"),
                ("txt", "text"),
            ]),
            primary_key: true,
            min_date: "0001-01-01",
            empty_text_is_null: false,
            column_defaults: true,
            applies_per_batch: true,
            composite_keys: true,
        }
    }

    async fn seed(&self, object: &str, seed: Seed<'_>) {
        let conn = self.connect();
        let cols: Vec<String> = seed
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (i, seed.keyed) {
                (0, true) => format!("{} INTEGER PRIMARY KEY", q(c)),
                (0, false) => format!("{} INTEGER", q(c)),
                _ => match seed.defaults.iter().find(|(d, _)| d == c) {
                    Some((_, v)) => format!("{} TEXT DEFAULT '{}'", q(c), v.replace('\'', "''")),
                    None => format!("{} TEXT", q(c)),
                },
            })
            .collect();
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            q(object),
            cols.join(", ")
        ))
        .unwrap();
        let names: Vec<String> = seed.columns.iter().map(|c| q(c)).collect();
        let params: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            q(object),
            names.join(", "),
            params.join(", ")
        );
        if seed.keyed {
            let set: Vec<String> = names[1..]
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                names[0],
                set.join(", ")
            ));
        }
        for row in &seed.rows {
            let values: Vec<Value> = row
                .iter()
                .enumerate()
                .map(|(i, v)| match (i, v.as_str()) {
                    (_, NULL) => Value::Null,
                    (0, v) => Value::Integer(v.parse().unwrap()),
                    (_, v) => Value::Text(v.to_string()),
                })
                .collect();
            conn.execute(&sql, rusqlite::params_from_iter(values))
                .unwrap();
        }
    }

    async fn create_refusing(&self, object: &str) {
        self.connect()
            .execute_batch(&format!(
                "CREATE TABLE {} (id INTEGER PRIMARY KEY, \
                 email TEXT CONSTRAINT email_unique UNIQUE CONSTRAINT email_has_at CHECK (instr(email, '@') > 0), \
                 name TEXT NOT NULL CONSTRAINT name_short CHECK (length(name) <= 5), n INTEGER)",
                q(object)
            ))
            .unwrap();
    }

    async fn read(&self, object: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let conn = self.connect();
        let cols: Vec<String> = columns.iter().map(|c| q(c)).collect();
        let mut stmt = conn
            .prepare(&format!("SELECT {} FROM {}", cols.join(", "), q(object)))
            .unwrap();
        stmt.query_map([], |r| {
            (0..columns.len())
                .map(|i| {
                    Ok(match r.get::<_, Value>(i)? {
                        Value::Null => NULL.to_string(),
                        Value::Integer(v) => v.to_string(),
                        Value::Real(v) => v.to_string(),
                        Value::Text(v) => v,
                        Value::Blob(b) => format!("{b:?}"),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    async fn schema(&self, object: &str) -> Option<ObjectSchema> {
        let conn = self.connect();
        let mut stmt = conn
            .prepare("SELECT name, lower(type), pk FROM pragma_table_info(?1) ORDER BY pk")
            .unwrap();
        let rows: Vec<(String, String, i64)> = stmt
            .query_map([object], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        Some(ObjectSchema {
            primary_key: rows
                .iter()
                .filter(|(_, _, pk)| *pk > 0)
                .map(|(n, _, _)| n.clone())
                .collect(),
            columns: rows
                .into_iter()
                .map(|(n, t, _)| (n, t))
                .collect::<BTreeMap<_, _>>(),
        })
    }

    async fn touched(&self, _object: &str) -> Option<String> {
        // The whole database file: a run that writes nothing leaves every byte as it was.
        let bytes = std::fs::read(&self.db).unwrap();
        Some(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)))
    }

    async fn cleanup(&self) {}
}
