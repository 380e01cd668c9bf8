//! The engine's memory pool under `[engine] memory_limit`.
//!
//! A [`FairSpillPool`] shares the limit among the operators that can spill (the sorts of a
//! sort-merge join, grouped aggregations), so each spills at its share instead of the first one
//! taking everything. One kind of consumer is let through: the buffers of DataFusion's
//! `RepartitionExec`. In DataFusion 55, a repartition that is refused memory writes the batch to a
//! per-output spill pool shared by all its inputs, and when two inputs spill at once its reader
//! can wait forever on the older file while the batch it needs is in the newer one
//! (apache/datafusion#24883, fixed after 55). A 50-million-row cursor run under a 2 GiB limit
//! on two partitions hung there: every thread parked, no error.
//!
//! So under a memory limit backflow plans on one partition unless `target_partitions` is set
//! (one partition has no repartitions; see `session::session_context`), and when it is set, repartition
//! buffers are counted in the pool but never refused. They are not bounded by the pool: while
//! one output is drained slowly (its sort is spilling) the others' buffers grow. What they hold
//! makes the other operators spill sooner, or be refused with DataFusion's "Resources
//! exhausted" error: a run that stops with an error instead of one that never ends.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The name prefix of the memory consumers `RepartitionExec` registers (`RepartitionExec[3]`).
const REPARTITION: &str = "RepartitionExec[";

/// A fair spill pool of `limit` bytes that never refuses a repartition buffer.
#[derive(Debug)]
pub struct EnginePool {
    inner: FairSpillPool,
}

impl EnginePool {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: FairSpillPool::new(limit),
        })
    }
}

impl std::fmt::Display for EnginePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (repartition buffers always admitted)", self.inner)
    }
}

fn is_repartition_buffer(reservation: &MemoryReservation) -> bool {
    reservation.consumer().name().starts_with(REPARTITION)
}

impl MemoryPool for EnginePool {
    fn name(&self) -> &str {
        "fair (repartition buffers always admitted)"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if is_repartition_buffer(reservation) {
            self.inner.grow(reservation, additional);
            Ok(())
        } else {
            self.inner.try_grow(reservation, additional)
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(limit: usize) -> Arc<dyn MemoryPool> {
        EnginePool::new(limit)
    }

    #[test]
    fn spilling_consumers_get_their_fair_share_and_no_more() {
        let pool = pool(1000);
        let a = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        let b = MemoryConsumer::new("ExternalSorter[1]")
            .with_can_spill(true)
            .register(&pool);
        a.try_grow(500).unwrap();
        assert!(a.try_grow(1).is_err(), "past its half of the pool");
        b.try_grow(500).unwrap();
        assert_eq!(pool.reserved(), 1000);
    }

    #[test]
    fn repartition_buffers_are_counted_but_never_refused() {
        let pool = pool(1000);
        let sorter = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        let repartition = MemoryConsumer::new("RepartitionExec[1]")
            .with_can_spill(true)
            .register(&pool);
        sorter.try_grow(500).unwrap();
        repartition.try_grow(2000).unwrap();
        assert_eq!(pool.reserved(), 2500);
        // Unspillable consumers see the pool as full and are refused.
        let merge = MemoryConsumer::new("ExternalSorterMerge[0]").register(&pool);
        assert!(merge.try_grow(1).is_err());
        repartition.shrink(2000);
        merge.try_grow(100).unwrap();
    }

    /// The pool recognises repartition buffers by their consumer's name: this holds it to the
    /// name DataFusion's `RepartitionExec` really registers, so a rename is caught here.
    #[tokio::test]
    async fn datafusion_repartitions_register_the_name_the_pool_looks_for() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::prelude::{SessionConfig, SessionContext};
        use std::sync::Mutex;

        #[derive(Debug, Default)]
        struct Names(
            Mutex<Vec<String>>,
            datafusion::execution::memory_pool::UnboundedMemoryPool,
        );
        impl std::fmt::Display for Names {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("names")
            }
        }
        impl MemoryPool for Names {
            fn name(&self) -> &str {
                "names"
            }
            fn register(&self, consumer: &MemoryConsumer) {
                self.0.lock().unwrap().push(consumer.name().to_string());
            }
            fn grow(&self, r: &MemoryReservation, n: usize) {
                self.1.grow(r, n)
            }
            fn shrink(&self, r: &MemoryReservation, n: usize) {
                self.1.shrink(r, n)
            }
            fn try_grow(&self, r: &MemoryReservation, n: usize) -> Result<()> {
                self.1.try_grow(r, n)
            }
            fn reserved(&self) -> usize {
                self.1.reserved()
            }
        }
        let names = Arc::new(Names::default());
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(names.clone())
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_target_partitions(3),
            runtime,
        );
        ctx.sql("SELECT x % 10 AS g, count(*) FROM unnest(range(100000)) t(x) GROUP BY 1")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let seen = names.0.lock().unwrap().clone();
        assert!(seen.iter().any(|n| n.starts_with(REPARTITION)), "{seen:?}");
    }

    #[test]
    fn only_repartition_consumers_are_let_through() {
        let pool = pool(100);
        let other = MemoryConsumer::new("RepartitionExecutor").register(&pool);
        assert!(other.try_grow(1000).is_err());
    }
}
