//! backflow: keep operational tools in sync with SQL-defined data.
//!
//! A project (`backflow.toml` + `models/*.sql`) is loaded and validated by [`project`], turned
//! into a DataFusion session where sources, models and segments are tables, and each sync runs
//! as the cycle drawn in [`sync`]: read → map → diff → apply → state → commit. Destinations sit
//! behind the traits in [`destinations`]; all state and run history is Parquet under the state
//! path ([`state`], [`history`]).

pub mod background_writer;
pub mod behavior;
pub mod cli;
pub mod config;
pub mod databases;
pub mod destinations;
pub mod duration;
pub mod functions;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod history;
pub mod hub;
pub mod interrupt;
pub mod keys;
pub mod memory;
pub mod models;
pub mod names;
pub mod parallel_writer;
pub mod progress;
pub mod project;
pub mod schedule;
pub mod selection;
pub mod serve;
pub mod session;
pub mod sources;
pub mod state;
pub mod storage;
pub mod sync;
pub mod values;

pub use behavior::Behavior;
pub use project::{Project, ProjectError};
pub use sync::{PlanReport, RunOptions, SyncReport};
