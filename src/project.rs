//! A project: `backflow.toml` plus `models/*.sql`, loaded and validated without touching any data
//! ([`Project::load`]). The DataFusion session where every source, model and segment is a table
//! is made from it in `session` ([`Project::session`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::error::DataFusionError;

use crate::config::{ConfigError, ConfigText, ProjectConfig};
use crate::destinations::{self, Destination};
use crate::models::{self, Model, ModelError, Node};
use crate::sources::{self, SourceError};
use crate::state::{StateError, StateStore};
use crate::storage::Location;

/// The state folder when `[state] path` is not set.
pub const DEFAULT_STATE_DIR: &str = ".backflow";

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no project at {}: {CONFIG_FILE} not found (create one with `backflow init {}`)", dir.display(), dir.display(), CONFIG_FILE = crate::config::CONFIG_FILE)]
    NotFound { dir: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Models(Vec<ModelError>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{}: {source}", path.display())]
    ModelPlan {
        path: PathBuf,
        source: DataFusionError,
    },
    #[error(
        "segment \"{segment}\": filter `{filter}` is not a valid SQL condition over \"{model}\": {source}"
    )]
    SegmentFilter {
        segment: String,
        model: String,
        filter: String,
        source: DataFusionError,
    },
    #[error(
        "unknown sync or entity \"{name}\"{suggestion}; the project's syncs and entities are: {known}"
    )]
    UnknownSync {
        name: String,
        suggestion: String,
        known: String,
    },
    #[error(
        "\"{name}\" is an entity, not a sync: `backflow run {name}` runs it; its write-backs are syncs ({writebacks})"
    )]
    NotASync { name: String, writebacks: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("[engine] settings cannot be applied: {source}")]
    Engine { source: DataFusionError },
    /// An entity's golden records could not be made a table (see `hub`).
    #[error(transparent)]
    Entity(Box<dyn std::error::Error + Send + Sync>),
}

