//! A project: `backflow.toml` plus `models/*.sql`, loaded and validated without touching any data
//! ([`Project::load`]), then turned into a DataFusion session where every source, model and
//! segment is a table ([`Project::session`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::{ConfigError, ConfigText, EngineConfig, ProjectConfig};
use crate::destinations::{self, Destination};
use crate::memory::EnginePool;
use crate::models::{self, Model, ModelError, Node};
use crate::sources::{self, SourceError};
use crate::state::{StateError, StateStore};
use crate::storage::Location;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;

/// Rows per Arrow batch unless `[engine] batch_size` says otherwise: 32768 (about 8% faster
/// than DataFusion's 8192 on a 10-million-row incremental run), or 8192 under a memory limit,
/// where every sort buffer holds whole batches.
fn default_batch_rows(engine: &EngineConfig) -> usize {
    if engine.memory_limit.is_some() {
        8192
    } else {
        32_768
    }
}

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
    #[error(transparent)]
    Hub(Box<crate::hub::HubError>),
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
    /// Clean copies sessions read (removed with the project).
    scratch: std::sync::Mutex<Vec<tempfile::TempDir>>,
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
        for (name, sync) in crate::hub::writeback::syncs(&config) {
            config.syncs.insert(name, sync);
        }
        let state_path = config.state.path.as_deref().unwrap_or(DEFAULT_STATE_DIR);
        let mut state =
            StateStore::open(Location::resolve(state_path, &dir).map_err(StateError::from)?)?;
        if let Some(ttl) = config
            .state
            .lease
            .as_deref()
            .and_then(crate::config::parse_duration)
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
            scratch: Default::default(),
        })
    }

    /// A DataFusion session in which every source, model and segment is a table.
    pub async fn session(&self) -> Result<SessionContext, ProjectError> {
        let ctx = session_context(&self.config.engine, &self.dir)?;
        self.state.register(&ctx)?;
        for (name, config) in &self.config.sources {
            let registration = sources::build(config, &self.dir)
                .register(&ctx, name)
                .await?;
            if let Ok(mut q) = self.quarantine.lock() {
                q.insert(name.clone(), registration.quarantine);
            }
            if let (Some(dir), Ok(mut s)) = (registration.scratch, self.scratch.lock()) {
                s.push(dir);
            }
        }
        crate::hub::register_all(self, &ctx)
            .await
            .map_err(|e| ProjectError::Hub(Box::new(e)))?;
        for name in &self.order {
            if let Some(model) = self.models.iter().find(|m| &m.name == name) {
                let plan_err = |source| ProjectError::ModelPlan {
                    path: model.path.clone(),
                    source,
                };
                let df = ctx.sql(&model.sql).await.map_err(plan_err)?;
                ctx.register_table(name.as_str(), df.into_view())
                    .map_err(plan_err)?;
            } else if let Some(segment) = self.config.segments.get(name) {
                let filter_err = |source| ProjectError::SegmentFilter {
                    segment: name.clone(),
                    model: segment.model.clone(),
                    filter: segment.filter.clone(),
                    source,
                };
                let df = ctx
                    .table(segment.model.as_str())
                    .await
                    .map_err(filter_err)?;
                let expr = df.parse_sql_expr(&segment.filter).map_err(filter_err)?;
                let df = df.filter(expr).map_err(filter_err)?;
                // Plan it now so a bad column or type shows up here, naming the segment.
                df.clone().into_optimized_plan().map_err(filter_err)?;
                ctx.register_table(name.as_str(), df.into_view())
                    .map_err(filter_err)?;
            }
        }
        Ok(ctx)
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

    /// The rows the sources relation `name` reads (through models and segments) left out:
    /// how many, and the ones kept.
    pub fn quarantined(&self, name: &str) -> (u64, Vec<sources::quarantine::QuarantinedRow>) {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        let (mut count, mut rows) = (0, Vec::new());
        let Ok(q) = self.quarantine.lock() else {
            return (0, rows);
        };
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(found) = q.get(&n) {
                count += found.count;
                rows.extend(found.rows.iter().cloned());
            }
            if let Some(m) = self.models.iter().find(|m| m.name == n) {
                todo.extend(m.dependencies.iter().cloned());
            }
            if let Some(s) = self.config.segments.get(&n) {
                todo.push(s.model.clone());
            }
        }
        (count, rows)
    }

    /// Whether relation `name` is an entity or reads one (through models and segments).
    pub fn reads_entity(&self, name: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if self.config.entities.contains_key(&n) {
                return true;
            }
            if let Some(m) = self.models.iter().find(|m| m.name == n) {
                todo.extend(m.dependencies.iter().cloned());
            }
            if let Some(s) = self.config.segments.get(&n) {
                todo.push(s.model.clone());
            }
        }
        false
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
                    suggestion: crate::config::suggest(name, known.iter().copied()),
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

