//! What every stage of one hub cycle shares: the [`Cycle`] (the entity, the version it
//! commits, its clock and data folder) and the names of the tables stages register.

use std::sync::Mutex;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};

use super::HubError;
use super::state::{self, HubManifest, StateFile};
use crate::config::entity::EntityConfig;
use crate::project::Project;

/// The context every stage of one cycle shares.
pub struct Cycle<'a> {
    pub project: &'a Project,
    pub ctx: &'a SessionContext,
    /// The entity's name.
    pub name: &'a str,
    pub entity: &'a EntityConfig,
    /// The version this cycle commits.
    pub version: u64,
    pub run_id: &'a str,
    /// The cycle's clock (µs since the epoch): every change it makes is stamped with it.
    pub now_us: i64,
    /// This version's data folder (relative to the state root).
    pub data_dir: String,
    pub previous: Option<HubManifest>,
    /// A plan (`backflow plan ENTITY`): everything is computed, nothing is committed, and
    /// the files written go to `data_dir` only, which is removed at the end.
    pub dry_run: bool,
    pub(super) tables: Mutex<Vec<String>>,
    /// Sources that create records whose `create_id` or `filter` could not be evaluated in
    /// this cycle: no record is linked for them to create (see create.rs).
    pub(super) no_creates: Mutex<std::collections::BTreeSet<String>>,
    /// Journal files of ids destinations gave created records that this cycle folds into
    /// the ID map (see assigned.rs): removed once it commits.
    pub(super) assigned_files: Mutex<Vec<String>>,
}

/// Table names of a cycle.
pub fn golden_old() -> &'static str {
    "bf_hub_golden_old"
}
pub fn contrib_old(source: &str) -> String {
    format!("bf_hub_contrib_old_{source}")
}
pub fn incoming(source: &str) -> String {
    format!("bf_hub_in_{source}")
}
pub fn delta(source: &str) -> String {
    format!("bf_hub_delta_{source}")
}
pub fn contrib_now(source: &str) -> String {
    format!("bf_hub_contrib_now_{source}")
}
pub fn contrib_next(source: &str) -> String {
    format!("bf_hub_contrib_next_{source}")
}
/// A source's records deleted this cycle: `__bf_sid`, `__bf_why`.
pub fn gone(source: &str) -> String {
    format!("bf_hub_gone_{source}")
}
pub const ATTACHED: &str = "bf_hub_attached";
/// Contributions that leave this cycle: `__bf_source`, `__bf_sid_text`, `__bf_golden_id`,
/// `__bf_why`.
pub const REMOVED: &str = "bf_hub_removed";
/// Per golden record that lost a contributing record: whether each field's value came from a
/// source that lost one (`__bf_lost_<field>`), and why (`__bf_reason`).
pub const LOST: &str = "bf_hub_lost";
pub const OVER: &str = "bf_hub_over";
/// SQL of every golden record as this cycle has it so far: the committed ones, each replaced
/// by its row in `OVER` when the cycle changed it.
pub fn golden_with_over() -> String {
    format!(
        "SELECT o.* FROM {OVER} v RIGHT ANTI JOIN {} o ON o.golden_id = v.golden_id \
         UNION ALL SELECT * FROM {OVER}",
        golden_old()
    )
}

/// Every golden record after this cycle (as committed).
pub const GOLDEN_NEXT: &str = "bf_hub_golden_next";
/// Pairs of golden records kept apart, as committed (see `state::apart_schema`).
pub const APART_OLD: &str = "bf_hub_apart_old";
pub const REMAP: &str = "bf_hub_remap";

