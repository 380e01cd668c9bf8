//! MySQL / MariaDB destination: each object is a table of the URL's database, keyed by the
//! sync's key.
//!
//! A missing table is created (InnoDB, utf8mb4, types mapped from the Arrow schema, the key as
//! primary key but for append-only logs). An existing table must hold each field in a column of
//! a compatible type; fields it lacks are added; a unique index is created on the key when there
//! is none. Sessions run in strict SQL mode and UTC, so a value the column cannot hold is
//! refused rather than truncated.
//!
//! Rows go in multi-row statements with bound values (at most 1000 rows or 60,000 values per
//! statement), one transaction per batch: upserts as `INSERT … ON DUPLICATE KEY UPDATE`,
//! deletes as `DELETE … WHERE key IN (…)`. Refused rows are isolated by bisecting the batch.
//!
//! `ON DUPLICATE KEY UPDATE` fires on a conflict with *any* unique index, so a table with a
//! second unique index (say on e-mail) would see a new record that collides there update the
//! other record; [`MysqlDestination::open`] refuses such tables for upserts and says why.

mod schema;
mod writer;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use serde::Deserialize;
use std::sync::Arc;

use super::{Destination, DestinationError, ObjectWriter, WriteTarget};
use crate::databases::mysql::MyUrl;
use crate::databases::{self, DatabaseError};

/// `type = "mysql"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlDestinationConfig {
    /// The environment variable holding the connection URL (its database is written).
    pub url_env: String,
    /// The longest wait for a lock another session holds on the table or its rows (default
    /// `"1m"`).
    pub lock_timeout: Option<String>,
}

impl MysqlDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = databases::validate_url_env(&self.url_env);
        p.extend(databases::validate_wait(
            "lock_timeout",
            self.lock_timeout.as_deref(),
        ));
        p
    }
}

pub(super) fn validate_object(object: &str) -> Vec<String> {
    let mut p = super::table::name_problems(
        object,
        Some((64, true, "MySQL table names are at most 64 characters")),
    );
    if object.ends_with(' ') {
        p.push("MySQL table names may not end with a space".to_string());
    }
    if object.contains('.') {
        p.push(format!(
            "a table name with a '.' is taken whole (a table \"{object}\" in the URL's \
             database); to write another database, point the destination's URL at it"
        ));
    }
    p
}

#[derive(Debug, Clone)]
pub struct MysqlDestination {
    name: String,
    config: MysqlDestinationConfig,
}

#[derive(Debug)]
pub(super) struct Column {
    pub name: String,
    pub data_type: String,
    pub column_type: String,
    pub scale: Option<u64>,
    /// NOT NULL without a default: an insert must give it a value.
    pub required: bool,
}

impl MysqlDestination {
    pub fn new(name: &str, config: &MysqlDestinationConfig) -> Self {
        MysqlDestination {
            name: name.to_string(),
            config: config.clone(),
        }
    }

    fn url(&self) -> Result<MyUrl, DestinationError> {
        MyUrl::from_env(&self.config.url_env).map_err(|e| self.db(e))
    }

    fn db(&self, source: DatabaseError) -> DestinationError {
        DestinationError::database(&self.name, source)
    }

    /// A connection whose statements wait at most `lock_timeout` for a table's metadata lock
    /// (`lock_wait_timeout`, a year by default in MySQL) or a row lock
    /// (`innodb_lock_wait_timeout`).
    async fn connect(&self, url: &MyUrl) -> Result<mysql_async::Conn, DestinationError> {
        let (mut conn, _) = url.connect().await.map_err(|e| self.db(e))?;
        let secs = databases::wait_setting(
            self.config.lock_timeout.as_deref(),
            databases::DEFAULT_LOCK_TIMEOUT,
        )
        .as_secs()
        .max(1);
        conn.query_drop(format!(
            "SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"
        ))
        .await
        .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(conn)
    }
}
#[async_trait]
impl Destination for MysqlDestination {
    fn lookup_source(&self, objects: &[String]) -> Option<Arc<dyn crate::sources::Source>> {
        Some(Arc::new(crate::sources::DatabaseSource::mysql(
            crate::sources::MysqlSourceConfig {
                url_env: self.config.url_env.clone(),
                tables: crate::sources::TableSelection::List(objects.to_vec()),
            },
        )))
    }

    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        let url = self.url()?;
        let mut conn = self.connect(&url).await?;
        if let Some(columns) = self.columns(&url, &mut conn, target).await? {
            self.compare(target, &columns)?;
        }
        let _ = conn.disconnect().await;
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        let server = self
            .url()
            .map(|u| u.server())
            .unwrap_or_else(|_| format!("${}", self.config.url_env));
        format!("mysql:{server}:{object}")
    }

    fn keys(&self, target: &WriteTarget) -> Option<super::KeyStream> {
        let this = self.clone();
        let table = crate::databases::mysql::quote(&target.object);
        let parts = target.key.len();
        let select =
            target.key_list(|k| format!("CAST({} AS CHAR)", crate::databases::mysql::quote(k)));
        let complete = target
            .key
            .iter()
            .map(|k| format!("{} IS NOT NULL", crate::databases::mysql::quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        Some(super::key_stream(move |tx| async move {
            let url = this.url()?;
            let mut conn = this.connect(&url).await?;
            let sql = format!("SELECT {select} FROM {table} WHERE {complete}");
            let mut result = match conn.query_iter(sql).await {
                Ok(r) => r,
                // No table yet (ER_NO_SUCH_TABLE): no records.
                Err(mysql_async::Error::Server(e)) if e.code == 1146 => return Ok(()),
                Err(e) => return Err(this.db(url.query_error(&e))),
            };
            let mut keys = super::KeyChunkBuilder::new(parts);
            loop {
                let row: Option<mysql_async::Row> = result
                    .next()
                    .await
                    .map_err(|e| this.db(url.query_error(&e)))?;
                let Some(row) = row else { break };
                let values: Option<Vec<String>> = (0..parts)
                    .map(|i| row.get_opt::<String, _>(i).and_then(Result::ok))
                    .collect();
                if let Some(values) = values {
                    keys.push(values);
                }
                if keys.is_full() && tx.send(Ok(keys.take())).await.is_err() {
                    return Ok(());
                }
            }
            if keys.len() > 0 {
                let _ = tx.send(Ok(keys.take())).await;
            }
            Ok(())
        }))
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let url = self.url()?;
        let mut conn = self.connect(&url).await?;
        self.prepare(&url, &mut conn, target).await?;
        let max_packet: Option<u64> = conn
            .query_first("SELECT @@max_allowed_packet")
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        let max_packet = max_packet.unwrap_or(4 << 20) as usize;
        Ok(Box::new(writer::MysqlWriter {
            max_packet,
            destination: self.name.clone(),
            target: target.clone(),
            url,
            conn: Some(conn),
        }))
    }
}