/// The session every stage runs in: backflow's functions registered, the `[engine]` settings
/// applied.
pub fn session_context(
    engine: &EngineConfig,
    project_dir: &Path,
) -> Result<SessionContext, ProjectError> {
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_batch_size(
            engine
                .batch_size
                .unwrap_or(default_batch_rows(engine))
                .max(1),
        );
    if let Some(n) = engine.target_partitions {
        config = config.with_target_partitions(n.max(1));
    } else if engine.memory_limit.is_some() {
        // One partition unless asked otherwise: with one, plans have no repartitions, whose
        // buffers the pool cannot bound (see `memory`). A 50-million-row cursor run under a
        // 2 GiB limit completes in 87 s on one partition; on two it hung, or with repartition
        // buffers admitted, ran out of memory.
        config = config.with_target_partitions(1);
    }
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = engine.memory_limit {
        let limit = limit.as_u64() as usize;
        // A fair pool shares the limit among the operators that can spill (each sort of a
        // sort-merge join), rather than letting the first one take it all (see `memory`).
        runtime = runtime.with_memory_pool(EnginePool::new(limit));
        // DataFusion's hash join keeps its build side in memory; sort-merge joins spill.
        config = config.set_bool("datafusion.optimizer.prefer_hash_join", false);
        // Every sort reserves memory for merging its spill files; a plan has several sorts
        // per partition, so keep each reservation a small share of the limit.
        let partitions = config.target_partitions().max(1);
        let reservation = (limit / (16 * partitions)).clamp(64 << 10, 10 << 20);
        config = config.set_u64(
            "datafusion.execution.sort_spill_reservation_bytes",
            reservation as u64,
        );
    }
    if let Some(dir) = &engine.spill_dir {
        let dir = if dir.is_absolute() {
            dir.clone()
        } else {
            project_dir.join(dir)
        };
        runtime = runtime.with_temp_file_path(dir);
    }
    let runtime = runtime
        .build_arc()
        .map_err(|source| ProjectError::Engine { source })?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udf(crate::hash::row_hash_udf());
    crate::functions::register(&ctx);
    Ok(ctx)
}

#[cfg(test)]
mod engine_tests {
    use super::*;

    fn engine(toml: &str) -> EngineConfig {
        toml::from_str(toml).unwrap()
    }

    async fn plan_of(ctx: &SessionContext, sql: &str) -> String {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string()
    }

    const GROUPED: &str =
        "SELECT x % 10 AS g, count(*) FROM (SELECT * FROM unnest(range(100000)) t(x)) GROUP BY 1";

    #[tokio::test]
    async fn a_memory_limit_plans_on_one_partition_without_repartitions() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session_context(&engine(r#"memory_limit = "64MiB""#), dir.path()).unwrap();
        assert_eq!(ctx.state().config().target_partitions(), 1);
        assert!(
            ctx.runtime_env()
                .memory_pool
                .to_string()
                .contains("repartition buffers")
        );
        let plan = plan_of(&ctx, GROUPED).await;
        assert!(!plan.contains("RepartitionExec"), "{plan}");
    }

    #[tokio::test]
    async fn target_partitions_set_beside_a_memory_limit_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine("memory_limit = \"64MiB\"\ntarget_partitions = 3");
        let ctx = session_context(&engine, dir.path()).unwrap();
        assert_eq!(ctx.state().config().target_partitions(), 3);
        let plan = plan_of(&ctx, GROUPED).await;
        assert!(plan.contains("RepartitionExec"), "{plan}");
    }
}
