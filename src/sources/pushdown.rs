//! Which filters may reach a database through datafusion-table-providers (MySQL, SQLite) as
//! SQL text.
//!
//! The providers turn a filter into SQL with DataFusion's unparser, whose string literals are
//! printed by sqlparser; sqlparser doubles a `'` only when it is not already next to another
//! `'` or after a `\` (it cannot tell an escaped string from a raw one). A value such as
//! `\') OR 1=1 --` would therefore end its literal early and become SQL, and `a''b` would
//! become `a'b`; a backslash means something else to MySQL than to SQLite, and a NUL ends the
//! statement text. Such values come from outside (keys pushed to `backflow serve`, `--keys`,
//! ids and positions read from the data), so a filter comparing with a text that holds a
//! quote, a backslash or a NUL is applied by DataFusion after the scan instead: the same rows,
//! never different SQL. So is one comparing with a NaN or an infinite float (a cursor that
//! reached one), which the unparser prints as `inf`, a column name.
//!
//! Filters reach the providers twice: as the logical filters of a scan (see
//! [`SafeFilters::supports_filters_pushdown`]) and, after planning, as physical filters a
//! parent offers their scan node (DataFusion's physical filter pushdown, which the providers'
//! `SqlExec` turns into SQL too): [`SafeScan`] wraps that node and offers it only plain
//! filters. It also keeps sorts out of the SQL text (DataFusion sorts). A source may also pass
//! every batch its provider reads through a [`BatchCheck`] (DuckDB's: values whose Arrow form
//! is not their own).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Constraints, ScalarValue, Statistics};
use datafusion::config::ConfigOptions;
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// A provider whose filters with risky text literals stay in DataFusion.
#[derive(Debug)]
pub struct SafeFilters {
    inner: Arc<dyn TableProvider>,
    check: Option<Arc<dyn BatchCheck>>,
}

/// What a source checks of every batch its provider reads (values the database's Arrow form
/// cannot carry exactly): an error stops the read.
pub trait BatchCheck: Send + Sync + std::fmt::Debug {
    /// `first_row`: the number of rows the scan read before this batch.
    fn check(&self, batch: &RecordBatch, first_row: u64) -> Result<()>;
}

impl SafeFilters {
    pub fn wrap(inner: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
        Arc::new(SafeFilters { inner, check: None })
    }

    /// As [`SafeFilters::wrap`], with every batch read passed through `check`.
    #[cfg_attr(not(feature = "duckdb"), allow(dead_code))]
    pub fn wrap_checked(
        inner: Arc<dyn TableProvider>,
        check: Arc<dyn BatchCheck>,
    ) -> Arc<dyn TableProvider> {
        Arc::new(SafeFilters {
            inner,
            check: Some(check),
        })
    }

    fn scan_node(&self, inner: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(SafeScan {
            inner,
            check: self.check.clone(),
        })
    }
}

/// Whether `text` can be printed as an SQL string literal by the unparser as it is.
fn plain(text: &str) -> bool {
    !text.contains(['\'', '\\', '\0'])
}

