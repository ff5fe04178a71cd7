//! Log set-up: tracing with a human or JSON format; `RUST_LOG` wins over `log.level`.
//! Nothing logs a credential: request paths go through [`crate::telemetry::redact`] and no code logs
//! request headers or bodies.
//!
//! Lines go straight to stderr, one write per line. A background writer thread
//! (tracing-appender) was measured slower on a 2-core machine: the extra thread competes with
//! the workers (docs/benchmarks.md).

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Safe to call twice (the second call is ignored).
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
