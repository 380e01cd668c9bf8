//! The fixtures: one file per destination.

pub mod file;
pub mod http;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

pub use file::{FileFormat, FileMode};
