//! rally-sidecar: a transparent HTTP proxy between Rally scripts and Rally's WSAPI v2.0.
//!
//! Module map (docs/architecture.md walks one request through them):
//! - `server` — the accept loop (TLS, HTTP/1.1 + HTTP/2, slow-client guards, graceful drain);
//! - `proxy` — the forwarding core: classify, admit, forward, relay, access log;
//! - [`intercept`] — TestCaseResult writes: decide, fill, hold, confirm, answer;
//! - `rally` — the one Rally client (sending, the per-user governor, credentials, lookups);
//! - [`confirm`], [`journal`], [`refs`] — confirmation, the durable record, `_ref` rewriting;
//! - [`fleet`] — the shared budget, ledger and context on PostgreSQL;
//! - [`config`] — TOML + environment + flags → a validated [`config::Config`];
//! - `admin`, [`telemetry`], [`tls`] — the admin API and status page, metrics and logs,
//!   certificates;
//! - [`commands`], [`serve`] — what `main.rs` dispatches to;
//! - `wsapi` — the WSAPI vocabulary shared with [`sim`], the Rally simulator (which nothing on
//!   the proxy path imports).
//!
//! Only what the binary, the tests, the examples and the harness use is public
//! (`unreachable_pub` is on); the rest is `pub(crate)`, so the compiler finds dead code.

#![warn(unreachable_pub)]

mod admin;
pub mod commands;
pub mod config;
pub mod confirm;
mod error;
pub mod fleet;
pub mod intercept;
pub mod journal;
mod proxy;
mod rally;
pub use rally::error_chain;
pub mod refs;
mod request;
pub mod serve;
mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;
mod wsapi;

pub use serve::{Listeners, RunError, Shared, cancel_on_signals, run, run_with};
