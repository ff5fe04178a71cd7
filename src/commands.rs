//! The operator's commands beside `serve`: `check` (can this credential write results, and
//! where), `sweep` (close results stuck in a custom verdict), `journal` (list and replay the
//! journal of intercepted writes), `summary` (did every result of a build land: a
//! verdict CI can gate on), `demo` (the simulator and the sidecar together) and `cert`
//! (a local CA and server certificate). Each is a library function that returns a report; the
//! binary prints it and turns it into an exit code.

pub mod cert;
pub mod check;
pub mod demo;
pub mod journal;
pub mod summary;
pub mod sweep;