/// A loaded, validated project.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub config: ProjectConfig,
    pub config_text: ConfigText,
    pub models: Vec<Model>,
    /// Models and segments, each after what it reads.
    pub order: Vec<String>,
    pub state: StateStore,
    /// Rows each source left out when the session was made (see `sources::quarantine`).
    pub quarantine: std::sync::Mutex<indexmap::IndexMap<String, sources::quarantine::Quarantine>>,
    /// How long opening each source took when the session was made, in milliseconds (for a
    /// CSV source: copying it from its object store, inferring its column types and scanning
    /// its rows).
    pub source_ms: std::sync::Mutex<indexmap::IndexMap<String, u64>>,
    /// What each source warned about when the session was made (a dbt model not built yet).
    pub source_warnings: std::sync::Mutex<indexmap::IndexMap<String, Vec<String>>>,
    /// Clean copies sessions read (removed with the project).
    pub(crate) scratch: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl Project {
    /// Read `backflow.toml` and `models/`, and check every reference. No data is read.
    pub fn load(dir: &Path) -> Result<Project, ProjectError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !dir.join(crate::config::CONFIG_FILE).is_file() {
            return Err(ProjectError::NotFound { dir });
        }
        let (mut config, config_text) = ProjectConfig::load(&dir)?;
        let models = models::discover(&dir).map_err(|e| ProjectError::Models(vec![e]))?;
        let model_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let problems = crate::config::validate(&config, &model_names, &config_text);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: config_text.path.clone(),
                problems,
            }
            .into());
        }
        let mut nodes: Vec<Node> = models
            .iter()
            .map(|m| Node {
                name: &m.name,
                path: Some(&m.path),
                dependencies: m.dependencies.iter().map(String::as_str).collect(),
            })
            .collect();
        for (name, seg) in &config.segments {
            nodes.push(Node {
                name,
                path: None,
                dependencies: vec![seg.model.as_str()],
            });
        }
        // Entities are tables of golden records: models may read them like sources.
        let sources: BTreeSet<&str> = config
            .sources
            .keys()
            .chain(config.entities.keys())
            .map(String::as_str)
            .collect();
        let order = models::order(&nodes, &sources, &|name| {
            crate::config::source_table_known(&config, name)
        })
        .map_err(ProjectError::Models)?
        .into_iter()
        .map(str::to_string)
        .collect();
        // Each entity source with [writeback] is written back by a sync of its own.
        for (name, sync) in crate::config::entity::writeback_syncs(&config) {
            config.syncs.insert(name, sync);
        }
        let state_path = config.state.path.as_deref().unwrap_or(DEFAULT_STATE_DIR);
        let mut state =
            StateStore::open(Location::resolve(state_path, &dir).map_err(StateError::from)?)?;
        if let Some(ttl) = config
            .state
            .lease
            .as_deref()
            .and_then(crate::duration::parse)
        {
            state = state.with_lease_ttl(ttl);
        }
        Ok(Project {
            dir,
            config,
            config_text,
            models,
            order,
            state,
            quarantine: Default::default(),
            source_ms: Default::default(),
            source_warnings: Default::default(),
            scratch: Default::default(),
        })
    }

    /// The destination a sync writes to.
    pub fn destination(&self, name: &str) -> Option<Arc<dyn Destination>> {
        self.config
            .destinations
            .get(name)
            .map(|c| destinations::build(name, c, &self.dir))
    }

    /// What `run` acts on, in order: with nothing requested, each entity (followed by its
    /// write-backs), then the other syncs in file order; otherwise the names requested, an
    /// entity again followed by its write-backs.
    pub fn select_targets(&self, requested: &[String]) -> Result<Vec<RunTarget>, ProjectError> {
        let writebacks = |entity: &str| {
            self.config
                .syncs
                .iter()
                .filter(|(_, s)| s.hub.as_ref().is_some_and(|l| l.entity == entity))
                .map(|(n, _)| RunTarget::Sync(n.clone()))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        if requested.is_empty() {
            // Syncs that may feed an entity's sources first, those that read golden records
            // last.
            let (after, before): (Vec<_>, Vec<_>) = self
                .config
                .syncs
                .iter()
                .filter(|(_, s)| s.hub.is_none())
                .partition(|(_, s)| self.reads_entity(&s.from));
            out.extend(before.into_iter().map(|(n, _)| RunTarget::Sync(n.clone())));
            for entity in self.config.entities.keys() {
                out.push(RunTarget::Entity(entity.clone()));
                out.extend(writebacks(entity));
            }
            out.extend(after.into_iter().map(|(n, _)| RunTarget::Sync(n.clone())));
            return Ok(out);
        }
        for name in requested {
            if self.config.entities.contains_key(name) {
                out.push(RunTarget::Entity(name.clone()));
                out.extend(writebacks(name));
            } else {
                self.select_syncs(std::slice::from_ref(name))?;
                out.push(RunTarget::Sync(name.clone()));
            }
        }
        Ok(out)
    }

    /// Every relation `roots` read, themselves included: the models' tables, the segments'
    /// models, and the database source of each `source.table`, through any depth.
    pub fn reads<'a>(&self, roots: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = roots.into_iter().map(str::to_string).collect();
        while let Some(n) = todo.pop() {
            if seen.contains(&n) {
                continue;
            }
            if let Some(m) = self.models.iter().find(|m| m.name == n) {
                todo.extend(m.dependencies.iter().cloned());
            }
            if let Some(s) = self.config.segments.get(&n) {
                todo.push(s.model.clone());
            }
            if let Some((source, _)) = n.split_once('.')
                && self.config.sources.contains_key(source)
            {
                todo.push(source.to_string());
            }
            seen.insert(n);
        }
        seen
    }

    /// The rows the sources relation `name` reads (through models and segments) left out:
    /// how many, and the ones kept.
    pub fn quarantined(&self, name: &str) -> (u64, Vec<sources::quarantine::QuarantinedRow>) {
        let (mut count, mut rows) = (0, Vec::new());
        let Ok(q) = self.quarantine.lock() else {
            return (0, rows);
        };
        for n in self.reads([name]) {
            if let Some(found) = q.get(&n) {
                count += found.count;
                rows.extend(found.rows.iter().cloned());
            }
        }
        (count, rows)
    }

    /// How long opening the sources the relations `names` read took when the session was
    /// made (each source once), in milliseconds.
    pub fn source_time_ms<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u64 {
        let Ok(t) = self.source_ms.lock() else {
            return 0;
        };
        self.reads(names).iter().filter_map(|n| t.get(n)).sum()
    }

    /// Whether relation `name` is an entity or reads one (through models and segments).
    pub fn reads_entity(&self, name: &str) -> bool {
        self.reads([name])
            .iter()
            .any(|n| self.config.entities.contains_key(n))
    }

    /// The syncs to act on: all of them when `requested` is empty; unknown names are an error.
    pub fn select_syncs(&self, requested: &[String]) -> Result<Vec<String>, ProjectError> {
        if requested.is_empty() {
            return Ok(self.config.syncs.keys().cloned().collect());
        }
        let known: Vec<&str> = self
            .config
            .syncs
            .keys()
            .chain(self.config.entities.keys())
            .map(String::as_str)
            .collect();
        for name in requested {
            if self.config.entities.contains_key(name) && !self.config.syncs.contains_key(name) {
                let writebacks: Vec<&str> = self
                    .config
                    .syncs
                    .iter()
                    .filter(|(_, s)| s.hub.as_ref().is_some_and(|l| &l.entity == name))
                    .map(|(n, _)| n.as_str())
                    .collect();
                return Err(ProjectError::NotASync {
                    name: name.clone(),
                    writebacks: if writebacks.is_empty() {
                        "it has none".into()
                    } else {
                        writebacks.join(", ")
                    },
                });
            }
            if !self.config.syncs.contains_key(name) {
                return Err(ProjectError::UnknownSync {
                    name: name.clone(),
                    suggestion: crate::names::suggest(name, known.iter().copied()),
                    known: if known.is_empty() {
                        "(none)".into()
                    } else {
                        known.join(", ")
                    },
                });
            }
        }
        Ok(requested.to_vec())
    }
}

/// One thing `run` runs: a hub entity's cycles, or a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunTarget {
    Entity(String),
    Sync(String),
}
