#![allow(clippy::unwrap_used, clippy::expect_used)]

//! One integration test binary (link time on 2 cores): each module is a group of end-to-end
//! tests that run real projects on real files.

mod common;
mod conformance;
mod e2e;
