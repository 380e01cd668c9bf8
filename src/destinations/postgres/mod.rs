//! PostgreSQL destination: each object is a table in one schema, keyed by the sync's key.
//!
//! A missing table is created (types mapped from the Arrow schema, the key as primary key but
//! for append-only logs). An existing table must hold each field in a column of a compatible
//! type (no silent casts: a float never lands in an integer column, a timestamp with a time
//! zone never in one without); fields it lacks are added as columns, and a unique index is
//! created on the key when there is none, because `ON CONFLICT` needs one.
//!
//! Each batch takes the fast path: its rows are COPY'd (in PostgreSQL's binary format when every
//! field has an exact binary form for its column's type, as text otherwise: see `copy`) into a
//! temporary staging table with the target's column types, then one set-based statement applies them
//! (`INSERT … ON CONFLICT (key) DO UPDATE`, `UPDATE … FROM`, `DELETE … USING`), all in one
//! transaction. Into a table that was empty when the run began (an initial load), creates,
//! appends and upserts are COPY'd straight into the table instead, about twice as fast; the
//! first row that collides with a record already there switches the run back to staging. Such
//! a load sends each batch of 4,096 rows or more as two COPY streams, on two connections, each
//! half in its own transaction, so that two server processes insert at once (a 1M-row load
//! took about 0.81 of the time of one stream; see the README). When PostgreSQL refuses a row
//! (a value, a constraint, a trigger), the batch is bisected so that the refused rows become
//! rejections with PostgreSQL's message and the rest still land.

mod copy;
mod schema;
mod writer;

use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;

use super::{Destination, DestinationError, ObjectWriter, WriteTarget};
use crate::databases::postgres::{PgUrl, qualified};
use crate::databases::{self, DatabaseError};

/// `type = "postgres"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDestinationConfig {
    /// The environment variable holding the connection URL.
    pub url_env: String,
    /// The schema of the tables written (default `public`).
    #[serde(default = "public")]
    pub schema: String,
    /// The longest wait for a lock another session holds on the table (default `"1m"`).
    pub lock_timeout: Option<String>,
    /// The longest one statement may run (default `"15m"`).
    pub statement_timeout: Option<String>,
}

fn public() -> String {
    "public".into()
}

impl PostgresDestinationConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = databases::validate_url_env(&self.url_env);
        if self.schema.trim().is_empty() || self.schema.contains('\0') {
            p.push("schema is not a valid name".into());
        }
        p.extend(databases::validate_wait(
            "lock_timeout",
            self.lock_timeout.as_deref(),
        ));
        p.extend(databases::validate_wait(
            "statement_timeout",
            self.statement_timeout.as_deref(),
        ));
        p
    }
}

pub(super) fn validate_object(object: &str) -> Vec<String> {
    let mut p = super::table::name_problems(
        object,
        Some((63, false, "PostgreSQL table names are at most 63 bytes")),
    );
    if let Some((schema, table)) = object.split_once('.') {
        p.push(format!(
            "a table name with a '.' is taken whole (a table \"{object}\" in the destination's \
             schema); for table \"{table}\" of schema \"{schema}\", set schema = \"{schema}\" on \
             the destination and object = \"{table}\""
        ));
    }
    p
}

#[derive(Debug, Clone)]
pub struct PostgresDestination {
    name: String,
    config: PostgresDestinationConfig,
}

/// The name of the staging table's row-number column (`__bf_` names are reserved).
const ROW: &str = "__bf_row";

impl PostgresDestination {
    pub fn new(name: &str, config: &PostgresDestinationConfig) -> Self {
        PostgresDestination {
            name: name.to_string(),
            config: config.clone(),
        }
    }

    fn url(&self) -> Result<PgUrl, DestinationError> {
        PgUrl::from_env(&self.config.url_env).map_err(|e| self.db(e))
    }

    fn db(&self, source: DatabaseError) -> DestinationError {
        DestinationError::database(&self.name, source)
    }

