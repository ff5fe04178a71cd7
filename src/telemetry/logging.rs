//! Log set-up: tracing with a human or JSON format; `RUST_LOG` wins over `log.level`.
//! Nothing logs a credential: request paths go through [`crate::telemetry::redact`] and no code logs
//! request headers or bodies.
//!
//! Lines go straight to stderr, one write per line. A background writer thread
//! (tracing-appender) was measured slower on a 2-core machine: the extra thread competes with
//! the workers (docs/benchmarks.md). The human format colours only a terminal (`log.color`):
//! escape codes in a file or a pipe make logs hard to read and to grep. The JSON format never
//! colours, and nests event fields under `fields` and the span under `span`, so a field named
//! like a top-level key cannot make a line with duplicated keys.

use std::io::IsTerminal;

use crate::config::{LogColor, LogConfig, LogFormat};

/// Whether the human format writes ANSI colours: `auto` colours a terminal only, and not
/// when `NO_COLOR` is set (no-color.org).
pub fn use_color(color: LogColor, stderr_is_terminal: bool, no_color: bool) -> bool {
    match color {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => stderr_is_terminal && !no_color,
    }
}

/// Installs the global subscriber. Safe to call twice (the second call is ignored).
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Human => builder
            .with_ansi(use_color(
                cfg.color,
                std::io::stderr().is_terminal(),
                no_color,
            ))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_colours_only_a_terminal_without_no_color() {
        assert!(use_color(LogColor::Auto, true, false));
        assert!(!use_color(LogColor::Auto, false, false), "a file or a pipe");
        assert!(!use_color(LogColor::Auto, true, true), "NO_COLOR");
        assert!(use_color(LogColor::Always, false, true));
        assert!(!use_color(LogColor::Never, true, false));
    }
}
