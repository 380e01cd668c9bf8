mod behaviors;
mod changed_fields;
mod cli;
mod config_fuzz;
mod crash;
mod dbt;
#[cfg(feature = "delta")]
mod delta;
#[cfg(feature = "delta")]
mod delta_destination;
#[cfg(feature = "delta")]
mod delta_feed;
#[cfg(feature = "duckdb")]
mod duckdb;
mod errors;
mod files;
mod fuzz_corpus;
mod guard;
mod hangs;
mod hostile;
mod http;
mod http_crud;
mod hub;
mod hub_create;
mod hub_deletes;
mod hub_fuzzy;
mod hub_property;
mod hub_quarantine;
mod hub_unmerge;
mod incremental;
mod interrupt;
mod invalid_rejected;
mod lookups;
mod mysql;
mod ownership;
mod postgres;
mod property;
mod quoting;
mod record_log;
mod s3;
mod serve;
mod sources;
mod state_fuzz;
mod test_runs;
mod torn_writes;
mod watermarks;
