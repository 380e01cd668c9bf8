//! dbt projects: the relations dbt built, read from the warehouse under their dbt names.
//!
//! ```toml
//! [sources.dbt]
//! type = "dbt"
//! manifest = "../analytics/target/manifest.json"   # written by `dbt run`, `dbt build`, `dbt compile`
//! url_env = "WAREHOUSE_URL"                        # the warehouse dbt builds into
//! ```
//!
//! Every model, seed and snapshot of the manifest becomes a table of the source, named as dbt
//! names it, in lower case (`dbt.customers` in models and syncs), reading the relation dbt built: the node's
//! database, schema and alias. A versioned model is `<name>_v<version>`, and its latest version
//! is also `<name>`. Ephemeral models have no relation (dbt inlines them) and are left out. A
//! node whose relation is not in the warehouse (not built yet, or dropped) is left out with a
//! warning, which `backflow check` shows; a sync reading it fails saying so.
//!
//! The manifest's `metadata.adapter_type` says which warehouse it is; backflow reads dbt
//! projects on PostgreSQL (through its PostgreSQL reader, with the same filter pushdown and
//! exact values).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::{Source, SourceError};
use crate::databases::postgres::PgUrl;
use crate::databases::{self, DatabaseError};

/// `type = "dbt"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbtSourceConfig {
    /// dbt's `target/manifest.json`, relative to the project.
    pub manifest: String,
    /// The environment variable holding the warehouse's connection URL.
    pub url_env: String,
    /// The longest wait for the server's next data during a read (`"5m"` by default).
    pub read_timeout: Option<String>,
}

impl DbtSourceConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut p = databases::validate_url_env(&self.url_env);
        if self.manifest.trim().is_empty() {
            p.push("manifest is empty (the path of dbt's target/manifest.json)".into());
        }
        p.extend(databases::validate_wait(
            "read_timeout",
            self.read_timeout.as_deref(),
        ));
        p
    }
}

/// The parts of dbt's manifest backflow reads (every other key is ignored, so manifests of
/// newer dbt versions keep working as long as these keep their meaning).
#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    nodes: BTreeMap<String, Node>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    adapter_type: Option<String>,
    dbt_version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Node {
    resource_type: String,
    name: String,
    database: Option<String>,
    schema: Option<String>,
    alias: Option<String>,
    #[serde(default)]
    config: NodeConfig,
    /// Model versions (dbt 1.5+): a number or a string.
    version: Option<serde_json::Value>,
    latest_version: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeConfig {
    materialized: Option<String>,
}

/// A relation dbt built, and the table name it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// The table's name in the source (`customers`, `customers_v2`).
    pub table: String,
    /// `model`, `seed` or `snapshot`.
    pub kind: String,
    /// The dbt node's own name, for messages and the command that builds it.
    pub node: String,
    pub database: Option<String>,
    pub schema: String,
    pub identifier: String,
}

