//! The real PostgreSQL the fleet tests run against: the harness's (`harness/src/pg.rs`), so
//! the suite and the fleet load run (`examples/fleet.rs`) start it the same way.

pub use rally_sidecar_harness::pg::*;
