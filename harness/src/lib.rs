//! The reliability and scale runs behind docs/reliability.md and docs/benchmarks.md: many
//! TestCaseResult creates, each with its own Build, sent through a sidecar (or straight to the
//! simulator, for comparison) against a simulator with faults; then every write is accounted
//! for — stored once and confirmed, or journaled as unconfirmed — and the journal is replayed.
//!
//! [`run`] does it all in one process: the simulator, the sidecar (the same [`crate::run_with`]
//! that `serve` runs) and the clients, optionally with the simulator stopped for a while in the
//! middle (the outage run). [`drive`], [`account`] and [`replay_all`] are the pieces, used
//! also by the SIGTERM run, where the sidecar is a separate process.
//! `cargo run --release --example soak -- --help` lists the knobs.
//!
//! [`load`] is the pass-through load generator (`examples/passthrough.rs`).
//!
//! This crate is a development tool, not part of the product: it is a dev-dependency of
//! `rally-sidecar` (its examples and integration tests use it) and is never published.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod account;
mod drain;
pub mod fleet;
pub mod load;
pub mod pg;
mod report;
mod run;

/// Everything the runs offer, under the name the examples and tests use.
pub mod soak {
    pub use crate::account::*;
    pub use crate::drain::*;
    pub use crate::report::*;
    pub use crate::run::*;
}