impl Cycle<'_> {
    pub fn engine(&self, stage: &'static str) -> impl Fn(DataFusionError) -> HubError + '_ {
        move |source| HubError::Engine {
            entity: self.name.to_string(),
            stage,
            source,
        }
    }

    /// Plan `text` (SQL over the cycle's tables).
    pub async fn sql(&self, stage: &'static str, text: &str) -> Result<DataFrame, HubError> {
        tracing::debug!(entity = self.name, stage, sql = text, "hub stage");
        self.ctx.sql(text).await.map_err(self.engine(stage))
    }

    /// Plan `text` with its joins as written: each hash join builds on its first side.
    /// DataFusion may otherwise swap the sides by its size estimates, which it cannot make for
    /// the joins and aggregates this cycle's plans are built of (and then may build on the
    /// wide side, which a hash join copies whole).
    pub async fn sql_as_written(
        &self,
        stage: &'static str,
        text: &str,
    ) -> Result<DataFrame, HubError> {
        let df = self.sql(stage, text).await?;
        let (mut state, plan) = df.into_parts();
        state.config_mut().options_mut().optimizer.join_reordering = false;
        Ok(DataFrame::new(state, plan))
    }

    /// Register `df` as `table` for the rest of the cycle.
    pub fn register(
        &self,
        stage: &'static str,
        table: &str,
        df: DataFrame,
    ) -> Result<(), HubError> {
        let _ = self.ctx.deregister_table(table);
        self.ctx
            .register_table(table, df.into_view())
            .map_err(self.engine(stage))?;
        if let Ok(mut t) = self.tables.lock() {
            t.push(table.to_string());
        }
        Ok(())
    }

    /// Write `df` to `file` in the version's data folder and register the file as `table`.
    pub async fn materialize(
        &self,
        stage: &'static str,
        df: DataFrame,
        file: &str,
        table: &str,
        schema: Option<arrow::datatypes::SchemaRef>,
    ) -> Result<StateFile, HubError> {
        let rel = format!("{}/{file}", self.data_dir);
        let rows = self.project.state.write_plan(df, &rel, schema).await?;
        self.register_file(stage, &rel, table).await?;
        Ok(StateFile {
            path: rel,
            rows,
            bytes: None,
        })
    }

    /// Register the state file `rel` as `table`.
    pub async fn register_file(
        &self,
        stage: &'static str,
        rel: &str,
        table: &str,
    ) -> Result<(), HubError> {
        let df = self
            .ctx
            .read_parquet(
                self.project.state.table_url(rel),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(self.engine(stage))?;
        self.register(stage, table, df)
    }

    /// Whether the committed state links any source record to a golden record. Until it does,
    /// a stage's view over this cycle's records is cheaper read again than written once: there
    /// is no ID map or committed contribution to scan with it.
    pub fn has_id_map(&self) -> bool {
        self.previous
            .iter()
            .flat_map(|m| m.sources.values())
            .any(|s| s.contributions.rows > 0)
    }

    /// Register `df` as `table`: written to `file` first once there is a committed ID map (a
    /// relation later stages read several times, each read a scan of the committed state),
    /// left a view before (see [`Cycle::has_id_map`]).
    pub async fn materialize_with_id_map(
        &self,
        stage: &'static str,
        df: DataFrame,
        file: &str,
        table: &str,
    ) -> Result<(), HubError> {
        if self.has_id_map() {
            self.materialize(stage, df, file, table, None)
                .await
                .map(|_| ())
        } else {
            self.register(stage, table, df)
        }
    }

    /// The cycle's clock as a SQL timestamp.
    pub fn now_sql(&self) -> String {
        super::sql::cast_to(&self.now_us.to_string(), &state::timestamp_type())
    }

    /// A single `BIGINT` the query returns (0 when it returns nothing).
    pub async fn count(&self, stage: &'static str, text: &str) -> Result<u64, HubError> {
        let batches = self
            .sql(stage, text)
            .await?
            .collect()
            .await
            .map_err(self.engine(stage))?;
        Ok(batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                arrow::compute::cast(b.column(0), &DataType::Int64)
                    .ok()
                    .filter(|a| !a.is_null(0))
                    .map(|a| a.as_primitive::<Int64Type>().value(0).max(0) as u64)
            })
            .unwrap_or(0))
    }

    pub(super) fn clear(&self) {
        if let Ok(t) = self.tables.lock() {
            for table in t.iter() {
                let _ = self.ctx.deregister_table(table.as_str());
            }
        }
    }
}
