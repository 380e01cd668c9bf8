//! The DataFusion session a command runs in: backflow's functions, the `[engine]` settings, and
//! every source, entity, model and segment of the project as a table ([`Project::session`]).
//! It sits above the hub: entities are tables of golden records that models may read, and the
//! hub's write-backs are the syncs whose relation it registers itself (a [`sync::Upstream`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::EngineConfig;
use crate::memory::EnginePool;
use crate::project::{Project, ProjectError};
use crate::sources;
use crate::sync::{self, Upstreams};

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

impl Project {
    /// A DataFusion session in which every source, model and segment is a table.
    pub async fn session(&self) -> Result<SessionContext, ProjectError> {
        self.session_of(None).await
    }

    /// A session for running the syncs and entities `names`: only the sources, models and
    /// segments they read are opened (an entity: its sources' relations; a write-back: its
    /// entity's), so a source that cannot be read (a server down, a file missing) fails only
    /// what needs it. Every entity's golden records are registered (they come from the state).
    pub async fn session_for(&self, names: &[String]) -> Result<SessionContext, ProjectError> {
        let mut roots: Vec<&str> = Vec::new();
        let entity_sources = |entity: &str| {
            self.config
                .entities
                .get(entity)
                .into_iter()
                .flat_map(|e| e.sources.values().map(|s| s.from.as_str()))
        };
        for name in names {
            if let Some(sync) = self.config.syncs.get(name) {
                roots.push(&sync.from);
                // A write-back compares with what its source reports: the entity's sources.
                if let Some(link) = &sync.hub {
                    roots.extend(entity_sources(&link.entity));
                }
            }
            roots.extend(entity_sources(name));
        }
        let needed = self.reads(roots);
        self.session_of(Some(&needed)).await
    }

    /// A session with the relations in `only` (every one when None).
    async fn session_of(
        &self,
        only: Option<&BTreeSet<String>>,
    ) -> Result<SessionContext, ProjectError> {
        let wanted = |name: &str| only.is_none_or(|o| o.contains(name));
        sources::sweep_clean_copies(&self.dir);
        let ctx = session_context(&self.config.engine, &self.dir)?;
        self.state.register(&ctx)?;
        let mut feeds = sources::change_feed::ChangeFeeds::default();
        for (name, config) in &self.config.sources {
            if !wanted(name) {
                continue;
            }
            let started = std::time::Instant::now();
            let registration = sources::build(config, &self.dir)
                .register(&ctx, name)
                .await?;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::info!(source = name.as_str(), elapsed_ms, "source opened");
            if let Ok(mut t) = self.source_ms.lock() {
                t.insert(name.clone(), elapsed_ms);
            }
            if let Ok(mut q) = self.quarantine.lock() {
                q.insert(name.clone(), registration.quarantine);
            }
            for w in &registration.warnings {
                tracing::warn!(source = name.as_str(), "{w}");
            }
            if let Ok(mut w) = self.source_warnings.lock() {
                w.insert(name.clone(), registration.warnings);
            }
            if let (Some(dir), Ok(mut s)) = (registration.scratch, self.scratch.lock()) {
                s.push(dir);
            }
            if let Some(feed) = registration.change_feed {
                feeds.insert(name, feed);
            }
        }
        feeds.install(&ctx);
        crate::hub::register_all(self, &ctx)
            .await
            .map_err(|e| ProjectError::Entity(Box::new(e)))?;
        // A write-back sync reads a relation the hub makes when the sync runs.
        Upstreams::new(self.config.syncs.iter().filter_map(|(name, s)| {
            let upstream = crate::hub::writeback::Writeback::new(s.hub.clone()?);
            Some((name.clone(), Arc::new(upstream) as Arc<dyn sync::Upstream>))
        }))
        .install(&ctx);
        for name in self.order.iter().filter(|n| wanted(n)) {
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
