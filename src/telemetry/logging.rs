//! Log set-up: tracing with a human or JSON format; `RUST_LOG` wins over `log.level`.
//! Nothing logs a credential: request paths go through [`crate::telemetry::redact`] and no code logs
//! request headers or bodies. Field values and messages carry text from clients and from Rally:
//! the JSON format escapes control characters as JSON does, and the human format writes them
//! through [`redact::escape_control`], so one event is always one line.
//!
//! Lines go straight to stderr, one write per line. A background writer thread
//! (tracing-appender) was measured slower on a 2-core machine: the extra thread competes with
//! the workers (docs/benchmarks.md).

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;

use crate::config::{LogConfig, LogFormat};
use crate::telemetry::redact;

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
        LogFormat::Human => builder.fmt_fields(escaping_fields()).try_init(),
    };
}

/// The human format's fields: `message name=value ...`, each value's control characters escaped.
pub fn escaping_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = redact::escape_control(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_newline_in_a_value_cannot_forge_a_human_log_line() {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || buf.clone())
            .fmt_fields(escaping_fields())
            .finish();
        let forged = "b1\n2026-01-01T00:00:00Z  INFO rally_sidecar: forged";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(build = %forged, test_case = "TC1\r\u{1b}[2J", "filled {}", forged);
        });
        let text = String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(text.matches('\n').count(), 1, "one event, one line: {text}");
        assert!(text.contains("build=b1\\n2026-01-01T00:00:00Z"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    }
}
