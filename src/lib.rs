//! rally-sidecar: a transparent HTTP proxy between Rally scripts and Rally's WSAPI v2.0.
//!
//! Module map (docs/architecture.md walks one request through them):
//! - [`config`] — TOML + environment + flags → validated [`config::Config`];
//! - [`server`] — the accept loop (TLS, HTTP/1.1 + HTTP/2, slowloris guard, graceful drain);
//! - [`proxy`] — the forwarding core: admit, forward, relay, `_ref` rewriting, access log;
//! - [`error`] — the sidecar's errors and the single place that answers them;
//! - [`admin`] — health, readiness, metrics, shutdown on the admin listener;
//! - [`metrics`], [`redact`], [`logging`], [`tls`], [`cert`] — the supporting pieces;
//! - [`wsapi`] — the WSAPI vocabulary shared with [`sim`], the Rally simulator (which nothing on
//!   the proxy path imports).

pub mod admin;
pub mod commands;
pub mod config;
pub mod confirm;
pub mod error;
pub mod fleet;
pub mod intercept;
pub mod journal;
pub mod proxy;
pub mod rally;
pub mod refs;
pub mod request;
pub mod serve;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod wsapi;

pub use serve::{Listeners, RunError, Shared, cancel_on_signals, run, run_with};
