#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests: one binary, a module per area (ripgrep's layout). Every test runs over
//! real sockets on 127.0.0.1:0.

mod admin_access;
mod architecture;
mod builds;
mod captures;
mod confirm;
mod e2e;
mod edges;
mod fleet;
mod hostile;
mod intercept;
mod limits;
mod logs;
mod ops;
mod pg;
mod process;
mod promise;
mod records;
mod sim_api;
mod support;
mod throughput;
mod transparency;