impl Relation {
    /// `"database"."schema"."identifier"`, as dbt shows it.
    fn shown(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(d) = &self.database {
            parts.push(d);
        }
        parts.push(&self.schema);
        parts.push(&self.identifier);
        parts
            .iter()
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The dbt command that builds it.
    fn build_command(&self) -> String {
        match self.kind.as_str() {
            "seed" => format!("dbt seed --select {}", self.node),
            "snapshot" => format!("dbt snapshot --select {}", self.node),
            _ => format!("dbt run --select {}", self.node),
        }
    }
}

/// What a manifest holds for backflow: its warehouse and its relations.
#[derive(Debug)]
pub struct Relations {
    pub adapter: Option<String>,
    pub dbt_version: Option<String>,
    pub relations: Vec<Relation>,
}

fn version_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The relations of a manifest's text; `shown` names the file in messages.
pub fn parse(text: &str, shown: &str) -> Result<Relations, String> {
    let manifest: Manifest = serde_json::from_str(text).map_err(|e| {
        format!("{shown} is not a dbt manifest that backflow can read ({e}); run `dbt compile` to write it again")
    })?;
    let mut relations = Vec::new();
    for (id, node) in manifest.nodes {
        if !matches!(node.resource_type.as_str(), "model" | "seed" | "snapshot") {
            continue;
        }
        if node.config.materialized.as_deref() == Some("ephemeral") {
            continue;
        }
        let Some(schema) = node.schema.filter(|s| !s.is_empty()) else {
            return Err(format!("{shown}: node {id} has no schema"));
        };
        let identifier = node
            .alias
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| node.name.clone());
        // SQL folds unquoted names to lower case: `from = "dbt.Customers"` finds `customers`.
        let base = Relation {
            table: node.name.to_lowercase(),
            kind: node.resource_type.clone(),
            node: node.name.clone(),
            database: node.database.filter(|d| !d.is_empty()),
            schema,
            identifier,
        };
        match &node.version {
            Some(v) => {
                let version = version_text(v);
                relations.push(Relation {
                    table: format!("{}_v{version}", node.name).to_lowercase(),
                    node: format!("{}.v{version}", node.name),
                    ..base.clone()
                });
                if node.latest_version.as_ref().map(version_text) == Some(version.clone()) {
                    relations.push(Relation {
                        node: format!("{}.v{version}", node.name),
                        ..base
                    });
                }
            }
            None => relations.push(base),
        }
    }
    // Two nodes of one name (models of the same name in two packages): neither is taken under
    // that name, rather than one at random.
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for r in &relations {
        *by_name.entry(r.table.clone()).or_default() += 1;
    }
    let clashes: Vec<String> = by_name
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| t.clone())
        .collect();
    if !clashes.is_empty() {
        return Err(format!(
            "{shown}: more than one dbt node is named {} (models of the same name in two \
             packages, or names differing only in case); backflow cannot tell which one a sync \
             means",
            clashes.join(", ")
        ));
    }
    relations.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(Relations {
        adapter: manifest.metadata.adapter_type,
        dbt_version: manifest.metadata.dbt_version,
        relations,
    })
}

/// A dbt source.
#[derive(Debug, Clone)]
pub struct DbtSource {
    config: DbtSourceConfig,
    manifest: PathBuf,
}

impl DbtSource {
    pub fn new(config: DbtSourceConfig, project_dir: &Path) -> Self {
        let manifest = super::project_path(&config.manifest, project_dir);
        DbtSource { config, manifest }
    }

    fn read_timeout(&self) -> std::time::Duration {
        databases::wait_setting(
            self.config.read_timeout.as_deref(),
            super::postgres::DEFAULT_READ_TIMEOUT,
        )
    }
}

