mod behaviors;
mod cli;
mod crash;
mod errors;
mod files;
mod incremental;
mod invalid_rejected;
mod property;