/// Whether every text literal in `e` is [`plain`].
pub fn literals_are_plain(e: &Expr) -> bool {
    let mut ok = true;
    let _ = e.apply(|node| {
        if let Expr::Literal(v, _) = node {
            let text = match v {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Some(s.as_str()),
                ScalarValue::Dictionary(_, inner) => match inner.as_ref() {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => Some(s.as_str()),
                    _ => None,
                },
                // Bytes are printed as text literals too.
                ScalarValue::Binary(Some(_))
                | ScalarValue::LargeBinary(Some(_))
                | ScalarValue::BinaryView(Some(_))
                | ScalarValue::FixedSizeBinary(_, Some(_)) => Some("\\"),
                // NaN and infinities have no literal in SQL (they print as a column name).
                ScalarValue::Float64(Some(f)) if !f.is_finite() => Some("\\"),
                ScalarValue::Float32(Some(f)) if !f.is_finite() => Some("\\"),
                ScalarValue::Float16(Some(f)) if !f.is_finite() => Some("\\"),
                _ => None,
            };
            if text.is_some_and(|t| !plain(t)) {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

#[async_trait]
impl TableProvider for SafeFilters {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // (DataFusion passes only the filters this provider took; checked again all the same.)
        let filters: Vec<Expr> = filters
            .iter()
            .filter(|f| literals_are_plain(f))
            .cloned()
            .collect();
        // A scan of no columns (`COUNT(*)`) comes back from the providers with one column
        // all the same, which DataFusion refuses: ask for the first and drop it here.
        if projection.is_some_and(|p| p.is_empty()) && !self.schema().fields().is_empty() {
            let scan = self
                .inner
                .scan(state, Some(&vec![0]), &filters, limit)
                .await?;
            let scan = self.scan_node(scan);
            let none: Vec<datafusion::physical_plan::projection::ProjectionExpr> = Vec::new();
            return Ok(Arc::new(
                datafusion::physical_plan::projection::ProjectionExec::try_new(none, scan)?,
            ));
        }
        let scan = self.inner.scan(state, projection, &filters, limit).await?;
        Ok(self.scan_node(scan))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let inner = self.inner.supports_filters_pushdown(filters)?;
        Ok(filters
            .iter()
            .zip(inner)
            .map(|(f, answer)| {
                if literals_are_plain(f) {
                    answer
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

/// Whether every text literal in the physical expression `e` is [`plain`].
fn physical_literals_are_plain(e: &Arc<dyn PhysicalExpr>) -> bool {
    let mut ok = true;
    let _ = e.apply(|node| {
        if let Some(l) = node.downcast_ref::<Literal>()
            && !literals_are_plain(&Expr::Literal(l.value().clone(), None))
        {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

/// A provider's scan node that takes only plain filters from its parents (see the module).
#[derive(Debug)]
struct SafeScan {
    inner: Arc<dyn ExecutionPlan>,
    check: Option<Arc<dyn BatchCheck>>,
}

impl DisplayAs for SafeScan {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for SafeScan {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.inner.execute(partition, context)?;
        let Some(check) = self.check.clone() else {
            return Ok(stream);
        };
        let schema = stream.schema();
        let mut seen = 0u64;
        let checked = stream.map(move |batch| {
            let batch = batch?;
            check.check(&batch, seen)?;
            seen += batch.num_rows() as u64;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }

    // (The providers' statistics, for join planning; the newer API reaches them the same way.)
    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        self.inner.partition_statistics(partition)
    }

    fn supports_limit_pushdown(&self) -> bool {
        self.inner.supports_limit_pushdown()
    }

    fn with_fetch(&self, limit: Option<usize>) -> Option<Arc<dyn ExecutionPlan>> {
        self.inner.with_fetch(limit).map(|inner| {
            Arc::new(SafeScan {
                inner,
                check: self.check.clone(),
            }) as Arc<dyn ExecutionPlan>
        })
    }

    fn fetch(&self) -> Option<usize> {
        self.inner.fetch()
    }

    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let plain: Vec<bool> = child_pushdown_result
            .parent_filters
            .iter()
            .map(|f| physical_literals_are_plain(&f.filter))
            .collect();
        let offered = ChildPushdownResult {
            parent_filters: child_pushdown_result
                .parent_filters
                .into_iter()
                .zip(&plain)
                .filter(|(_, p)| **p)
                .map(|(f, _)| f)
                .collect(),
            self_filters: child_pushdown_result.self_filters,
        };
        let answer = self
            .inner
            .handle_child_pushdown_result(phase, offered, config)?;
        let mut taken = answer.filters.into_iter();
        let filters = plain
            .iter()
            .map(|p| match p {
                true => taken.next().unwrap_or(PushedDown::No),
                false => PushedDown::No,
            })
            .collect();
        let mut out = FilterPushdownPropagation::with_parent_pushdown_result(filters);
        if let Some(inner) = answer.updated_node {
            out = out.with_updated_node(Arc::new(SafeScan {
                inner,
                check: self.check.clone(),
            }) as Arc<dyn ExecutionPlan>);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn risky_text_stays_out_of_the_sql() {
        for risky in ["\\') OR 1=1 --", "a''b", "it's", "a\0b", "C:\\temp"] {
            assert!(!literals_are_plain(&col("id").eq(lit(risky))), "{risky:?}");
            assert!(
                !literals_are_plain(&col("id").in_list(vec![lit("ok"), lit(risky)], false)),
                "{risky:?}"
            );
        }
        for fine in ["plain", "with space", "ünïcødé 🙂", "100%_", ""] {
            assert!(literals_are_plain(&col("id").eq(lit(fine))), "{fine:?}");
        }
        assert!(literals_are_plain(&col("n").gt(lit(5i64))));
        assert!(literals_are_plain(&col("x").gt_eq(lit(1.5f64))));
        for odd in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!literals_are_plain(&col("x").gt_eq(lit(odd))), "{odd}");
        }
    }
}