#[async_trait]
impl Source for DbtSource {
    async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<super::Registration, SourceError> {
        let other = |reason: String| SourceError::Other {
            name: name.to_string(),
            reason,
        };
        let shown = self.manifest.display().to_string();
        let text = match std::fs::read_to_string(&self.manifest) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(other(format!(
                    "dbt manifest {shown} does not exist; run `dbt compile` (or `dbt run`) in the \
                     dbt project to write it, or fix `manifest`"
                )));
            }
            Err(e) => return Err(other(format!("cannot read dbt manifest {shown}: {e}"))),
        };
        let manifest = parse(&text, &shown).map_err(other)?;
        match manifest.adapter.as_deref() {
            Some("postgres") => {}
            Some(a) => {
                return Err(other(format!(
                    "{shown} is a dbt project on {a}; backflow reads dbt projects on postgres \
                     (adapter_type \"postgres\")"
                )));
            }
            None => {
                return Err(other(format!(
                    "{shown} does not say which warehouse it is for (no metadata.adapter_type); \
                     write it again with `dbt compile`"
                )));
            }
        }
        let db_err = |source: DatabaseError| SourceError::Database {
            name: name.to_string(),
            source,
        };
        let url = PgUrl::from_env(&self.config.url_env).map_err(db_err)?;
        let client = url.connect().await.map_err(db_err)?;
        let connected = url
            .database()
            .or(url.user())
            .unwrap_or("postgres")
            .to_string();
        let schema = Arc::new(MemorySchemaProvider::new());
        let mut warnings = Vec::new();
        for r in &manifest.relations {
            if let Some(db) = &r.database
                && *db != connected
            {
                warnings.push(format!(
                    "dbt {} {} ({}) is in database \"{db}\", but {} connects to \"{connected}\"; \
                     it is left out",
                    r.kind,
                    r.node,
                    r.shown(),
                    self.config.url_env
                ));
                continue;
            }
            match super::postgres::PostgresTable::load(
                &client,
                &url,
                name,
                &r.schema,
                &r.identifier,
                self.read_timeout(),
            )
            .await
            {
                Ok(table) => {
                    schema
                        .register_table(r.table.clone(), Arc::new(table))
                        .map_err(|e| SourceError::Table {
                            name: name.to_string(),
                            table: r.table.clone(),
                            reason: e.to_string(),
                        })?;
                }
                Err(super::postgres::ReadError::NoTable { .. }) => warnings.push(format!(
                    "dbt {} {} is in the manifest but {} is not in the warehouse ({}); run `{}` \
                     to build it. Until then {name}.{} cannot be read",
                    r.kind,
                    r.node,
                    r.shown(),
                    url.server(),
                    r.build_command(),
                    r.table
                )),
                Err(e) => return Err(e.into()),
            }
        }
        super::register_schema(ctx, name, schema)?;
        tracing::info!(
            source = name,
            manifest = shown.as_str(),
            dbt_version = manifest.dbt_version.as_deref().unwrap_or("unknown"),
            relations = manifest.relations.len(),
            "dbt manifest read"
        );
        Ok(super::Registration {
            warnings,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(nodes: serde_json::Value) -> String {
        serde_json::json!({
            "metadata": {"adapter_type": "postgres", "dbt_version": "1.10.0"},
            "nodes": nodes,
            "sources": {},
        })
        .to_string()
    }

    #[test]
    fn models_seeds_and_snapshots_become_tables_under_their_dbt_names() {
        let text = manifest(serde_json::json!({
            "model.shop.customers": {"resource_type": "model", "name": "customers", "package_name": "shop",
                "database": "test", "schema": "analytics", "alias": "dim_customers",
                "config": {"materialized": "table"}},
            "model.shop.stg": {"resource_type": "model", "name": "stg", "package_name": "shop",
                "database": "test", "schema": "analytics", "alias": "stg",
                "config": {"materialized": "ephemeral"}},
            "seed.shop.raw_people": {"resource_type": "seed", "name": "raw_people", "package_name": "shop",
                "database": "test", "schema": "raw", "alias": null, "config": {}},
            "snapshot.shop.people_history": {"resource_type": "snapshot", "name": "people_history",
                "package_name": "shop", "database": "test", "schema": "snapshots", "alias": "people_history", "config": {}},
            "test.shop.not_null": {"resource_type": "test", "name": "not_null", "package_name": "shop",
                "database": "test", "schema": "analytics", "config": {}},
            "model.shop.orders.v2": {"resource_type": "model", "name": "orders", "package_name": "shop",
                "database": "test", "schema": "analytics", "alias": "orders_v2", "version": 2, "latest_version": 2,
                "config": {"materialized": "view"}},
            "model.shop.orders.v1": {"resource_type": "model", "name": "orders", "package_name": "shop",
                "database": "test", "schema": "analytics", "alias": "orders_v1", "version": 1, "latest_version": 2,
                "config": {"materialized": "view"}},
        }));
        let r = parse(&text, "manifest.json").unwrap();
        assert_eq!(r.adapter.as_deref(), Some("postgres"));
        let tables: Vec<(&str, &str, &str)> = r
            .relations
            .iter()
            .map(|r| (r.table.as_str(), r.schema.as_str(), r.identifier.as_str()))
            .collect();
        assert_eq!(
            tables,
            vec![
                ("customers", "analytics", "dim_customers"),
                ("orders", "analytics", "orders_v2"),
                ("orders_v1", "analytics", "orders_v1"),
                ("orders_v2", "analytics", "orders_v2"),
                ("people_history", "snapshots", "people_history"),
                ("raw_people", "raw", "raw_people"),
            ]
        );
        let seed = r.relations.iter().find(|r| r.kind == "seed").unwrap();
        assert_eq!(seed.build_command(), "dbt seed --select raw_people");
        assert_eq!(seed.shown(), r#""test"."raw"."raw_people""#);
    }

    #[test]
    fn unreadable_and_ambiguous_manifests_are_refused_with_the_file_named() {
        let e = parse("{\"nodes\": 3}", "t/manifest.json").unwrap_err();
        assert!(
            e.contains("t/manifest.json") && e.contains("dbt compile"),
            "{e}"
        );
        let twice = manifest(serde_json::json!({
            "model.a.x": {"resource_type": "model", "name": "x", "package_name": "a", "schema": "s", "config": {}},
            "model.b.x": {"resource_type": "model", "name": "x", "package_name": "b", "schema": "s", "config": {}},
        }));
        let e = parse(&twice, "m.json").unwrap_err();
        assert!(e.contains("more than one dbt node is named x"), "{e}");
    }
}
