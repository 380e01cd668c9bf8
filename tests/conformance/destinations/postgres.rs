//! PostgreSQL: a schema of its own per test (`bfc_<check>`) on the test server (see
//! `tests/common/db.rs`; skipped when unreachable, except under `CI=true`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use crate::common::db;
use crate::conformance::{
    Capabilities, DestinationFixture, Fault, KEY, NULL, ObjectSchema, Seed, Setup,
};

pub struct PostgresFixture {
    client: tokio_postgres::Client,
    schema: String,
}

pub async fn open(setup: Setup) -> Option<Box<dyn DestinationFixture>> {
    let client = db::postgres().await?;
    let schema = format!("bfc_{}", setup.check);
    db::pg_schema(&client, &schema).await;
    // Timestamps with a time zone read back in UTC.
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    Some(Box::new(PostgresFixture { client, schema }))
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl PostgresFixture {
    fn table(&self, object: &str) -> String {
        format!("{}.{}", q(&self.schema), q(object))
    }

    async fn text_rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or(NULL).to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }
}

#[async_trait]
impl DestinationFixture for PostgresFixture {
    fn toml(&self) -> String {
        format!(
            "[destinations.dest]\ntype = \"postgres\"\nurl_env = \"{}\"\nschema = \"{}\"\n",
            db::PG_ENV,
            self.schema
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            checks_records: true,
            editable: true,
            lists_records: true,
            refuses: vec![
                (
                    Fault::EmailWithoutAt,
                    "violates check constraint \"email_has_at\"",
                ),
                (Fault::NullName, "violates not-null constraint"),
                (Fault::NameTooLong, "value too long"),
                (Fault::DuplicateEmail, "duplicate key"),
                (Fault::OutOfRange, "out of range"),
            ],
            types: Some(vec![
                (KEY, "bigint"),
                ("i16", "smallint"),
                ("i32", "integer"),
                ("i64", "bigint"),
                ("f64", "double precision"),
                ("dec", "numeric(38,10)"),
                ("flag", "boolean"),
                ("day", "date"),
                ("at", "timestamp without time zone"),
                ("at_utc", "timestamp with time zone"),
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

    fn sql_name(&self, object: &str) -> String {
        self.table(object)
    }

    async fn seed(&self, object: &str, seed: Seed<'_>) {
        let cols: Vec<String> = seed
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (i, seed.keyed) {
                (0, true) => format!("{} bigint PRIMARY KEY", q(c)),
                (0, false) => format!("{} bigint", q(c)),
                _ => match seed.defaults.iter().find(|(d, _)| d == c) {
                    Some((_, v)) => format!("{} text DEFAULT '{}'", q(c), v.replace('\'', "''")),
                    None => format!("{} text", q(c)),
                },
            })
            .collect();
        self.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                self.table(object),
                cols.join(", ")
            ))
            .await
            .unwrap();
        let names: Vec<String> = seed.columns.iter().map(|c| q(c)).collect();
        let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table(object),
            names.join(", "),
            params.join(", ")
        );
        if seed.keyed {
            let set: Vec<String> = names[1..]
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                names[0],
                set.join(", ")
            ));
        }
        for row in &seed.rows {
            let id: Option<i64> = (row[0] != NULL).then(|| row[0].parse().unwrap());
            let texts: Vec<Option<&str>> = row[1..]
                .iter()
                .map(|v| (v != NULL).then_some(v.as_str()))
                .collect();
            let mut values: Vec<&(dyn ToSql + Sync)> = vec![&id];
            values.extend(texts.iter().map(|t| t as &(dyn ToSql + Sync)));
            self.client.execute(&sql, &values).await.unwrap();
        }
    }

    async fn create_refusing(&self, object: &str) {
        self.client
            .batch_execute(&format!(
                "CREATE TABLE {} (id bigint PRIMARY KEY, \
                 email text CONSTRAINT email_unique UNIQUE CONSTRAINT email_has_at CHECK (position('@' in email) > 0), \
                 name varchar(5) NOT NULL, n integer)",
                self.table(object)
            ))
            .await
            .unwrap();
    }

    async fn read(&self, object: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let cols: Vec<String> = columns.iter().map(|c| format!("{}::text", q(c))).collect();
        self.text_rows(&format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            self.table(object)
        ))
        .await
    }

    async fn schema(&self, object: &str) -> Option<ObjectSchema> {
        let columns = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                &[&self.table(object)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<BTreeMap<_, _>>();
        let primary_key = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
                &[&self.table(object)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        Some(ObjectSchema {
            columns,
            primary_key,
        })
    }

    async fn touched(&self, object: &str) -> Option<String> {
        // Every row version: an UPDATE, even to the same values, gives a row a new one.
        let mut rows = self
            .text_rows(&format!(
                "SELECT ctid::text, xmin::text FROM {}",
                self.table(object)
            ))
            .await;
        rows.sort();
        Some(format!("{rows:?}"))
    }

    async fn cleanup(&self) {
        self.client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                q(&self.schema)
            ))
            .await
            .unwrap();
    }
}