    /// A connection whose statements wait at most `lock_timeout` for a lock and run at most
    /// `statement_timeout`, so that a table locked by another session or a stuck statement
    /// fails the run instead of hanging it.
    pub(super) async fn connect(
        &self,
        url: &PgUrl,
    ) -> Result<tokio_postgres::Client, DestinationError> {
        let client = url.connect().await.map_err(|e| self.db(e))?;
        let ms = |d: std::time::Duration| d.as_millis().min(i32::MAX as u128);
        let lock = databases::wait_setting(
            self.config.lock_timeout.as_deref(),
            databases::DEFAULT_LOCK_TIMEOUT,
        );
        let statement = databases::wait_setting(
            self.config.statement_timeout.as_deref(),
            databases::DEFAULT_STATEMENT_TIMEOUT,
        );
        client
            .batch_execute(&format!(
                "SET lock_timeout = {}; SET statement_timeout = {}",
                ms(lock),
                ms(statement)
            ))
            .await
            .map_err(|e| self.db(url.query_error(&e)))?;
        Ok(client)
    }
}
#[async_trait]
impl Destination for PostgresDestination {
    fn lookup_source(&self, objects: &[String]) -> Option<Arc<dyn crate::sources::Source>> {
        Some(Arc::new(crate::sources::DatabaseSource::postgres(
            crate::sources::PostgresSourceConfig {
                url_env: self.config.url_env.clone(),
                schema: self.config.schema.clone(),
                tables: crate::sources::TableSelection::List(objects.to_vec()),
                read_timeout: self.config.statement_timeout.clone(),
            },
        )))
    }

    async fn check(&self, target: &WriteTarget) -> Result<(), DestinationError> {
        let url = self.url()?;
        let client = self.connect(&url).await?;
        if let Some(columns) = self.columns(&url, &client, target).await? {
            self.compare(target, &columns)?;
        }
        Ok(())
    }

    fn fingerprint(&self, object: &str) -> String {
        let server = self
            .url()
            .map(|u| u.server())
            .unwrap_or_else(|_| format!("${}", self.config.url_env));
        format!("postgres:{server}:{}.{object}", self.config.schema)
    }

    fn keys(&self, target: &WriteTarget) -> Option<super::KeyStream> {
        use crate::databases::postgres::quote;
        let (this, table) = (self.clone(), qualified(&self.config.schema, &target.object));
        let parts = target.key.len();
        let select = target.key_list(|k| format!("{}::text", quote(k)));
        let complete = target
            .key
            .iter()
            .map(|k| format!("{} IS NOT NULL", quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        Some(super::key_stream(move |tx| async move {
            use futures::StreamExt;
            let url = this.url()?;
            let client = this.connect(&url).await?;
            let sql = format!("SELECT {select} FROM {table} WHERE {complete}");
            let rows = match client.query_raw(&sql, Vec::<String>::new()).await {
                Ok(rows) => rows,
                // No table yet: no records.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    return Ok(());
                }
                Err(e) => return Err(this.db(url.query_error(&e))),
            };
            let mut rows = std::pin::pin!(rows.chunks(super::KEY_CHUNK));
            while let Some(chunk) = rows.next().await {
                let mut keys = super::KeyChunkBuilder::new(parts);
                for row in chunk {
                    let row = row.map_err(|e| this.db(url.query_error(&e)))?;
                    let values = (0..parts)
                        .map(|i| row.try_get::<_, String>(i))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| this.db(url.query_error(&e)))?;
                    keys.push(values);
                }
                if tx.send(Ok(keys.take())).await.is_err() {
                    break;
                }
            }
            Ok(())
        }))
    }

    async fn open(&self, target: &WriteTarget) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let url = self.url()?;
        let client = self.connect(&url).await?;
        let empty = self.prepare(&url, &client, target).await?;
        // The second COPY stream of an initial load connects when the first batch comes,
        // after the diff has read what it needed (the destination's keys, for a sync without
        // state, on a connection of its own).
        let peer = if empty {
            writer::Peer::Unopened(self.clone())
        } else {
            writer::Peer::None
        };
        let types = self
            .columns(&url, &client, target)
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.typname))
            .collect();
        Ok(Box::new(writer::PostgresWriter {
            types,
            direct: empty,
            destination: self.name.clone(),
            table: qualified(&self.config.schema, &target.object),
            target: target.clone(),
            url,
            client,
            peer,
        }))
    }
}
